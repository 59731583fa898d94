// Host-memory wrappers of the kernels for the tests (see test_api.h).
#include "test_api.h"

#include <algorithm>
#include <numeric>
#include <random>
#include <stdexcept>
#include <vector>

#include "common.cuh"
#include "kernels.cuh"

namespace gptoss::cuda::test {
namespace {

void require_device() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    cudaGetLastError();
    throw CudaError("no CUDA device");
  }
}

// RAII device buffer.
struct Buf {
  void* p = nullptr;
  size_t bytes = 0;
  explicit Buf(size_t n) : bytes(n) {
    require_device();
    CUDA_CHECK(cudaMalloc(&p, n ? n : 16));
  }
  Buf(const void* host, size_t n) : Buf(n) {
    if (n) CUDA_CHECK(cudaMemcpy(p, host, n, cudaMemcpyHostToDevice));
  }
  ~Buf() { cudaFree(p); }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  template <typename T>
  T* as() const { return static_cast<T*>(p); }
  void to_host(void* dst, size_t n) const {
    CUDA_CHECK(cudaDeviceSynchronize());
    if (n) CUDA_CHECK(cudaMemcpy(dst, p, n, cudaMemcpyDeviceToHost));
  }
};

void sync() { CUDA_CHECK(cudaDeviceSynchronize()); }

}  // namespace

void rmsnorm(const float* x, int T, int H, const float* w, float eps, float* y) {
  Buf dx(x, size_t(T) * H * 4), dw(w, size_t(H) * 4), dy(size_t(T) * H * 4);
  cuda::rmsnorm(dx.as<float>(), T, H, dw.as<float>(), eps, dy.as<float>(), 0);
  dy.to_host(y, size_t(T) * H * 4);
}

void add_rmsnorm(float* x, const float* add, int K, int T, int H, const float* w, float eps, float* y) {
  Buf dx(x, size_t(T) * H * 4), da(add, size_t(T) * K * H * 4), dw(w, size_t(H) * 4), dy(size_t(T) * H * 4);
  cuda::add_rmsnorm(dx.as<float>(), da.as<float>(), K, T, H, dw.as<float>(), eps, dy.as<float>(), 0);
  dy.to_host(y, size_t(T) * H * 4);
  dx.to_host(x, size_t(T) * H * 4);
}

void embedding(const int32_t* tok, int T, const uint16_t* E, int64_t V, int H, float* x) {
  Buf dt(tok, size_t(T) * 4), dE(E, size_t(V) * H * 2), dx(size_t(T) * H * 4);
  cuda::embedding(dt.as<int32_t>(), T, dE.as<uint16_t>(), H, dx.as<float>(), 0);
  dx.to_host(x, size_t(T) * H * 4);
}

void rope(const float* x, int T, const int64_t* pos, const float* inv_freq, int half, float conc, int n_heads, float* y) {
  std::vector<int32_t> p32(pos, pos + T);
  const size_t bytes = size_t(T) * n_heads * 2 * half * 4;
  Buf dx(x, bytes), dp(p32.data(), size_t(T) * 4), df(inv_freq, size_t(half) * 4);
  KVView none;
  cuda::rope_kv_store(dx.as<float>(), n_heads * 2 * half, T, dp.as<int32_t>(), nullptr, nullptr, n_heads, 0, half,
                      df.as<float>(), conc, none, 0);
  dx.to_host(y, bytes);
}

void attention(const float* q, int T, int n_heads, const float* k, const float* v, int L, int n_kv, int D,
               const int64_t* pos, const float* sinks, float scale, int window, int block_size, uint32_t seed,
               bool kv_bf16, int split_len, float* out, int path, bool tc_split, bool merge_in_kernel) {
  const int B = block_size, nblk = (L + B - 1) / B;
  const int64_t per_layer = int64_t(2) * n_kv * B * D, block_elems = 2 * per_layer;
  std::vector<int32_t> table(static_cast<size_t>(nblk));
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), std::mt19937(seed));
  const size_t eb = kv_bf16 ? 2 : 4;
  std::vector<uint8_t> pool(size_t(nblk) * size_t(block_elems) * eb, 0xff);  // NaN everywhere else
  auto put = [&](int64_t i, float val) {
    if (kv_bf16) reinterpret_cast<uint16_t*>(pool.data())[i] = f32_to_bf16(val);
    else reinterpret_cast<float*>(pool.data())[i] = val;
  };
  for (int p = 0; p < L; ++p) {
    const int64_t base = int64_t(table[size_t(p / B)]) * block_elems + per_layer;  // layer 1 of the block
    for (int g = 0; g < n_kv; ++g)
      for (int d = 0; d < D; ++d) {
        put(base + (int64_t(g) * B + p % B) * D + d, k[(int64_t(p) * n_kv + g) * D + d]);
        put(base + (int64_t(n_kv + g) * B + p % B) * D + d, v[(int64_t(p) * n_kv + g) * D + d]);
      }
  }
  // Groups of consecutive positions, as the engine forms them for a prefill chunk.
  const int rpg = attn_rows_per_group(n_heads, n_kv);
  std::vector<AttnGroup> groups;
  int max_span = 1;
  for (int r = 0; r < T;) {
    int n = 1;
    while (r + n < T && n < rpg && pos[r + n] == pos[r] + n) ++n;
    const int p0 = int(pos[r]), last = p0 + n - 1;
    groups.push_back(AttnGroup{r, n, p0, 0});
    const int lo = window > 0 ? std::max(0, p0 - window + 1) : 0;
    max_span = std::max(max_span, last - lo + 1);
    r += n;
  }
  Buf dq(q, size_t(T) * n_heads * D * 4), dpool(pool.data(), pool.size()), dt(table.data(), table.size() * 4),
      dg(groups.data(), groups.size() * sizeof(AttnGroup)), ds(sinks, size_t(n_heads) * 4),
      dout(size_t(T) * n_heads * D * 4);
  AttnArgs a;
  a.q = dq.as<float>();
  a.ldq = n_heads * D;
  a.T = T;
  a.kv.pool = dpool.p;
  a.kv.block_elems = block_elems;
  a.kv.layer_offset = per_layer;
  a.kv.block_size = B;
  a.kv.n_kv = n_kv;
  a.kv.head_dim = D;
  a.kv.bf16 = kv_bf16;
  a.tables = dt.as<int32_t>();
  a.groups = dg.as<AttnGroup>();
  a.n_groups = int(groups.size());
  a.n_heads = n_heads;
  a.window = window;
  a.scale = scale;
  a.sinks = ds.as<float>();
  a.out = dout.as<float>();
  a.ldo = n_heads * D;
  a.path = path;
  a.split = tc_split;
  int dev = 0, sms = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  if (split_len > 0) {
    a.split_len = (split_len + 31) / 32 * 32;
    a.n_splits = (max_span + a.split_len - 1) / a.split_len;
  } else {
    attn_plan(a, max_span, int64_t(T) * 64, sms);
  }
  Buf dpart(size_t(T) * n_heads * a.n_splits * (D + 2) * 4);
  a.part = dpart.as<float>();
  Buf arrivals(size_t(std::max(a.n_groups, 1)) * n_kv * 4);
  CUDA_CHECK(cudaMemset(arrivals.p, 0, arrivals.bytes));
  if (merge_in_kernel) a.arrivals = arrivals.as<int32_t>();
  cuda::attention(a, 0);
  if (merge_in_kernel) {  // every count is back to zero
    std::vector<int32_t> left(arrivals.bytes / 4);
    arrivals.to_host(left.data(), arrivals.bytes);
    for (int32_t v : left)
      if (v != 0) throw std::runtime_error("attention: an arrival count was left non-zero");
  }
  dout.to_host(out, size_t(T) * n_heads * D * 4);
}

void dense(const float* x, int M, int K, const uint16_t* w, int N, const float* bias, int path, float* y, bool split,
           int tiles) {
  Buf dx(x, size_t(M) * K * 4), dw(w, size_t(N) * K * 2), dy(size_t(M) * N * 4);
  Buf db(bias ? bias : x, bias ? size_t(N) * 4 : 0);
  cuda::dense(dx.as<float>(), K, nullptr, M, K, dw.as<uint16_t>(), K, N, bias ? db.as<float>() : nullptr,
              dy.as<float>(), N, EPI_STORE, 0, path, split, tiles);
  dy.to_host(y, size_t(M) * N * 4);
}

void router(const float* t, int T, int H, const uint16_t* w, int E, const float* b, int k, int32_t* idx, float* rw,
            bool split) {
  Buf dt(t, size_t(T) * H * 4), dw(w, size_t(E) * H * 2), db(b, size_t(E) * 4), di(size_t(T) * k * 4),
      dr(size_t(T) * k * 4);
  const int rows = cuda::router_split_rows();
  Buf dl(size_t(rows) * E * 4), da(size_t(rows) * 4);
  CUDA_CHECK(cudaMemset(da.p, 0, da.bytes));
  RouterScratch scr{dl.as<float>(), da.as<int32_t>(), rows};
  cuda::router(dt.as<float>(), T, H, dw.as<uint16_t>(), db.as<float>(), E, k, di.as<int32_t>(), dr.as<float>(), 0,
               split ? &scr : nullptr);
  if (split) {  // every row's last block reset its count
    std::vector<int32_t> left(static_cast<size_t>(rows));
    da.to_host(left.data(), da.bytes);
    for (int32_t v : left)
      if (v != 0) throw std::runtime_error("router: an arrival count was left non-zero");
  }
  di.to_host(idx, size_t(T) * k * 4);
  dr.to_host(rw, size_t(T) * k * 4);
}

namespace {
struct TileBufs {
  Buf sorted, te, ts, tc, nt;
  MoeTiles mt;
  TileBufs(int P, int E, bool tensor_cores, int tiles)
      : sorted(size_t(P) * 4),
        te(size_t(moe_max_tiles(P, E, moe_gemv_tile())) * 4),
        ts(te.bytes),
        tc(te.bytes),
        nt(4) {
    mt.sorted = sorted.as<int32_t>();
    mt.tile_e = te.as<int32_t>();
    mt.tile_start = ts.as<int32_t>();
    mt.tile_count = tc.as<int32_t>();
    mt.n_tiles = nt.as<int32_t>();
    moe_plan(mt, tensor_cores, P, E, tiles);
  }
};
}  // namespace

void moe(const float* x, int T, int H, const int32_t* idx, const float* rw, int k, int E, int I, const uint8_t* b1,
         const uint8_t* s1, const float* bias1, const uint8_t* b2, const uint8_t* s2, const float* bias2, float alpha,
         float limit, bool tensor_cores, float* out, int tiles, bool split) {
  const int P = T * k;
  Buf dx(x, size_t(T) * H * 4), di(idx, size_t(P) * 4), dr(rw, size_t(P) * 4);
  Buf db1(b1, size_t(E) * 2 * I * (H / 32) * 16), ds1(s1, size_t(E) * 2 * I * (H / 32)),
      dbias1(bias1, size_t(E) * 2 * I * 4);
  Buf db2(b2, size_t(E) * H * (I / 32) * 16), ds2(s2, size_t(E) * H * (I / 32)), dbias2(bias2, size_t(E) * H * 4);
  Buf act(size_t(P) * I * 4), y(size_t(P) * H * 4);
  TileBufs tb(P, E, tensor_cores, tiles);
  if (T == 1 && !tensor_cores) {  // as the engine does for one token: no grouping
    tb.mt.direct = k;
    tb.mt.idx = di.as<int32_t>();
    tb.mt.max_tiles = k;
  } else {
    cuda::moe_route(di.as<int32_t>(), P, E, tb.mt, 0);
  }
  MxWeights w1{db1.as<uint8_t>(), ds1.as<uint8_t>(), dbias1.as<float>(), 2 * I, H, E};
  MxWeights w2{db2.as<uint8_t>(), ds2.as<uint8_t>(), dbias2.as<float>(), H, I, E};
  cuda::moe_mlp1(dx.as<float>(), H, k, tb.mt, w1, alpha, limit, act.as<float>(), tensor_cores, 0, split);
  cuda::moe_mlp2(act.as<float>(), tb.mt, w2, dr.as<float>(), y.as<float>(), tensor_cores, 0, split);
  std::vector<float> yh(size_t(P) * H);
  y.to_host(yh.data(), yh.size() * 4);
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < H; ++i) {
      float s = 0.f;
      for (int j = 0; j < k; ++j) s += yh[(size_t(t) * k + j) * H + i];
      out[size_t(t) * H + i] = s;
    }
}

void mxfp4_matmul(const float* x, int T, int K, const uint8_t* blocks, const uint8_t* scales, int N, const float* bias,
                  bool tensor_cores, float* y, int tiles, bool split) {
  // One expert, every token routed to it with weight 1: the mlp2 path computes 1 * (W x + b).
  std::vector<int32_t> idx(size_t(T), 0);
  std::vector<float> ones(size_t(T), 1.f), zeros(size_t(N), 0.f);
  Buf dx(x, size_t(T) * K * 4), di(idx.data(), size_t(T) * 4), dr(ones.data(), size_t(T) * 4);
  Buf db(blocks, size_t(N) * (K / 32) * 16), ds(scales, size_t(N) * (K / 32));
  Buf dbias(bias ? bias : zeros.data(), size_t(N) * 4), dy(size_t(T) * N * 4);
  TileBufs tb(T, 1, tensor_cores, tiles);
  cuda::moe_route(di.as<int32_t>(), T, 1, tb.mt, 0);
  // mlp2 reads its input by position in the expert-sorted order, which the grouping leaves
  // arbitrary (atomics): lay x out in that order.
  std::vector<int32_t> sorted(static_cast<size_t>(T));
  tb.sorted.to_host(sorted.data(), size_t(T) * 4);
  std::vector<float> xs(static_cast<size_t>(T) * K);
  for (int p = 0; p < T; ++p) std::copy(x + size_t(sorted[size_t(p)]) * K, x + size_t(sorted[size_t(p)] + 1) * K, xs.begin() + size_t(p) * K);
  Buf dxs(xs.data(), xs.size() * 4);
  MxWeights w{db.as<uint8_t>(), ds.as<uint8_t>(), dbias.as<float>(), N, K, 1};
  cuda::moe_mlp2(dxs.as<float>(), tb.mt, w, dr.as<float>(), dy.as<float>(), tensor_cores, 0, split);
  dy.to_host(y, size_t(T) * N * 4);
}

void argmax(const float* logits, int R, int64_t V, int32_t* out, bool split) {
  Buf dl(logits, size_t(R) * size_t(V) * 4), dout(size_t(R) * 4);
  const int S = 64;
  Buf val(size_t(R) * S * 4), idx(size_t(R) * S * 4), arr(size_t(R) * 4);
  CUDA_CHECK(cudaMemset(arr.p, 0, size_t(R) * 4));
  ArgmaxScratch scr{val.as<float>(), idx.as<int32_t>(), arr.as<int32_t>(), R, S};
  cuda::argmax_rows(dl.as<float>(), R, V, dout.as<int32_t>(), 0, split ? &scr : nullptr);
  std::vector<int32_t> left(static_cast<size_t>(R));
  arr.to_host(left.data(), size_t(R) * 4);
  for (int32_t v : left)
    if (v != 0) throw std::runtime_error("argmax: an arrival count was left non-zero");
  dout.to_host(out, size_t(R) * 4);
}

double copy_bandwidth(int64_t bytes, int reps) {
  Buf a{size_t(bytes)}, b{size_t(bytes)};
  CUDA_CHECK(cudaMemset(a.p, 1, size_t(bytes)));
  cudaEvent_t e0, e1;
  CUDA_CHECK(cudaEventCreate(&e0));
  CUDA_CHECK(cudaEventCreate(&e1));
  float best = 1e30f;
  for (int r = 0; r < reps + 1; ++r) {
    CUDA_CHECK(cudaEventRecord(e0, 0));
    CUDA_CHECK(cudaMemcpyAsync(b.p, a.p, size_t(bytes), cudaMemcpyDeviceToDevice, 0));
    CUDA_CHECK(cudaEventRecord(e1, 0));
    CUDA_CHECK(cudaEventSynchronize(e1));
    float ms = 0.f;
    CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    if (r > 0) best = std::min(best, ms);  // the first run warms up
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return 2.0 * double(bytes) / (double(best) * 1e-3) / 1e9;
}

void fill(int kind, int64_t n, float mean, float std, int base, uint64_t seed, uint64_t stream, void* out) {
  const size_t eb = kind == 0 ? 2 : kind == 1 ? 4 : 1;
  Buf d(size_t(n) * eb);
  switch (kind) {
    case 0: fill_normal_bf16(d.as<uint16_t>(), n, mean, std, seed, stream, 0); break;
    case 1: fill_normal_f32(d.as<float>(), n, mean, std, seed, stream, 0); break;
    case 2: fill_bytes(d.as<uint8_t>(), n, seed, stream, 0); break;
    case 3: fill_scales(d.as<uint8_t>(), n, base, seed, stream, 0); break;
    default: throw InvalidArgument("fill: kind must be 0..3");
  }
  sync();
  d.to_host(out, size_t(n) * eb);
}

void sample(const float* logits, int R, int64_t V, const float* temperature, const int* top_k, const float* top_p,
            const float* min_p, const float* u, int vocab_limit, int32_t* out, int splits) {
  std::vector<SampleParams> p(size_t(std::max(R, 0)));
  for (int r = 0; r < R; ++r) p[r] = SampleParams{temperature[r], top_k[r], top_p[r], min_p[r], u[r], vocab_limit};
  Buf dl(logits, size_t(R) * size_t(V) * 4), dp(p.data(), p.size() * sizeof(SampleParams)), dout(size_t(R) * 4);
  const size_t rows = size_t(std::max(R, 1)), S = 64, big = rows * size_t(std::max<int64_t>(V, 1)) * 4;
  Buf sv(big), si(big), cv(big), ci(big), cn(rows * 4), pm(rows * S * 4), pn(rows * S * 4), rm(rows * 4), rn(rows * 4),
      arr(rows * 4);
  CUDA_CHECK(cudaMemset(arr.p, 0, rows * 4));
  SampleScratch scr;
  scr.stage_val = sv.as<float>(); scr.stage_id = si.as<int32_t>(); scr.cand_val = cv.as<float>();
  scr.cand_id = ci.as<int32_t>(); scr.cand_n = cn.as<int32_t>(); scr.part_max = pm.as<float>();
  scr.part_n = pn.as<uint32_t>(); scr.row_max = rm.as<float>(); scr.row_nv = rn.as<uint32_t>();
  scr.arrivals = arr.as<int32_t>(); scr.rows = int(rows); scr.splits = int(S);
  scr.force_splits = std::max(splits, 0);
  cuda::sample_rows(dl.as<float>(), R, V, dp.as<SampleParams>(), dout.as<int32_t>(), 0, splits < 0 ? nullptr : &scr);
  dout.to_host(out, size_t(R) * 4);
  std::vector<int32_t> left(rows);
  arr.to_host(left.data(), rows * 4);
  for (int32_t v : left)
    if (v != 0) throw std::runtime_error("sample: an arrival count was left non-zero");
}

void logprobs(const float* logits, int R, int64_t V, int vocab_limit, const int32_t* token, int n, float* chosen_lp,
              int32_t* top_ids, float* top_lp) {
  const size_t rows = size_t(std::max(R, 0)), top = rows * size_t(std::max(n, 0)) * 4;
  Buf dl(logits, rows * size_t(V) * 4), dt(token, rows * 4), dc(rows * 4), di(top), dv(top);
  cuda::logprobs_rows(dl.as<float>(), R, V, vocab_limit, dt.as<int32_t>(), n, dc.as<float>(), di.as<int32_t>(),
                      dv.as<float>(), 0);
  dc.to_host(chosen_lp, rows * 4);
  di.to_host(top_ids, top);
  dv.to_host(top_lp, top);
}

void subnormal_probe(float out[2]) {
  require_device();
  cuda::subnormal_probe(out);
}

std::vector<KernelAttributes> kernel_attributes() {
  require_device();
  std::vector<KernelAttributes> v;
  for (const KernelEntry& k : all_kernels()) {
    cudaFuncAttributes a;
    CUDA_CHECK(cudaFuncGetAttributes(&a, k.fn));
    v.push_back(KernelAttributes{k.name, k.threads, a.maxThreadsPerBlock, a.numRegs, int64_t(a.localSizeBytes),
                                 int64_t(a.sharedSizeBytes), int64_t(a.constSizeBytes), a.maxDynamicSharedSizeBytes});
  }
  return v;
}

namespace {
constexpr int kOptinThreads = 256, kOptinStatic = 256;  // 256 floats: 1 KiB of static shared memory

__global__ void smem_optin_kernel(int n_dyn, float* out) {
  __shared__ float st[kOptinStatic];
  extern __shared__ __align__(16) float dyn_smem[];
  for (int i = threadIdx.x; i < kOptinStatic; i += kOptinThreads) st[i] = 2.f;
  for (int i = threadIdx.x; i < n_dyn; i += kOptinThreads) dyn_smem[i] = 1.f;
  __syncthreads();
  if (threadIdx.x != 0) return;
  float s = 0.f;
  for (int i = 0; i < kOptinStatic; ++i) s += st[i];
  for (int i = 0; i < n_dyn; ++i) s += dyn_smem[i];
  out[0] = s;
}

constexpr int kMergeThreads = 256;

__global__ void merge_pattern_kernel(int variant, float* part, int32_t* counter, double* out) {
  const int b = blockIdx.x, t = threadIdx.x, nb = int(gridDim.x);
  part[b * kMergeThreads + t] = float(b * kMergeThreads + t);
  bool last;
  if (variant == 0) {
    last = last_block_arrives(counter, nb);
  } else {  // the two ways it goes wrong
    __shared__ bool l;
    if (variant == 2) __syncthreads();
    if (t == 0) {
      if (variant == 1) __threadfence();
      l = atomicAdd(counter, 1) == nb - 1;
    }
    __syncthreads();
    last = l;
    if (last) __threadfence();
  }
  if (!last || t != 0) return;
  const volatile float* p = part;
  double s = 0.0;
  for (int i = 0; i < nb * kMergeThreads; ++i) s += p[i];
  out[0] = s;
  *counter = 0;
}
}  // namespace

float shared_memory_optin(int dynamic_bytes) {
  require_device();
  GPTOSS_CHECK_ARG(dynamic_bytes >= 0 && dynamic_bytes % 4 == 0, "shared_memory_optin: bytes, a multiple of 4");
  allow_dynamic_smem(smem_optin_kernel, size_t(dynamic_bytes));
  Buf out(4);
  launch_kernel(smem_optin_kernel, 1, kOptinThreads, size_t(dynamic_bytes), 0, dynamic_bytes / 4, out.as<float>());
  float v = 0.f;
  out.to_host(&v, 4);
  return v;
}

double merge_pattern(int variant, int blocks) {
  GPTOSS_CHECK_ARG(variant >= 0 && variant <= 2 && blocks > 0 && blocks <= 4096, "merge_pattern: variant 0-2, 1-4096 blocks");
  Buf part(size_t(blocks) * kMergeThreads * 4), counter(4), out(8);
  CUDA_CHECK(cudaMemset(part.p, 0, part.bytes));
  CUDA_CHECK(cudaMemset(counter.p, 0, 4));
  CUDA_CHECK(cudaMemset(out.p, 0, 8));
  launch_kernel(merge_pattern_kernel, blocks, kMergeThreads, 0, 0, variant, part.as<float>(), counter.as<int32_t>(),
                out.as<double>());
  double v = 0.0;
  out.to_host(&v, 8);
  return v;
}

}  // namespace gptoss::cuda::test
