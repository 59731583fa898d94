#include "json.h"

#include <cerrno>
#include <cstdlib>

#include "common.h"

namespace gptoss::json {

const Value* Value::find(const std::string& key) const {
  for (const auto& kv : obj)
    if (kv.first == key) return &kv.second;
  return nullptr;
}

namespace {

struct Parser {
  const char* p;
  const char* end;
  const char* begin;
  const std::string& what;
  int depth = 0;

  [[noreturn]] void fail(const std::string& msg) const {
    throw CheckpointError(what + ": malformed JSON header at byte " + std::to_string(p - begin) +
                          ": " + msg);
  }
  void ws() {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) ++p;
  }
  void expect(char c) {
    ws();
    if (p >= end || *p != c) fail(std::string("expected '") + c + "'");
    ++p;
  }
  bool literal(const char* s) {
    size_t n = std::strlen(s);
    if (size_t(end - p) >= n && std::memcmp(p, s, n) == 0) { p += n; return true; }
    return false;
  }
  static void put_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) out += char(cp);
    else if (cp < 0x800) { out += char(0xC0 | (cp >> 6)); out += char(0x80 | (cp & 0x3F)); }
    else if (cp < 0x10000) {
      out += char(0xE0 | (cp >> 12)); out += char(0x80 | ((cp >> 6) & 0x3F)); out += char(0x80 | (cp & 0x3F));
    } else {
      out += char(0xF0 | (cp >> 18)); out += char(0x80 | ((cp >> 12) & 0x3F));
      out += char(0x80 | ((cp >> 6) & 0x3F)); out += char(0x80 | (cp & 0x3F));
    }
  }
  uint32_t hex4() {
    if (end - p < 4) fail("truncated \\u escape");
    uint32_t v = 0;
    for (int k = 0; k < 4; ++k) {
      char c = *p++;
      v <<= 4;
      if (c >= '0' && c <= '9') v |= uint32_t(c - '0');
      else if (c >= 'a' && c <= 'f') v |= uint32_t(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') v |= uint32_t(c - 'A' + 10);
      else fail("bad \\u escape");
    }
    return v;
  }
  std::string string() {
    expect('"');
    std::string out;
    while (true) {
      if (p >= end) fail("unterminated string");
      char c = *p++;
      if (c == '"') break;
      if (static_cast<unsigned char>(c) < 0x20) fail("control character in string");
      if (c != '\\') { out += c; continue; }
      if (p >= end) fail("unterminated escape");
      char e = *p++;
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          uint32_t cp = hex4();
          if (cp >= 0xD800 && cp < 0xDC00 && end - p >= 6 && p[0] == '\\' && p[1] == 'u') {
            p += 2;
            uint32_t lo = hex4();
            if (lo < 0xDC00 || lo > 0xDFFF) fail("bad surrogate pair");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          put_utf8(out, cp);
          break;
        }
        default: fail("bad escape");
      }
    }
    return out;
  }
  Value number() {
    const char* s = p;
    if (p < end && *p == '-') ++p;
    bool integer = true;
    while (p < end && ((*p >= '0' && *p <= '9') || *p == '.' || *p == 'e' || *p == 'E' || *p == '+' || *p == '-')) {
      if (*p == '.' || *p == 'e' || *p == 'E') integer = false;
      ++p;
    }
    std::string tok(s, p);
    if (tok.empty() || tok == "-") fail("bad number");
    Value v;
    v.kind = Value::Kind::Number;
    char* q = nullptr;
    errno = 0;
    v.num = std::strtod(tok.c_str(), &q);
    if (q != tok.c_str() + tok.size()) fail("bad number '" + tok + "'");
    if (integer) {
      errno = 0;
      long long ll = std::strtoll(tok.c_str(), &q, 10);
      if (errno == 0 && q == tok.c_str() + tok.size()) { v.is_integer = true; v.i = ll; }
    }
    return v;
  }
  Value value() {
    ws();
    if (p >= end) fail("unexpected end");
    if (++depth > 64) fail("nesting too deep");
    Value v;
    char c = *p;
    if (c == '{') {
      v.kind = Value::Kind::Object;
      ++p;
      ws();
      if (p < end && *p == '}') { ++p; }
      else {
        while (true) {
          ws();
          std::string k = string();
          expect(':');
          v.obj.emplace_back(std::move(k), value());
          ws();
          if (p < end && *p == ',') { ++p; continue; }
          expect('}');
          break;
        }
      }
    } else if (c == '[') {
      v.kind = Value::Kind::Array;
      ++p;
      ws();
      if (p < end && *p == ']') { ++p; }
      else {
        while (true) {
          v.arr.push_back(value());
          ws();
          if (p < end && *p == ',') { ++p; continue; }
          expect(']');
          break;
        }
      }
    } else if (c == '"') {
      v.kind = Value::Kind::String;
      v.str = string();
    } else if (literal("true")) { v.kind = Value::Kind::Bool; v.b = true; }
    else if (literal("false")) { v.kind = Value::Kind::Bool; v.b = false; }
    else if (literal("null")) { v.kind = Value::Kind::Null; }
    else if (c == '-' || (c >= '0' && c <= '9')) v = number();
    else fail(std::string("unexpected character '") + c + "'");
    --depth;
    return v;
  }
};

}  // namespace

Value parse(const char* text, size_t n, const std::string& what) {
  Parser ps{text, text + n, text, what};
  Value v = ps.value();
  ps.ws();
  if (ps.p != ps.end) ps.fail("trailing characters after the JSON value");
  return v;
}

}  // namespace gptoss::json
