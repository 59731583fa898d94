#include "safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "common.h"
#include "json.h"

namespace gptoss {

const char* dtype_name(DType d) {
  switch (d) {
    case DType::BF16: return "BF16";
    case DType::F16: return "F16";
    case DType::F32: return "F32";
    case DType::U8: return "U8";
    case DType::I8: return "I8";
    case DType::I32: return "I32";
    case DType::I64: return "I64";
    case DType::F64: return "F64";
    case DType::BOOL: return "BOOL";
    default: return "?";
  }
}

size_t dtype_size(DType d) {
  switch (d) {
    case DType::BF16: case DType::F16: return 2;
    case DType::F32: case DType::I32: return 4;
    case DType::F64: case DType::I64: return 8;
    case DType::U8: case DType::I8: case DType::BOOL: return 1;
    default: return 0;
  }
}

namespace {

// The safetensors library's limit on the header length (MAX_HEADER_SIZE).
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

// Every dtype the safetensors format defines (its Dtype enum), with its size in bits; the ones
// the engine reads have their own DType.
struct DTypeInfo {
  const char* name;
  DType dtype;
  unsigned bits;
};
constexpr DTypeInfo kDTypes[] = {
    {"BOOL", DType::BOOL, 8},         {"F4", DType::Other, 4},          {"F6_E2M3", DType::Other, 6},
    {"F6_E3M2", DType::Other, 6},     {"U8", DType::U8, 8},             {"I8", DType::I8, 8},
    {"F8_E5M2", DType::Other, 8},     {"F8_E4M3", DType::Other, 8},     {"F8_E8M0", DType::Other, 8},
    {"F8_E4M3FNUZ", DType::Other, 8}, {"F8_E5M2FNUZ", DType::Other, 8}, {"I16", DType::Other, 16},
    {"U16", DType::Other, 16},        {"F16", DType::F16, 16},          {"BF16", DType::BF16, 16},
    {"I32", DType::I32, 32},          {"U32", DType::Other, 32},        {"F32", DType::F32, 32},
    {"C64", DType::Other, 64},        {"F64", DType::F64, 64},          {"I64", DType::I64, 64},
    {"U64", DType::Other, 64},
};

const DTypeInfo* find_dtype(const std::string& s) {
  for (const auto& d : kDTypes)
    if (s == d.name) return &d;
  return nullptr;
}

bool is_uint(const json::Value& v) {
  return v.kind == json::Value::Kind::Number && v.is_integer && v.i >= 0;
}

std::string range_str(uint64_t b, uint64_t e) {
  return "[" + std::to_string(b) + ", " + std::to_string(e) + ")";
}

// The tensors of a safetensors file held in base[0, size), validated (see the header).
std::vector<TensorInfo> parse_file(const uint8_t* base, size_t size, const std::string& path) {
  if (size < 8)
    throw CheckpointError(path + ": truncated safetensors file (" + std::to_string(size) +
                          " bytes, no header length)");
  uint64_t hlen = 0;
  for (int k = 7; k >= 0; --k) hlen = (hlen << 8) | base[k];
  if (hlen > kMaxHeaderBytes)
    throw CheckpointError(path + ": header length " + std::to_string(hlen) +
                          " is over the safetensors limit of " + std::to_string(kMaxHeaderBytes) +
                          " bytes (not a safetensors file?)");
  if (hlen > size - 8)
    throw CheckpointError(path + ": header length " + std::to_string(hlen) +
                          " runs past the end of the file (" + std::to_string(size) + " bytes)");
  const json::Value hdr = json::parse(reinterpret_cast<const char*>(base + 8), size_t(hlen), path);
  if (hdr.kind != json::Value::Kind::Object)
    throw CheckpointError(path + ": safetensors header is not a JSON object");
  const uint64_t data_start = 8 + hlen;
  const uint64_t data_size = size - data_start;

  std::vector<TensorInfo> tensors;
  tensors.reserve(hdr.obj.size());
  for (const auto& kv : hdr.obj) {
    const std::string& name = kv.first;
    const json::Value& t = kv.second;
    if (name == "__metadata__") {
      bool ok = t.kind == json::Value::Kind::Null || t.kind == json::Value::Kind::Object;
      for (const auto& m : t.obj) ok = ok && m.second.kind == json::Value::Kind::String;
      if (!ok) throw CheckpointError(path + ": '__metadata__' must be an object of strings (or null)");
      continue;
    }
    auto bad = [&](const std::string& why) {
      return CheckpointError(path + ": tensor " + json::quote(name) + ": " + why);
    };
    if (t.kind != json::Value::Kind::Object) throw bad("header entry is not an object");
    const json::Value* dt = t.find("dtype");
    const json::Value* sh = t.find("shape");
    const json::Value* off = t.find("data_offsets");
    if (!dt || dt->kind != json::Value::Kind::String) throw bad("missing or non-string 'dtype'");
    if (!sh || sh->kind != json::Value::Kind::Array) throw bad("missing or non-array 'shape'");
    if (!off || off->kind != json::Value::Kind::Array || off->arr.size() != 2)
      throw bad("missing or malformed 'data_offsets' (want [begin, end])");
    const DTypeInfo* di = find_dtype(dt->str);
    if (!di) throw bad("unknown dtype " + json::quote(dt->str));
    TensorInfo ti;
    ti.name = name;
    ti.file = path;
    ti.dtype_str = dt->str;
    ti.dtype = di->dtype;
    // numel * bits must not overflow (the library's ValidationOverflow); 2^60 bits is far past
    // any file and keeps the arithmetic exact.
    uint64_t bits = di->bits;
    for (const auto& d : sh->arr) {
      if (!is_uint(d)) throw bad("shape entries must be non-negative integers");
      ti.shape.push_back(d.i);
    }
    if (std::find(ti.shape.begin(), ti.shape.end(), 0) != ti.shape.end()) bits = 0;
    for (int64_t d : ti.shape) {
      if (bits == 0) break;
      if (uint64_t(d) > (uint64_t(1) << 60) / bits) throw bad("shape too large (its byte size overflows)");
      bits *= uint64_t(d);
    }
    if (bits % 8 != 0) throw bad("sub-byte dtype " + ti.dtype_str + " whose data does not end on a byte boundary");
    for (const auto& o : off->arr)
      if (!is_uint(o)) throw bad("data_offsets must be non-negative integers");
    const uint64_t b = uint64_t(off->arr[0].i), e = uint64_t(off->arr[1].i);
    if (b > e) throw bad("data_offsets " + range_str(b, e) + ": begin > end");
    if (e - b != bits / 8)
      throw bad("byte size " + std::to_string(e - b) + " (data_offsets " + range_str(b, e) +
                ") does not match dtype " + ti.dtype_str + " and shape (" + std::to_string(bits / 8) +
                " bytes expected)");
    if (e > data_size)
      throw bad("data runs past the end of the file (offset " + std::to_string(e) + " > " +
                std::to_string(data_size) + " data bytes; file truncated?)");
    const uint64_t align = std::min<uint64_t>(di->bits / 8, 8);
    if (e > b && align > 1 && (data_start + b) % align != 0)
      throw bad(ti.dtype_str + " data at file offset " + std::to_string(data_start + b) +
                " is not aligned to its " + std::to_string(align) +
                "-byte elements (the header is not padded as safetensors writers pad it)");
    ti.begin = b;
    ti.data = base + data_start + b;
    ti.nbytes = size_t(e - b);
    tensors.push_back(std::move(ti));
  }

  // The data must tile [0, data_size) exactly, in offset order: what the library checks, and
  // what keeps two tensors from sharing bytes or a file from hiding data between them.
  std::vector<const TensorInfo*> order;
  order.reserve(tensors.size());
  for (const auto& t : tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](const TensorInfo* x, const TensorInfo* y) {
    return x->begin != y->begin ? x->begin < y->begin : x->nbytes < y->nbytes;
  });
  uint64_t covered = 0;
  const TensorInfo* prev = nullptr;
  for (const TensorInfo* t : order) {
    const std::string where = prev ? "tensor " + json::quote(prev->name) + " ends at " + std::to_string(covered)
                                   : "the data section starts at 0";
    if (t->begin < covered)
      throw CheckpointError(path + ": tensor " + json::quote(t->name) + ": data_offsets " +
                            range_str(t->begin, t->begin + t->nbytes) + " overlap other tensor data (" +
                            where + ")");
    if (t->begin > covered)
      throw CheckpointError(path + ": tensor " + json::quote(t->name) + ": data_offsets " +
                            range_str(t->begin, t->begin + t->nbytes) + " leave a gap of " +
                            std::to_string(t->begin - covered) + " bytes before it (" + where + ")");
    covered = t->begin + t->nbytes;
    prev = t;
  }
  if (covered != data_size)
    throw CheckpointError(path + ": the data section holds " + std::to_string(data_size) +
                          " bytes but its tensors cover only the first " + std::to_string(covered) +
                          " (trailing bytes that no tensor owns)");
  return tensors;
}

}  // namespace

SafetensorsFile::SafetensorsFile(const std::string& path, bool populate) : path_(path) {
  // O_NONBLOCK: opening a FIFO must not wait for a writer (it is then refused below).
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) throw CheckpointError(path + ": cannot open (" + std::strerror(errno) + ")");
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    throw CheckpointError(path + ": cannot stat (" + std::strerror(err) + ")");
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw CheckpointError(path + ": not a regular file");
  }
  size_ = size_t(st.st_size);
  if (size_ < 8) {
    ::close(fd);
    throw CheckpointError(path + ": truncated safetensors file (" + std::to_string(size_) +
                          " bytes, no header length)");
  }
  map_ = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED | (populate ? MAP_POPULATE : 0), fd, 0);
  const int err = errno;
  ::close(fd);
  if (map_ == MAP_FAILED) {
    map_ = nullptr;
    throw CheckpointError(path + ": mmap failed (" + std::strerror(err) + ")");
  }
  try {
    tensors_ = parse_file(static_cast<const uint8_t*>(map_), size_, path);
  } catch (...) {
    ::munmap(map_, size_);
    map_ = nullptr;
    throw;
  }
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(map_, size_);
}

void SafetensorsFile::prefetch() const {
  if (map_) ::madvise(map_, size_, MADV_WILLNEED);
}

}  // namespace gptoss
