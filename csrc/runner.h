// A runner executes forward chunks for the engine core (engine_core.h): one per backend (the
// CPU's forward pass, the CUDA kernels, the same kernels on the CPU emulator). It owns the
// weights, the activations and the KV blocks' storage; the core owns the sequences, their
// block ids and the lock, and calls a runner only while holding it.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "kv_cache.h"
#include "step_plan.h"

namespace gptoss {

class Runner {
 public:
  virtual ~Runner() = default;
  // "cpu", "cuda" or "cuda_emu".
  virtual const char* backend() const = 0;
  // The arithmetic of the larger products: "fp32" or "bf16".
  virtual const char* precision() const = 0;
  // The pool that stores the KV blocks (both groups of layers draw from it).
  virtual BlockPool& kv_pool() = 0;
  // Whether forward() can produce this kind of output (every runner gives logits).
  virtual bool supports(StepOutput kind) const = 0;
  // Called before a step or a reconfiguration, under the engine lock (CUDA: selects the device).
  virtual void enter() {}
  // One chunk: every layer for plan's rows, their K/V stored, the outputs of plan.out_rows
  // written to `out` from row plan.out_row0. It must not change any sequence; it may throw
  // midway (the core then commits nothing of this chunk).
  virtual void forward(const StepPlan& plan, const StepOutputs& out) = 0;
};

// A runner on an accelerator: its device, memory, and the launch options benchmarks compare.
// Setters drain the device and drop anything captured with the old options.
class DeviceRunner : public Runner {
 public:
  struct GraphStats { int64_t captured, launches, cached; };
  // Kernel kinds with (device ms summed, intervals), and ("steps", 0, profiled steps).
  using Profile = std::vector<std::tuple<std::string, double, int64_t>>;

  virtual std::string device_name() const = 0;
  // Bytes: weights, kv_cache, workspace, used (the whole device), total; kv_elem_bytes, sm_count.
  virtual std::map<std::string, double> memory_info() const = 0;
  virtual GraphStats graph_stats() const = 0;
  virtual void set_graphs(bool enabled) = 0;  // decode steps replayed from captured CUDA graphs
  // Tensor-core GEMMs and prefill attention on hi/lo operands (fp32-level, default) or bf16.
  virtual void set_tc_split(bool split) = 0;
  // One tensor-core block tile (1: 64x64, 2: 64x128, 3: 128x128, 4: 32x128) or 0: auto.
  virtual void set_gemm_tiles(int tiles) = 0;
  // Programmatic dependent launch (sm_90+): returns whether it is now in use.
  virtual bool set_pdl(bool on, bool prefetch) = 0;
  virtual void set_fuse_qkv_rope(bool on) = 0;
  // Steps of up to n tokens run the experts on the GEMV path, longer ones on the GEMM.
  virtual void set_moe_gemv_tokens(int n) = 0;
  virtual int moe_gemv_tokens() const = 0;
  virtual bool moe_gemv_available() const = 0;
  virtual void set_profile(bool on) = 0;
  virtual Profile profile() const = 0;
  virtual void synchronize() = 0;
  // The "last block merges" arrival counters once the device drains: (how many, non-zero).
  virtual std::pair<int64_t, int64_t> arrival_counters() = 0;
};

}  // namespace gptoss
