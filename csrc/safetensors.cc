#include "safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <set>

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

static DType parse_dtype(const std::string& s) {
  if (s == "BF16") return DType::BF16;
  if (s == "F16") return DType::F16;
  if (s == "F32") return DType::F32;
  if (s == "U8") return DType::U8;
  if (s == "I8") return DType::I8;
  if (s == "I32") return DType::I32;
  if (s == "I64") return DType::I64;
  if (s == "F64") return DType::F64;
  if (s == "BOOL") return DType::BOOL;
  return DType::Other;
}

SafetensorsFile::SafetensorsFile(const std::string& path, bool populate) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw CheckpointError(path + ": cannot open (" + std::strerror(errno) + ")");
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    throw CheckpointError(path + ": cannot stat (" + std::strerror(errno) + ")");
  }
  size_ = size_t(st.st_size);
  if (size_ < 8) {
    ::close(fd);
    throw CheckpointError(path + ": truncated safetensors file (" + std::to_string(size_) +
                          " bytes, no header length)");
  }
  map_ = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED | (populate ? MAP_POPULATE : 0), fd, 0);
  ::close(fd);
  if (map_ == MAP_FAILED) {
    map_ = nullptr;
    throw CheckpointError(path + ": mmap failed (" + std::strerror(errno) + ")");
  }
  try {
    const uint8_t* base = static_cast<const uint8_t*>(map_);
    uint64_t hlen = 0;
    for (int k = 7; k >= 0; --k) hlen = (hlen << 8) | base[k];
    if (hlen > size_ - 8)
      throw CheckpointError(path + ": header length " + std::to_string(hlen) +
                            " runs past the end of the file (" + std::to_string(size_) + " bytes)");
    if (hlen > (uint64_t(100) << 20))
      throw CheckpointError(path + ": header length " + std::to_string(hlen) + " is implausibly large");
    json::Value hdr = json::parse(reinterpret_cast<const char*>(base + 8), size_t(hlen), path);
    if (hdr.kind != json::Value::Kind::Object)
      throw CheckpointError(path + ": safetensors header is not a JSON object");
    const uint8_t* data0 = base + 8 + hlen;
    size_t data_size = size_ - 8 - size_t(hlen);
    std::set<std::string> seen;
    for (const auto& kv : hdr.obj) {
      const std::string& name = kv.first;
      if (name == "__metadata__") continue;
      const json::Value& t = kv.second;
      auto bad = [&](const std::string& why) {
        return CheckpointError(path + ": tensor '" + name + "': " + why);
      };
      if (!seen.insert(name).second) throw bad("listed twice in the header");
      if (t.kind != json::Value::Kind::Object) throw bad("header entry is not an object");
      const json::Value* dt = t.find("dtype");
      const json::Value* sh = t.find("shape");
      const json::Value* off = t.find("data_offsets");
      if (!dt || dt->kind != json::Value::Kind::String) throw bad("missing or non-string 'dtype'");
      if (!sh || sh->kind != json::Value::Kind::Array) throw bad("missing or non-array 'shape'");
      if (!off || off->kind != json::Value::Kind::Array || off->arr.size() != 2)
        throw bad("missing or malformed 'data_offsets'");
      TensorInfo ti;
      ti.name = name;
      ti.file = path;
      ti.dtype_str = dt->str;
      ti.dtype = parse_dtype(dt->str);
      uint64_t numel = 1;
      for (const auto& d : sh->arr) {
        if (d.kind != json::Value::Kind::Number || !d.is_integer || d.i < 0)
          throw bad("shape entries must be non-negative integers");
        if (d.i > 0 && numel > (uint64_t(1) << 50) / uint64_t(d.i)) throw bad("shape too large");
        numel *= uint64_t(d.i);
        ti.shape.push_back(d.i);
      }
      for (const auto& o : off->arr)
        if (o.kind != json::Value::Kind::Number || !o.is_integer || o.i < 0)
          throw bad("data_offsets must be non-negative integers");
      uint64_t b = uint64_t(off->arr[0].i), e = uint64_t(off->arr[1].i);
      if (b > e) throw bad("data_offsets begin > end");
      if (e > data_size)
        throw bad("data runs past the end of the file (offset " + std::to_string(e) + " > " +
                  std::to_string(data_size) + " data bytes; file truncated?)");
      size_t es = dtype_size(ti.dtype);
      if (es != 0 && numel * es != e - b)
        throw bad("byte size " + std::to_string(e - b) + " does not match dtype " + ti.dtype_str +
                  " and shape (" + std::to_string(numel * es) + " bytes expected)");
      ti.data = data0 + b;
      ti.nbytes = size_t(e - b);
      tensors_.push_back(std::move(ti));
    }
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
