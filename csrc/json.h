// A small JSON reader for safetensors headers (and nothing else): objects, arrays, strings,
// numbers, true/false/null. Errors throw CheckpointError with the byte offset.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace gptoss::json {

struct Value {
  enum class Kind { Null, Bool, Number, String, Array, Object } kind = Kind::Null;
  bool b = false;
  double num = 0.0;
  bool is_integer = false;  // the literal had no fraction or exponent
  int64_t i = 0;            // valid when is_integer (and in range)
  std::string str;
  std::vector<Value> arr;
  std::vector<std::pair<std::string, Value>> obj;  // keeps file order

  const Value* find(const std::string& key) const;
};

// Parses `text[0, n)`; `what` names the source in error messages.
Value parse(const char* text, size_t n, const std::string& what);

}  // namespace gptoss::json
