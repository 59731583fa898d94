// Launchers of the CUDA kernels (device pointers, one stream). Shared by the engine
// (engine.cu) and the numpy test entry points (test_api.cu). All activations are fp32; weight
// matrices are bf16 ([N, K] row-major, "nn.Linear" orientation) or packed MXFP4, exactly as
// stored in the checkpoint; small vectors (norms, biases, sinks) are fp32 copies.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include <string>
#include <vector>

#include "step_plan.h"  // SampleParams, kMaxTopLogprobs

namespace gptoss::cuda {

// ---- every kernel (the GPU check reads their attributes: registers, local memory) -----------
struct KernelEntry {
  std::string name;
  const void* fn;
  int threads;  // the block size it is launched with
};
#define GPTOSS_KERNEL_ENTRY(list, threads, ...) \
  (list).push_back(::gptoss::cuda::KernelEntry{#__VA_ARGS__, reinterpret_cast<const void*>(__VA_ARGS__), (threads)})
// Each file's own (ops.cu, attention.cu, gemm.cu, moe.cu, sampling.cu); all_kernels: all of them.
void ops_kernels(std::vector<KernelEntry>& out);
void attention_kernels(std::vector<KernelEntry>& out);
void gemm_kernels(std::vector<KernelEntry>& out);
void moe_kernels(std::vector<KernelEntry>& out);
void sampling_kernels(std::vector<KernelEntry>& out);
std::vector<KernelEntry> all_kernels();

// ---- ops.cu --------------------------------------------------------------------------------
// x[t, :] = E[tok[t], :]  (bf16 table)
void embedding(const int32_t* tok, int T, const uint16_t* E, int H, float* x, cudaStream_t st);
// y = x / sqrt(mean(x^2) + eps) * w, row by row (y may alias x).
void rmsnorm(const float* x, int T, int H, const float* w, float eps, float* y, cudaStream_t st);
// x[t] += sum_{k<K} add[(t*K + k), :] (add may be null), then y = rmsnorm(x) * w.
// This is the MoE combine + residual + the next layer's first RMSNorm in one pass.
void add_rmsnorm(float* x, const float* add, int K, int T, int H, const float* w, float eps, float* y,
                 cudaStream_t st);

// One layer of the paged KV cache. A block holds, for every layer of its pool, K then V, each
// [n_kv][block_size][head_dim], in fp32 or bf16 (the CPU keeps K as [n_kv][head_dim][block_size];
// the pools are separate, so the layouts need not agree).
struct KVView {
  void* pool = nullptr;        // block b starts at pool + b * block_elems elements
  int64_t block_elems = 0;
  int64_t layer_offset = 0;    // elements from a block's start to this layer's K
  int block_size = 0, n_kv = 0, head_dim = 0;
  bool bf16 = false;
};

// Per row t of qkv ([T, ld]: nq query heads, nk key heads, then nk value heads, head size
// 2*half): half-split YaRN RoPE of q and k at position pos[t] (cos/sin of float(pos)*inv_freq
// times conc), q rotated in place; if kv.pool, k (rotated) and v are stored at pos[t] in the
// block tables[row_table[t] + pos[t] / block_size].
// The QKV projection of up to kQkvRopeRows rows (decode) with rope_kv_store fused in: qkv
// [M, ld] gets the rotated q (its k and v columns are left unwritten), the cache gets k and v.
// W: bf16 [(nq + 2 nk) * 2 half, K] rows, bias fp32. Its dot products run on CUDA cores, which
// reread the activations from L1 for every weight: past 2 rows that costs more than the
// separate launch of dense (tensor-core GEMV) + rope_kv_store.
constexpr int kQkvRopeRows = 2;
struct QkvRopeArgs {
  const float* X = nullptr;
  int ldx = 0, M = 0, K = 0;
  const uint16_t* W = nullptr;
  const float* bias = nullptr;
  float* qkv = nullptr;
  int ld = 0;
  const int32_t* pos = nullptr;
  const int32_t* row_table = nullptr;
  const int32_t* tables = nullptr;
  int nq = 0, nk = 0, half = 0;
  const float* inv_freq = nullptr;
  float conc = 1.f;
  KVView kv;
  bool vec = false;  // set by qkv_rope
  bool pre = false;  // set by qkv_rope: prefetch the weights before waiting (programmatic dependent launch)
};
void qkv_rope(const QkvRopeArgs& a, cudaStream_t st);
void rope_kv_store(float* qkv, int ld, int T, const int32_t* pos, const int32_t* row_table, const int32_t* tables,
                   int nq, int nk, int half, const float* inv_freq, float conc, const KVView& kv, cudaStream_t st);

// Rows row0 .. row0+nrows-1 of a forward chunk: one sequence at positions pos0, pos0+1, ...
struct AttnGroup {
  int32_t row0, nrows, pos0, table_off;
};

struct AttnArgs {
  const float* q = nullptr;  // [T, ldq], head h at column h*head_dim
  int ldq = 0, T = 0;
  KVView kv;
  const int32_t* tables = nullptr;  // block ids; a group's table starts at table_off
  const AttnGroup* groups = nullptr;
  int n_groups = 0, n_heads = 0, window = 0;  // window <= 0: full causal
  float scale = 1.f;
  const float* sinks = nullptr;  // [n_heads]
  int split_len = 0, n_splits = 1;  // split_len 0: each group's range in n_splits equal parts
  float* part = nullptr;  // [T * n_heads * n_splits * (head_dim + 2)]
  // [n_groups * n_kv] zeroed arrival counts: the last split block merges (no merge kernel);
  // each launch leaves them zero. Null: a second kernel merges.
  int32_t* arrivals = nullptr;
  float* out = nullptr;   // [T, ldo]
  int ldo = 0;
  int path = 0;  // 0: tensor cores for prefill (head_dim 64), CUDA cores for decode; 1 / 2 force one
  bool split = true;  // tensor cores: operands as bf16 hi + lo, 3 MMAs (fp32-level); false: bf16, 1 MMA
};
// Max query rows per group for this GQA ratio (64 (row, head) pairs per block).
int attn_rows_per_group(int n_heads, int n_kv);
bool attn_head_dim_supported(int head_dim);
// Chooses n_splits, a power of two (max_span: the longest key range of any group; part_cap:
// how many (row, split) partial slots the buffer holds); split_len = 0.
void attn_plan(AttnArgs& a, int max_span, int64_t part_cap, int sm_count);
// Per-device setup (shared-memory opt-in) that must not happen during a graph capture.
void attention_prepare();
void attention(const AttnArgs& a, cudaStream_t st);

// ---- gemm.cu -------------------------------------------------------------------------------
enum Epi : int { EPI_STORE = 0, EPI_ADD = 1 };
// Y[m, n] (= or +=) sum_k X[row(m), k] * W[n, k] + bias[n], row(m) = rows ? rows[m] : m.
// path: 0 = auto (CUDA-core GEMV for one row, tensor-core GEMV for 2-8, the tensor-core GEMM
// above), 1 = CUDA-core GEMV, 2 = tensor-core GEMM, 3 = tensor-core GEMV (1 when the rows are
// not 16-byte aligned).
// split (tensor cores): activations as bf16 hi + lo, two MMAs (fp32-level results); false: bf16
// activations, one MMA (half the tensor work, ~3e-3 relative error). The same for the experts
// (and AttnArgs::split for the prefill attention), and for the GEMVs of 2-8 rows (three exact
// bf16 parts or one) and the experts' decode GEMV (fp16 hi + lo or one fp16, a few 1e-4).
// tiles: the tensor-core block tile (GemmTiles, rows x outputs); auto takes 32 x 128 for up to
// 32 rows, else the biggest that still gives every SM two blocks.
enum GemmTiles : int { TILES_AUTO = 0, TILES_64x64 = 1, TILES_64x128 = 2, TILES_128x128 = 3, TILES_32x128 = 4 };
constexpr int kGemmTilesMax = 4;
void dense(const float* X, int ldx, const int32_t* rows, int M, int K, const uint16_t* W, int ldw, int N,
           const float* bias, float* Y, int ldy, int epi, cudaStream_t st, int path = 0, bool split = true,
           int tiles = TILES_AUTO);
int dense_tiles(int M, int N, int tiles);  // the tile auto resolves to
int gemm_tile_rows(int tiles);             // rows of a (resolved) tile
// Per-device setup (shared-memory opt-in of the 128 x 128 tiles) outside any graph capture.
void gemm_prepare();

// ---- moe.cu --------------------------------------------------------------------------------
// Scratch that lets a few rows (T <= min(rows, router_split_rows())) be routed by many blocks:
// logits [rows, E] and an arrival count per row, zeroed once (each launch leaves it zero).
struct RouterScratch {
  float* logits = nullptr;
  int32_t* arrivals = nullptr;
  int rows = 0;
};
int router_split_rows();
// Routing: logits = t W^T + b (W bf16 [E, H]); the top k (ties to the lower id, descending)
// and the softmax over those k.
void router(const float* t, int T, int H, const uint16_t* W, const float* b, int E, int k, int32_t* idx,
            float* w, cudaStream_t st, const RouterScratch* scratch = nullptr);
// The same after t = rmsnorm(x) * norm_w (stored in t) in the same kernel.
void norm_router(const float* x, int T, int H, const float* norm_w, float eps, float* t, const uint16_t* W,
                 const float* b, int E, int k, int32_t* idx, float* w, cudaStream_t st,
                 const RouterScratch* scratch = nullptr);

// (token, slot) pairs grouped by expert, cut into tiles of at most `tile` pairs.
struct MoeTiles {
  int32_t* sorted = nullptr;      // [P] pair ids (t*k + slot), grouped by expert
  int32_t* tile_e = nullptr;      // [max_tiles]
  int32_t* tile_start = nullptr;  // [max_tiles] offset into sorted
  int32_t* tile_count = nullptr;  // [max_tiles]
  int32_t* n_tiles = nullptr;     // [1]
  int max_tiles = 0, tile = 0;
  // direct > 0 (GEMV path only): no grouping, tile i is pair i alone, of expert idx[i], for
  // i < direct. For one token (its k experts are distinct anyway) this saves moe_route.
  int direct = 0;
  const int32_t* idx = nullptr;
  int gemm = TILES_64x128;  // tensor-core path: the block tile (its rows = tile)
};
int moe_max_tiles(int P, int E, int tile);
// Pairs per tile and the tensor-core tile shape for P pairs over E experts (tiles: GemmTiles;
// auto: 128-row tiles once experts average 96 pairs, 64 from 24, else 32); sets tile, gemm and
// max_tiles.
void moe_plan(MoeTiles& mt, bool tensor_cores, int P, int E, int tiles = TILES_AUTO);
int moe_gemv_tile();  // pairs per tile on the GEMV path (the smallest tile: bounds max_tiles)
// What 16 products of the fp16 subnormal 2^-15 and 1 sum to on a tensor core (one MMA), with the
// subnormals in the A operand (out[0]) and in B (out[1]): 2^-11 where they are taken as they
// are, 0 where they are flushed. Not during a graph capture.
void subnormal_probe(float out[2]);
// Whether this device's tensor cores take fp16 subnormal inputs in both operands, which the
// experts' decode GEMV relies on (subnormal_probe, once per device).
bool moe_gemv_exact();
void moe_route(const int32_t* idx, int P, int E, const MoeTiles& mt, cudaStream_t st);

struct MxWeights {
  const uint8_t* blocks = nullptr;  // [E, N, K/32, 16]
  const uint8_t* scales = nullptr;  // [E, N, K/32]
  const float* bias = nullptr;      // [E, N]
  int N = 0, K = 0;
  int E = 0;  // experts (0: unknown; mlp2 then does not prefetch)
};
// mlp1 + SwiGLU: act[pos, i] = swiglu(W1[e] x[sorted[pos] / topk] + b1[e])  (act: [P, N/2])
void moe_mlp1(const float* x, int ldx, int topk, const MoeTiles& mt, const MxWeights& w, float alpha,
              float limit, float* act, bool tensor_cores, cudaStream_t st, bool split = true);
// One token's combine folded into mlp2 (add_rmsnorm's work, by the last block to finish): x +=
// the k rows of y, t = rmsnorm(x) * norm_w. arrivals: one counter, zero (the launch leaves it so).
struct MoeCombine {
  float* x = nullptr;
  const float* norm_w = nullptr;
  float eps = 0.f;
  float* t = nullptr;
  int32_t* arrivals = nullptr;
};
// mlp2 + routing weight: y[sorted[pos], :] = rw[sorted[pos]] * (W2[e] act[pos] + b2[e])  (y: [P, N]).
// comb (GEMV path, one token's direct pairs): also the combine; returns whether it did it.
bool moe_mlp2(const float* act, const MoeTiles& mt, const MxWeights& w, const float* rw, float* y,
              bool tensor_cores, cudaStream_t st, bool split = true, const MoeCombine* comb = nullptr);

// ---- ops.cu (sampling, synthetic weights) --------------------------------------------------
// out[r] = argmax of logits[r, :V] (ties: lowest index; NaN ignored). With scratch, up to
// scratch->rows rows are each split over several blocks.
struct ArgmaxScratch {
  float* val = nullptr;         // [rows * splits] partial maxima
  int32_t* idx = nullptr;       // [rows * splits]
  int32_t* arrivals = nullptr;  // [rows], zero (each launch leaves it so)
  int rows = 0, splits = 0;
};
void argmax_rows(const float* logits, int R, int64_t V, int32_t* out, cudaStream_t st,
                 const ArgmaxScratch* scratch = nullptr);
// Deterministic pseudo-random fills keyed by (seed, stream): Normal(mean, std) in bf16 or
// fp32; uniform bytes; E8M0 scales base + {-1, 0, +1}.
void fill_normal_bf16(uint16_t* p, int64_t n, float mean, float std, uint64_t seed, uint64_t stream, cudaStream_t st);
void fill_normal_f32(float* p, int64_t n, float mean, float std, uint64_t seed, uint64_t stream, cudaStream_t st);
void fill_bytes(uint8_t* p, int64_t n, uint64_t seed, uint64_t stream, cudaStream_t st);
void fill_scales(uint8_t* p, int64_t n, int base, uint64_t seed, uint64_t stream, cudaStream_t st);

// ---- sampling.cu ---------------------------------------------------------------------------
// Per row: top_k <= 0, top_p >= 1, min_p <= 0 are off; vocab_limit <= 0 means V; u in [0, 1) is
// the uniform number the Python sampler would draw (u >= 1, e.g. a float64 draw rounded to float,
// gives the last kept id, as sampling.py's clamp does).
using ::gptoss::SampleParams;
// out[r] = the token sampled from logits[r, :V] with params[r] (device array of R SampleParams):
// temperature 0 = greedy argmax (lowest id on ties); otherwise python/gptoss/sampling.py steps 4-8.
// fp32 throughout (sampling.py scales in float64), so a boundary case can rarely differ. out[r] = -1
// when no id of the row can be sampled (every logit non-finite; sampling.py raises ValueError).
// Few rows (R <= scratch->rows): the ids that can be drawn are first gathered by two kernels over
// slices of each row (same tokens, far fewer passes over 201,088 logits by one SM each).
struct SampleScratch {
  float* stage_val = nullptr;    // [rows, V] per-slice candidates
  int32_t* stage_id = nullptr;   // [rows, V]
  float* cand_val = nullptr;     // [rows, V] a row's candidates, ascending ids
  int32_t* cand_id = nullptr;    // [rows, V]
  int32_t* cand_n = nullptr;     // [rows] their count (-1: greedy row, not gathered)
  float* part_max = nullptr;     // [rows * splits]
  uint32_t* part_n = nullptr;    // [rows * splits]
  float* row_max = nullptr;      // [rows]
  uint32_t* row_nv = nullptr;    // [rows] #valid
  int32_t* arrivals = nullptr;   // [rows], zero (each launch leaves it so)
  int rows = 0, splits = 0;
  int force_splits = 0;          // tests: this many slices whatever the size
};
void sample_rows(const float* logits, int R, int64_t V, const SampleParams* params, int32_t* out, cudaStream_t st,
                 const SampleScratch* scratch = nullptr);

using ::gptoss::kMaxTopLogprobs;
// Log-probabilities of row r's raw logits (log_softmax over ids < vocab_limit; vocab_limit <= 0: all V),
// as sampling.py's Sampler._with_logprobs: chosen_lp[r] = logprob of token[r] (-inf if token[r] is
// outside [0, limit)); top_ids/top_lp[r * n + j] = the n most likely ids, descending, ties to the lower id
// (0 <= n <= kMaxTopLogprobs; n = 0: only chosen_lp). NaN logits count as -inf. fp32 exponentials and
// compensated sums (the reference sums in float64 over float32 exponentials). Rows with every id
// masked: chosen_lp -inf, top ids -1 and top_lp -inf; columns past the limit (limit < n): the same.
// A +inf logit makes the row's log-probabilities NaN, as in the reference.
void logprobs_rows(const float* logits, int R, int64_t V, int vocab_limit, const int32_t* token, int n,
                   float* chosen_lp, int32_t* top_ids, float* top_lp, cudaStream_t st);
// sampling.py steps 1-3 as sparse edits: row r's entries e in [off[r], off[r+1]) (distinct ids)
// turn logit id[e] into rep(x) - sub + bias with val[e] = {rep, sub, bias} (rep: x / rep when
// x > 0, else x * rep); saved[e] keeps the old value for restore_penalties.
void apply_penalties(float* logits, int R, int64_t V, const int32_t* off, const int32_t* id, const float* val,
                     float* saved, cudaStream_t st);
void restore_penalties(float* logits, int R, int64_t V, const int32_t* off, const int32_t* id, const float* saved,
                       cudaStream_t st);

}  // namespace gptoss::cuda
