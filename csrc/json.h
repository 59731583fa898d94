// A small, strict JSON reader for safetensors headers (and nothing else): RFC 8259 grammar
// (numbers, escapes, UTF-8 validated), duplicate keys and lone surrogates refused, nesting and
// value count bounded so that a hostile header cannot exhaust the stack or memory. Errors throw
// CheckpointError with the byte offset.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace gptoss::json {

struct Value {
  enum class Kind { Null, Bool, Number, String, Array, Object } kind = Kind::Null;
  bool b = false;
  double num = 0.0;
  bool is_integer = false;  // an integer literal (no fraction, exponent or "-0") that fits int64
  int64_t i = 0;            // valid when is_integer
  std::string str;
  std::vector<Value> arr;
  std::vector<std::pair<std::string, Value>> obj;  // keeps file order; keys are unique

  const Value* find(const std::string& key) const;
};

struct Limits {
  int max_depth = 64;
  size_t max_values = size_t(1) << 20;  // a real gpt-oss-120b header holds about 10^4
};

// `s` in single quotes for an error message: control characters escaped, clipped to `max` bytes.
std::string quote(const std::string& s, size_t max = 160);

// Parses `text[0, n)`; `what` names the source in error messages.
Value parse(const char* text, size_t n, const std::string& what, const Limits& limits = {});

}  // namespace gptoss::json
