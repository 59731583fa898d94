// safetensors files, memory-mapped read-only. Tensor data is used in place: nothing is copied
// or dequantized at load time, so loading costs page-cache, not private RAM.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace gptoss {

enum class DType { BF16, F16, F32, U8, I8, I32, I64, F64, BOOL, Other };
const char* dtype_name(DType d);
size_t dtype_size(DType d);

struct TensorInfo {
  std::string name;
  DType dtype = DType::Other;
  std::string dtype_str;        // as written in the header
  std::vector<int64_t> shape;
  const void* data = nullptr;   // points into the mapping (or into caller-owned memory)
  size_t nbytes = 0;
  uint64_t begin = 0;           // data_offsets[0]: where the data starts in the data section
  std::string file;             // where it came from, for error messages
};

class SafetensorsFile {
 public:
  // Maps `path` and validates it as strictly as the `safetensors` library does: header length,
  // UTF-8 JSON (a strict grammar), known dtypes, shapes and offsets that agree with them, and
  // tensor data that tiles the data section exactly (from byte 0, no gaps, no overlaps, nothing
  // after the last tensor). Stricter in ways the format's writers never meet: duplicate keys are
  // refused (the format forbids them; the library keeps the last), so is tensor data not aligned
  // to its element size in the file (the engine reads it in place), and a header of more than
  // 2^20 JSON values. Throws CheckpointError naming the file and the tensor.
  // populate: also build the page tables for the whole mapping up front (MAP_POPULATE), so the
  // first forward pass does not take millions of minor page faults; worth it when the file is
  // already in the page cache and fits in memory.
  explicit SafetensorsFile(const std::string& path, bool populate = false);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  size_t size() const { return size_; }
  // Ask the kernel to start reading the whole file (sequentially) in the background.
  void prefetch() const;

 private:
  std::string path_;
  void* map_ = nullptr;
  size_t size_ = 0;
  std::vector<TensorInfo> tensors_;
};

}  // namespace gptoss
