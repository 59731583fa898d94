// Host-memory entry points for every CUDA kernel (copy in, run, copy out), so tests can
// compare each kernel with its CPU twin in gptoss._core.kernels. Plain C++ header.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace gptoss::cuda::test {

void rmsnorm(const float* x, int T, int H, const float* w, float eps, float* y);
// x (in/out) += sum_k add[t*K + k]; y = rmsnorm(x) * w
void add_rmsnorm(float* x, const float* add, int K, int T, int H, const float* w, float eps, float* y);
void embedding(const int32_t* tok, int T, const uint16_t* E, int64_t V, int H, float* x);
// x [T, n_heads * 2 * half] rotated at pos -> y
void rope(const float* x, int T, const int64_t* pos, const float* inv_freq, int half, float conc, int n_heads, float* y);
// q [T, Hq*D]; k, v [L, n_kv, D] (one sequence's dense cache, laid out in shuffled blocks of a
// paged cache with a dummy layer in front); pos [T]; split_len 0 = automatic; merge_in_kernel:
// the splits merged by their last block (as the engine does) or by the separate merge kernel.
void attention(const float* q, int T, int n_heads, const float* k, const float* v, int L, int n_kv, int D,
               const int64_t* pos, const float* sinks, float scale, int window, int block_size, uint32_t seed,
               bool kv_bf16, int split_len, float* out, int path = 0, bool tc_split = true,
               bool merge_in_kernel = true);
// Y = X W^T + bias (bias fp32 or null); path 0 auto, 1 GEMV, 2 tensor cores; split and tiles:
// the tensor-core options of cuda::dense.
void dense(const float* x, int M, int K, const uint16_t* w, int N, const float* bias, int path, float* y,
           bool split = true, int tiles = 0);
// split: few rows routed over many blocks (as the engine does for up to router_split_rows rows).
void router(const float* t, int T, int H, const uint16_t* w, int E, const float* b, int k, int32_t* idx, float* rw,
            bool split = false);
// The MoE block for given routing: out[t] = sum_k rw[t,k] * (W2 swiglu(W1 x[t] + b1) + b2) over
// experts idx[t, k].
void moe(const float* x, int T, int H, const int32_t* idx, const float* rw, int k, int E, int I,
         const uint8_t* b1, const uint8_t* s1, const float* bias1, const uint8_t* b2, const uint8_t* s2,
         const float* bias2, float alpha, float limit, bool tensor_cores, float* out, int tiles = 0, bool split = true);
// Y = X W^T + bias for one MXFP4 matrix (blocks [N, K/32, 16], scales [N, K/32]).
void mxfp4_matmul(const float* x, int T, int K, const uint8_t* blocks, const uint8_t* scales, int N,
                  const float* bias, bool tensor_cores, float* y, int tiles = 0, bool split = true);
void argmax(const float* logits, int R, int64_t V, int32_t* out, bool split = true);
// kind: 0 normal bf16 (out uint16), 1 normal f32, 2 bytes, 3 scales
// Device-to-device copy bandwidth in GB/s (bytes read + bytes written per second), best of reps.
double copy_bandwidth(int64_t bytes, int reps);
void fill(int kind, int64_t n, float mean, float std, int base, uint64_t seed, uint64_t stream, void* out);
// out[r] = cuda::sample_rows on logits [R, V] with row r's parameters (arrays of R) and one vocab_limit.
// splits: < 0 one block per row; 0 the engine's choice for few rows; > 0 that many slices per row.
void sample(const float* logits, int R, int64_t V, const float* temperature, const int* top_k, const float* top_p,
            const float* min_p, const float* u, int vocab_limit, int32_t* out, int splits = -1);
// cuda::logprobs_rows on logits [R, V], token [R]: chosen_lp [R], top_ids and top_lp [R, n].
void logprobs(const float* logits, int R, int64_t V, int vocab_limit, const int32_t* token, int n, float* chosen_lp,
              int32_t* top_ids, float* top_lp);

// cuda::subnormal_probe: what 16 products of 2^-15 and 1 sum to on a tensor core with the fp16
// subnormals in the A operand (out[0]) and in B (out[1]); 2^-11 where they are taken.
void subnormal_probe(float out[2]);
// Every kernel's attributes (cudaFuncGetAttributes) and the block size it is launched with.
struct KernelAttributes {
  std::string name;
  int launch_threads, max_threads, regs;
  int64_t local_bytes, static_shared_bytes, const_bytes;
  int max_dynamic_shared_bytes;
};
std::vector<KernelAttributes> kernel_attributes();
// A kernel with 1 KiB of static shared memory and `dynamic_bytes` of dynamic shared memory, its
// limit set by allow_dynamic_smem (as the GEMMs' and attention's): every thread writes its share
// of both, and thread 0 returns their sum (the dynamic part holds 1, the static part 2 a float).
float shared_memory_optin(int dynamic_bytes);
// The "last block merges" pattern (blocks of 256 threads each store 256 floats, the last block
// to count itself in sums them all), as last_block_arrives does it (variant 0) and as it goes
// wrong: 1 = thread 0 fences and counts in with no barrier after the other threads' stores, 2 = a
// barrier but no fence. Returns the last block's sum (right: blocks * 256 * (blocks * 256 - 1) / 2).
double merge_pattern(int variant, int blocks);

}  // namespace gptoss::cuda::test
