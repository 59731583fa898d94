// CudaRunner's internals, shared by its parts (one concern each):
//   engine.cu          the public methods (construction, the runner interface, options)
//   engine_weights.cu  the device, the weights (uploaded or generated on the device)
//   engine_memory.cu   the workspace, the KV cache, the step metadata buffers
//   engine_plan.cu     a chunk: its StepPlan serialised into `meta`, run, outputs copied back
//   engine_graphs.cu   CUDA graphs of decode steps, and the profiler's events
//   engine_forward.cu  the kernels of one forward pass and of the head
#pragma once

#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "common.cuh"
#include "engine.h"
#include "kernels.cuh"

namespace gptoss::cuda {

void check_kernel_image(int device);  // ops.cu

std::string gib(double bytes);  // human-readable size
// One allocation, freed by the owner (Impl keeps them all); OutOfMemory says what it was for.
void* dev_alloc(size_t bytes, const std::string& what);

// KV blocks in one preallocated device array; ids and reference counts come from BlockPool.
class DevPool final : public BlockPool {
 public:
  DevPool(int64_t max_blocks, int64_t block_elems, size_t elem_bytes, char* base, cudaStream_t stream)
      : BlockPool(max_blocks, block_elems * int64_t(elem_bytes)), block_elems(block_elems), base(base), stream_(stream) {}
  void copy_block(int32_t src, int32_t dst) override {
    const size_t bb = size_t(block_bytes());
    CUDA_CHECK(cudaMemcpyAsync(base + size_t(dst) * bb, base + size_t(src) * bb, bb, cudaMemcpyDeviceToDevice, stream_));
  }
  const int64_t block_elems;
  char* const base;

 private:
  cudaStream_t stream_;
};

struct DevLayer {
  float *attn_norm, *qkv_b, *sinks, *o_b, *mlp_norm, *router_b, *mlp1_b, *mlp2_b;
  uint16_t *qkv_w, *o_w, *router_w;
  uint8_t *mlp1_blocks, *mlp1_scales, *mlp2_blocks, *mlp2_scales;
};

struct CudaRunner::Impl {
  ModelConfig cfg;
  CudaEngineOptions opt;
  int sm_count = 0, cc_major = 0;
  bool moe_gemv_ok = true;  // the tensor cores take fp16 subnormals (moe_gemv_exact)
  std::string dev_name;
  cudaStream_t stream = nullptr;
  std::vector<void*> allocs;
  size_t weight_bytes = 0, work_bytes = 0, kv_bytes = 0;

  // weights
  uint16_t *embed = nullptr, *unembed = nullptr;
  float* final_norm = nullptr;
  float* inv_freq = nullptr;
  std::vector<DevLayer> layers;

  // KV cache
  std::vector<int64_t> full_layers, win_layers;
  std::unique_ptr<DevPool> kv_pool;  // both groups of layers draw blocks from it (engine core)

  // workspace (sized for max_chunk_tokens rows)
  int64_t Tmax = 0, part_cap = 0;
  float *x = nullptr, *t = nullptr, *qkv = nullptr, *att = nullptr, *rw = nullptr, *act = nullptr, *ypairs = nullptr;
  float *part = nullptr, *logits = nullptr;
  int32_t *ridx = nullptr, *argmax_out = nullptr;
  float* pen_saved = nullptr;  // the logits that penalties overwrite (restored for the logprobs)
  int64_t pen_cap = 0;
  float *lp_chosen = nullptr, *lp_top = nullptr;  // device logprobs: [Tmax], [Tmax * kMaxTopLogprobs]
  int32_t* lp_ids = nullptr;
  MoeTiles tiles;
  RouterScratch router_scr;  // few-row steps route over many blocks
  int32_t* attn_arrivals = nullptr;  // [Tmax * n_kv]: split attention merges in its last block
  int32_t* moe_arrivals = nullptr;   // [1]: one token's mlp2 does the combine in its last block
  ArgmaxScratch argmax_scr;          // few-row greedy steps: each row's argmax over many blocks
  SampleScratch sample_scr;          // few-row sampled steps: the candidates gathered first
  int32_t* meta = nullptr;   // per-chunk metadata (device)
  int64_t meta_cap = 0;      // int32 entries
  int32_t* staging = nullptr;  // pinned host copy of meta
  int64_t staging_cap = 0;

  template <typename T>
  T* alloc(int64_t n, const std::string& what, size_t* counter) {
    *counter += size_t(n) * sizeof(T);
    if (dry) return nullptr;
    void* p = dev_alloc(size_t(n) * sizeof(T), what);
    allocs.push_back(p);
    return static_cast<T*>(p);
  }
  bool dry = false;  // memory_plan: count the allocations, make none

  ~Impl() {
    if (stream) cudaStreamSynchronize(stream);
    drop_graphs();
    drop_profile();
    for (void* p : allocs) cudaFree(p);
    if (meta) cudaFree(meta);
    if (pen_saved) cudaFree(pen_saved);
    if (staging) cudaFreeHost(staging);
    if (stream) {
      stream_set_pdl(stream, false);  // a later stream may get this handle
      cudaStreamDestroy(stream);
    }
  }

  void init_device();

  // ---- weights -------------------------------------------------------------------------------
  void alloc_weights();
  void upload(const TensorSource& src, const std::string& layout);
  void generate(uint64_t seed);

  // ---- workspace and KV cache -----------------------------------------------------------------
  // Zeroes device memory on the engine stream: a cudaMemset would run on the legacy default
  // stream, which the engine's non-blocking stream is not ordered with. alloc_workspace waits
  // for them once at its end.
  void zero(void* p, size_t bytes);
  void alloc_workspace();
  void alloc_kv();

  // ---- a step: one chunk's StepPlan serialised into `meta`, run eagerly or as a graph, its
  // outputs copied back.
  void forward_chunk(const StepPlan& plan, const StepOutputs& out);
  void ensure_meta(int64_t n);
  void ensure_pen_saved(int64_t n);

  // ---- CUDA graphs: a decode step (one token per sequence) is captured once per launch shape
  // and replayed. Everything a kernel reads that changes from step to step (tokens, positions,
  // block tables, attention groups) is in `meta`, whose layout depends only on the shape; the
  // attention splits are cut per group on the device (AttnArgs::split_len = 0).
  struct Shape {
    int T, ng, R, nsf, nsw;
    StepOutput mode;
    int lpn, lpl;  // Sample: top logprobs per row (-1: no logprobs) and their vocab_limit
    // Sample: room for the chunk's penalty entries, a power of two >= 64 (0: none), so that a
    // graph serves every step whose entries fit; the CSR offsets say how many are real.
    int pe = 0;
    bool operator<(const Shape& o) const {
      return std::tie(T, ng, R, nsf, nsw, mode, lpn, lpl, pe) <
             std::tie(o.T, o.ng, o.R, o.nsf, o.nsw, o.mode, o.lpn, o.lpl, o.pe);
    }
  };
  static constexpr int kSpInts = int(sizeof(SampleParams) / 4);
  std::map<Shape, cudaGraphExec_t> graphs;
  int64_t graphs_captured = 0, graph_launches = 0;
  static constexpr int kGraphMaxT = 256;
  static constexpr int kLogitRows = 256;  // rows of the logits buffer (>= kGraphMaxT: a graph's head is one piece)
  static constexpr int kSampleSplitRows = 8;  // sampled steps of up to this many rows gather candidates first
  static_assert(kLogitRows >= kGraphMaxT, "a captured decode step computes its head in one piece");
  static constexpr size_t kMaxGraphs = 64;
  void drop_graphs();

  // ---- profile: device time per kernel kind ----------------------------------------------------
  // A profiled step records an event after each kernel group and the events' elapsed times
  // split it. Steps of up to 256 rows are captured afresh into a graph with the events, so their
  // short kernels run back to back as in a replayed graph; longer ones (prefill) run eagerly,
  // where launch gaps are small next to their kernels.
  bool profiling = false;
  bool prof_on = false;       // marks are recorded now
  bool prof_pending = false;  // a profiled step is in flight
  std::vector<cudaEvent_t> prof_events;
  std::vector<const char*> prof_labels;  // label of the interval ending at event i
  std::map<std::string, std::pair<double, int64_t>> prof_acc;  // label -> (ms, intervals)
  int64_t prof_steps = 0;
  cudaGraphExec_t prof_exec = nullptr;
  void mark(const char* label);
  void run_profiled(const Shape& p);

  // After the profiled step's stream synchronisation: adds its intervals.
  void collect_profile();
  void drop_profile();

  // Metadata layout: tok[T] pos[T] row_full[T] row_win[T] groups_full[ng] groups_win[ng]
  // logit_rows[R] sample_params[R] (Sample only) tables[...] (the full-attention tables, then the
  // window tables).
  static int64_t o_pos(const Shape& p) { return p.T; }
  static int64_t o_rf(const Shape& p) { return 2 * int64_t(p.T); }
  static int64_t o_rw(const Shape& p) { return 3 * int64_t(p.T); }
  static int64_t o_gf(const Shape& p) { return 4 * int64_t(p.T); }
  static int64_t o_gw(const Shape& p) { return o_gf(p) + 4 * int64_t(p.ng); }
  static int64_t o_lr(const Shape& p) { return o_gw(p) + 4 * int64_t(p.ng); }
  static int64_t o_sp(const Shape& p) { return o_lr(p) + p.R; }
  static int64_t o_pen(const Shape& p) { return o_sp(p) + (p.mode == StepOutput::Sample ? int64_t(kSpInts) * p.R : 0); }
  // penalty CSR: off[R + 1] (from 0), id[pe], val[3 pe]
  static int64_t o_tab(const Shape& p) { return o_pen(p) + (p.pe > 0 ? int64_t(p.R + 1) + 4 * int64_t(p.pe) : 0); }

  int plan_splits(const Shape& p, int max_span) const;
  void run_graph(const Shape& p);

  // Every kernel of one forward pass over the rows described by `meta` (layout: Shape).
  void enqueue_forward(const Shape& p);

  // Logits of output rows r0 .. r0+n-1 (into `logits`, from row 0), then their greedy or sampled
  // tokens and log-probabilities (at row r0 of those buffers).
  void enqueue_head(const Shape& p, int r0, int n);
};

}  // namespace gptoss::cuda
