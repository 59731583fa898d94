#include "json.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <unordered_set>

#include "common.h"

namespace gptoss::json {

const Value* Value::find(const std::string& key) const {
  for (const auto& kv : obj)
    if (kv.first == key) return &kv.second;
  return nullptr;
}

std::string quote(const std::string& s, size_t max) {
  std::string r = "'";
  size_t n = 0;
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (++n > max && (u & 0xC0) != 0x80) { r += "..."; break; }  // cut between code points
    if (u < 0x20 || u == 0x7f) {
      static const char* hex = "0123456789abcdef";
      r += "\\x";
      r += hex[u >> 4];
      r += hex[u & 15];
    } else {
      r += c;
    }
  }
  return r + "'";
}

namespace {

bool is_digit(char c) { return c >= '0' && c <= '9'; }

struct Parser {
  const char* p;
  const char* end;
  const char* begin;
  const std::string& what;
  Limits limits;
  int depth = 0;
  size_t values = 0;

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
  // One UTF-8 encoded code point starting at p (its first byte >= 0x80): well-formed, shortest
  // form, no surrogates, at most U+10FFFF (what Rust's str::from_utf8 accepts).
  void utf8_sequence(std::string& out) {
    const auto b0 = static_cast<unsigned char>(*p);
    int n = 0;
    uint32_t cp = 0, min = 0;
    if ((b0 & 0xE0) == 0xC0) { n = 1; cp = b0 & 0x1F; min = 0x80; }
    else if ((b0 & 0xF0) == 0xE0) { n = 2; cp = b0 & 0x0F; min = 0x800; }
    else if ((b0 & 0xF8) == 0xF0) { n = 3; cp = b0 & 0x07; min = 0x10000; }
    else fail("invalid UTF-8 byte");
    if (end - p < n + 1) fail("truncated UTF-8 sequence");
    for (int k = 1; k <= n; ++k) {
      const auto b = static_cast<unsigned char>(p[k]);
      if ((b & 0xC0) != 0x80) fail("invalid UTF-8 sequence");
      cp = (cp << 6) | (b & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp < 0xE000)) fail("invalid UTF-8 sequence");
    out.append(p, size_t(n + 1));
    p += n + 1;
  }
  std::string string() {
    expect('"');
    std::string out;
    while (true) {
      if (p >= end) fail("unterminated string");
      const char c = *p;
      if (c == '"') { ++p; break; }
      if (static_cast<unsigned char>(c) < 0x20) fail("control character in string");
      if (static_cast<unsigned char>(c) >= 0x80) { utf8_sequence(out); continue; }
      ++p;
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
          if (cp >= 0xDC00 && cp < 0xE000) fail("lone low surrogate in \\u escape");
          if (cp >= 0xD800 && cp < 0xDC00) {
            if (!(end - p >= 2 && p[0] == '\\' && p[1] == 'u')) fail("lone high surrogate in \\u escape");
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
  // -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
  Value number() {
    const char* s = p;
    const bool neg = p < end && *p == '-';
    if (neg) ++p;
    if (p >= end || !is_digit(*p)) fail("bad number");
    if (*p == '0') {
      ++p;
      if (p < end && is_digit(*p)) fail("number with a leading zero");
    } else {
      while (p < end && is_digit(*p)) ++p;
    }
    bool integer = true;
    if (p < end && *p == '.') {
      integer = false;
      ++p;
      if (p >= end || !is_digit(*p)) fail("bad number: no digit after '.'");
      while (p < end && is_digit(*p)) ++p;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
      integer = false;
      ++p;
      if (p < end && (*p == '+' || *p == '-')) ++p;
      if (p >= end || !is_digit(*p)) fail("bad number: no digit in the exponent");
      while (p < end && is_digit(*p)) ++p;
    }
    const std::string tok(s, p);
    Value v;
    v.kind = Value::Kind::Number;
    v.num = std::strtod(tok.c_str(), nullptr);
    if (integer && !(neg && tok == "-0")) {  // -0 is a float, as serde_json reads it
      errno = 0;
      char* q = nullptr;
      const long long ll = std::strtoll(tok.c_str(), &q, 10);
      if (errno == 0 && q == tok.c_str() + tok.size()) { v.is_integer = true; v.i = ll; }
    }
    return v;
  }
  Value value() {
    ws();
    if (p >= end) fail("unexpected end");
    if (++depth > limits.max_depth) fail("nesting deeper than " + std::to_string(limits.max_depth));
    if (++values > limits.max_values) fail("more than " + std::to_string(limits.max_values) + " values");
    Value v;
    char c = *p;
    if (c == '{') {
      v.kind = Value::Kind::Object;
      ++p;
      ws();
      if (p < end && *p == '}') { ++p; }
      else {
        std::unordered_set<std::string> keys;
        while (true) {
          ws();
          const char* at = p;
          std::string k = string();
          if (!keys.insert(k).second) {
            p = at;
            fail("duplicate key " + quote(k));
          }
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
    else if (c == '-' || is_digit(c)) v = number();
    else if (static_cast<unsigned char>(c) >= 0x20 && static_cast<unsigned char>(c) < 0x7f)
      fail(std::string("unexpected character '") + c + "'");
    else fail("unexpected byte " + std::to_string(static_cast<unsigned char>(c)));
    --depth;
    return v;
  }
};

}  // namespace

Value parse(const char* text, size_t n, const std::string& what, const Limits& limits) {
  Parser ps{text, text + n, text, what, limits};
  Value v = ps.value();
  ps.ws();
  if (ps.p != ps.end) ps.fail("trailing characters after the JSON value");
  return v;
}

}  // namespace gptoss::json
