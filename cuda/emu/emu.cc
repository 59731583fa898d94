// cuda-emu runtime: device memory with guard pages, streams that run work at once (or record it
// while capturing a graph), and the fiber scheduler that runs a kernel's blocks. See
// cuda_runtime.h for what is and is not emulated.
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda_runtime.h"

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace gptoss_emu {

// ---- errors --------------------------------------------------------------------------------
namespace {
thread_local cudaError_t g_last = cudaSuccess;
thread_local cudaError_t g_msg_err = cudaSuccess;  // the error g_last_msg describes (outlives GetLastError)
thread_local std::string g_last_msg;

cudaError_t fail(cudaError_t e, const std::string& msg) {
  g_last = g_msg_err = e;
  g_last_msg = msg;
  if (std::getenv("GPTOSS_EMU_VERBOSE")) std::fprintf(stderr, "cuda-emu: %s\n", msg.c_str());
  return e;
}

std::mutex g_mu;  // one launch / one API call at a time (shared memory is static)

// ---- device memory -------------------------------------------------------------------------
struct Alloc {
  char* map;        // whole mapping, guard pages included
  size_t map_bytes;
  size_t bytes;
};
std::map<uintptr_t, Alloc> g_allocs;  // by user pointer
size_t g_used = 0;
const size_t kPage = size_t(sysconf(_SC_PAGESIZE));

size_t total_memory() {
  static const size_t t = [] {
    const char* e = std::getenv("GPTOSS_EMU_MEMORY_GIB");
    const double gib = e ? std::atof(e) : 4.0;
    return size_t(gib * double(1ull << 30));
  }();
  return t;
}

bool in_device(const void* p, size_t bytes) {
  const uintptr_t u = reinterpret_cast<uintptr_t>(p);
  auto it = g_allocs.upper_bound(u);
  if (it == g_allocs.begin()) return false;
  --it;
  return u >= it->first && u + bytes <= it->first + it->second.bytes;
}

// ---- streams, events, graphs -------------------------------------------------------------
using Op = std::function<void()>;
}  // namespace

struct Stream {
  bool capturing = false;
  Graph* graph = nullptr;
};
struct Event {
  std::chrono::steady_clock::time_point t;
};
struct Graph {
  std::vector<Op> ops;
};
struct GraphExec {
  std::vector<Op> ops;
};

namespace {
Stream g_default_stream;
Stream* S(cudaStream_t st) { return st ? st : &g_default_stream; }
bool any_capturing = false;

// Runs `op` now, or appends it to the graph the stream is capturing.
void submit(cudaStream_t st, Op op) {
  Stream* s = S(st);
  if (s->capturing) s->graph->ops.push_back(std::move(op));
  else op();
}

cudaError_t capture_forbidden(const char* what) {
  if (!any_capturing) return cudaSuccess;
  return fail(cudaErrorStreamCaptureUnsupported, std::string(what) + " while a stream is capturing a graph");
}

// ---- fibers --------------------------------------------------------------------------------
constexpr size_t kStack = 256 * 1024;
constexpr int kMaxThreads = 1024;

struct Barrier {
  int count = 0;     // arrived
  int live = 0;      // threads that have not exited
  uint64_t gen = 0;  // bumped on release
};

struct AsyncCopy {  // one __pipeline_memcpy_async, not yet landed
  char* dst;
  const char* src;
  size_t size, zfill;
};

struct Fiber {
#if defined(__x86_64__)
  void* sp = nullptr;
#else
  ucontext_t ctx;
#endif
  char* stack = nullptr;
  uint3 tid{0, 0, 0};
  int lane = 0, warp = 0;
  bool done = false;
  Barrier* wait = nullptr;
  uint64_t wait_gen = 0;
  unsigned shfl_count = 0;
  bool dep_waited = false;                          // called cudaGridDependencySynchronize
  std::vector<AsyncCopy> async_open;                // issued since the last commit
  std::deque<std::vector<AsyncCopy>> async_groups;  // committed, oldest first
};

struct BlockRun {
  const Body* body = nullptr;
  uint3 bid{0, 0, 0};
  dim3 bdim, gdim;
  char* smem = nullptr;
  int n = 0;
  Barrier block_bar;
  std::vector<Barrier> warp_bar;
  std::vector<uint64_t> slots;  // [2][warps][32][kGatherWords]
  unsigned launch = 0;  // kernels executed so far
  const char* fault = nullptr;  // a thread's fatal error (the block is abandoned)
};

Fiber g_fibers[kMaxThreads];
Fiber* g_cur = nullptr;
BlockRun g_run;
#if defined(__x86_64__)
void* g_sched_sp = nullptr;
#else
ucontext_t g_sched_ctx;
#endif
// Dynamic shared memory, 128-byte aligned (an `extern __shared__ __align__(128)` array).
struct SmemBuf {
  char* p = nullptr;
  size_t n = 0;
  void reserve(size_t bytes) {
    if (bytes <= n) return;
    std::free(p);
    n = (bytes + 127) / 128 * 128;
    p = static_cast<char*>(std::aligned_alloc(128, n));
    if (!p) throw std::bad_alloc();
  }
  char* data() { return p; }
} g_smem;

void ensure_stacks(int n) {
  for (int i = 0; i < n; ++i) {
    if (g_fibers[i].stack) continue;
    void* m = mmap(nullptr, kStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) throw std::bad_alloc();
    mprotect(m, kPage, PROT_NONE);  // stack overflow faults instead of corrupting a neighbour
    g_fibers[i].stack = static_cast<char*>(m);
  }
}
}  // namespace
}  // namespace gptoss_emu

#if defined(__x86_64__)
// void gptoss_emu_switch(void** save_sp, void* load_sp): saves the callee-saved registers on the
// current stack, swaps stacks, restores the other context's registers and returns into it.
asm(R"(
.text
.globl gptoss_emu_switch
.type gptoss_emu_switch,@function
gptoss_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size gptoss_emu_switch,.-gptoss_emu_switch
.globl gptoss_emu_entry
.type gptoss_emu_entry,@function
gptoss_emu_entry:
  movq %r12, %rdi
  callq *%r13
  ud2
.size gptoss_emu_entry,.-gptoss_emu_entry
)");
extern "C" void gptoss_emu_switch(void** save_sp, void* load_sp);
extern "C" void gptoss_emu_entry();
#endif

namespace gptoss_emu {
namespace {

void to_scheduler() {
  Fiber* f = g_cur;
#if defined(__x86_64__)
  gptoss_emu_switch(&f->sp, g_sched_sp);
#else
  swapcontext(&f->ctx, &g_sched_ctx);
#endif
}

void release_if_complete(Barrier& b) {
  if (b.count > 0 && b.count >= b.live) {
    b.count = 0;
    ++b.gen;
  }
}

void arrive(Barrier& b) {
  ++b.count;
  if (b.count >= b.live) {
    b.count = 0;
    ++b.gen;
    return;
  }
  g_cur->wait = &b;
  g_cur->wait_gen = b.gen;
  to_scheduler();
}

void fiber_main(Fiber* f) {
  g_run.body->run();
  f->done = true;
  --g_run.block_bar.live;
  --g_run.warp_bar[size_t(f->warp)].live;
  release_if_complete(g_run.block_bar);
  release_if_complete(g_run.warp_bar[size_t(f->warp)]);
  to_scheduler();
  std::abort();  // a finished fiber is never resumed
}

#if !defined(__x86_64__)
void fiber_trampoline(unsigned hi, unsigned lo) {
  fiber_main(reinterpret_cast<Fiber*>((uintptr_t(hi) << 32) | uintptr_t(lo)));
}
#endif

void start_fiber(Fiber* f) {
#if defined(__x86_64__)
  uintptr_t top = (reinterpret_cast<uintptr_t>(f->stack) + kStack) & ~uintptr_t(15);
  uint64_t* sp = reinterpret_cast<uint64_t*>(top);  // after the switch's ret: rsp == top, 16-aligned
  *--sp = reinterpret_cast<uint64_t>(&gptoss_emu_entry);    // return address of the switch
  *--sp = 0;                                                 // rbp
  *--sp = 0;                                                 // rbx
  *--sp = reinterpret_cast<uint64_t>(f);                     // r12: argument
  *--sp = reinterpret_cast<uint64_t>(&fiber_main);           // r13: function
  *--sp = 0;                                                 // r14
  *--sp = 0;                                                 // r15
  uint32_t csr[2];
  asm volatile("stmxcsr %0" : "=m"(csr[0]));
  asm volatile("fnstcw %0" : "=m"(csr[1]));
  *--sp = uint64_t(csr[0]) | (uint64_t(csr[1] & 0xffff) << 32);
  f->sp = sp;
#else
  getcontext(&f->ctx);
  f->ctx.uc_stack.ss_sp = f->stack + kPage;
  f->ctx.uc_stack.ss_size = kStack - kPage;
  f->ctx.uc_link = nullptr;
  const uintptr_t u = reinterpret_cast<uintptr_t>(f);
  makecontext(&f->ctx, reinterpret_cast<void (*)()>(&fiber_trampoline), 2, unsigned(u >> 32), unsigned(u));
#endif
}

void resume(Fiber* f) {
  g_cur = f;
#if defined(__x86_64__)
  gptoss_emu_switch(&g_sched_sp, f->sp);
#else
  swapcontext(&g_sched_ctx, &f->ctx);
#endif
  g_cur = nullptr;
}

// Runs one block to completion; false on a barrier deadlock.
bool run_block() {
  const int n = g_run.n;
  const int warps = (n + 31) / 32;
  g_run.block_bar = Barrier{0, n, 0};
  g_run.warp_bar.assign(size_t(warps), Barrier{});
  for (int w = 0; w < warps; ++w) g_run.warp_bar[size_t(w)].live = std::min(32, n - 32 * w);
  g_run.slots.assign(size_t(2 * warps * 32 * kGatherWords), 0);
  const dim3 bd = g_run.bdim;
  for (int i = 0; i < n; ++i) {
    Fiber& f = g_fibers[i];
    f.tid = uint3{unsigned(i) % bd.x, (unsigned(i) / bd.x) % bd.y, unsigned(i) / (bd.x * bd.y)};
    f.lane = i & 31;
    f.warp = i >> 5;
    f.done = false;
    f.wait = nullptr;
    f.shfl_count = 0;
    f.async_open.clear();
    f.async_groups.clear();
    f.dep_waited = false;
    start_fiber(&f);
  }
  // Threads run up to their next barrier one after the other; the order flips from block to
  // block, so code that reads shared memory another thread writes without a barrier in between
  // sees the stale (or poisoned) value in one order or the other.
  const bool reverse = ((g_run.bid.x + g_run.bid.y + g_run.bid.z + g_run.launch) & 1u) != 0;
  int remaining = n;
  while (remaining > 0) {
    bool progressed = false;
    for (int k = 0; k < n; ++k) {
      Fiber& f = g_fibers[reverse ? n - 1 - k : k];
      if (f.done) continue;
      if (f.wait && f.wait->gen == f.wait_gen) continue;
      f.wait = nullptr;
      resume(&f);
      if (g_run.fault) return false;
      progressed = true;
      if (f.done) --remaining;
    }
    if (!progressed) return false;
  }
  return true;
}

// ---- launch --------------------------------------------------------------------------------
std::map<const void*, int> g_max_dyn_smem;
constexpr size_t kDefaultSmem = 48 * 1024, kOptinSmem = 227 * 1024;

std::string describe(const LaunchConfig& c) {
  char b[160];
  std::snprintf(b, sizeof b, "kernel %p grid (%u,%u,%u) block (%u,%u,%u) smem %zu", c.fn, c.grid.x, c.grid.y,
                c.grid.z, c.block.x, c.block.y, c.block.z, c.smem);
  return b;
}

// A fault inside a kernel (a guard page: out of bounds; SIGILL: a misaligned vector access)
// says which launch it was before the process dies, as the device would report the kernel.
const LaunchConfig* g_running = nullptr;

void on_fault(int sig) {
  char msg[320];
  const char* what = sig == SIGILL ? "misaligned vector access (trap)" : "out-of-bounds access (guard page)";
  int n = 0;
  if (g_running) {
    const LaunchConfig& c = *g_running;
    n = std::snprintf(msg, sizeof msg, "cuda-emu: %s in kernel %p grid (%u,%u,%u) block (%u,%u,%u), block (%u,%u,%u) "
                      "thread %u\n", what, c.fn, c.grid.x, c.grid.y, c.grid.z, c.block.x, c.block.y, c.block.z,
                      g_run.bid.x, g_run.bid.y, g_run.bid.z, g_cur ? g_cur->tid.x : 0u);
  } else {
    n = std::snprintf(msg, sizeof msg, "cuda-emu: %s outside a kernel\n", what);
  }
  if (n > 0) (void)!write(2, msg, size_t(std::min<int>(n, int(sizeof msg) - 1)));
  signal(sig, SIG_DFL);
  raise(sig);
}

void install_fault_handlers() {
  static bool done = false;
  if (done) return;
  done = true;
  signal(SIGILL, on_fault);
  // SIGSEGV is left alone when something else (Python's faulthandler, a debugger) handles it.
  struct sigaction old {};
  sigaction(SIGSEGV, nullptr, &old);
  if (old.sa_handler == SIG_DFL) signal(SIGSEGV, on_fault);
}

void execute(const LaunchConfig& c, const std::shared_ptr<Body>& body) {
  install_fault_handlers();
  g_running = &c;
  struct Done {
    ~Done() { g_running = nullptr; }
  } done;
  const int n = int(c.block.x * c.block.y * c.block.z);
  ensure_stacks(n);
  g_smem.reserve(c.smem + 64);
  g_run.body = body.get();
  g_run.bdim = c.block;
  g_run.gdim = c.grid;
  ::blockDim = c.block;
  ::gridDim = c.grid;
  g_run.n = n;
  ++g_run.launch;
  // Blocks run in an order shuffled per launch (the device promises none), so code that counts
  // on block 0 running first, or on the last block being the highest, is caught.
  const uint64_t nblocks = uint64_t(c.grid.x) * c.grid.y * c.grid.z;
  std::vector<uint64_t> order(nblocks);
  for (uint64_t i = 0; i < nblocks; ++i) order[i] = i;
  uint64_t rs = 0x9e3779b97f4a7c15ull * (g_run.launch + 1);
  for (uint64_t i = nblocks; i > 1; --i) {
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    std::swap(order[i - 1], order[rs % i]);
  }
  for (uint64_t b : order) {
    const unsigned x = unsigned(b % c.grid.x), y = unsigned(b / c.grid.x % c.grid.y),
                   z = unsigned(b / (uint64_t(c.grid.x) * c.grid.y));
    g_run.bid = uint3{x, y, z};
    // Uninitialised shared memory is garbage on the device: poison it so code that reads it
    // before writing shows up as NaNs / wild values instead of lucky zeros.
    memset(g_smem.data(), 0xff, c.smem);
    g_run.fault = nullptr;
    if (!run_block()) {
      if (g_run.fault)
        fail(cudaErrorMisalignedAddress, std::string(g_run.fault) + " in " + describe(c));
      else
        fail(cudaErrorLaunchFailure, "deadlock: threads wait at a barrier (__syncthreads or a full-warp shuffle) "
                                     "that other live threads of the block never reach, in " + describe(c));
      return;
    }
    if (c.pdl)
      for (int i = 0; i < n; ++i)
        if (!g_fibers[i].dep_waited) {
          fail(cudaErrorLaunchFailure,
               "thread " + std::to_string(i) + " of " + describe(c) +
                   " never called cudaGridDependencySynchronize, but the kernel was launched with a "
                   "programmatic dependency: it may read its predecessor's output before it is written");
          return;
        }
  }
}
}  // namespace

const uint3& thread_idx() { return g_cur->tid; }
const uint3& block_idx() { return g_run.bid; }
void* dynamic_smem() { return g_smem.data(); }
int lane_id() { return g_cur->lane; }
void syncthreads() { arrive(g_run.block_bar); }
void grid_dependency_wait() { g_cur->dep_waited = true; }  // blocks run after their predecessors here

uint64_t warp_exchange(uint64_t bits, int src) {
  uint64_t all[32];
  warp_gather(bits, all);
  const int lanes = std::min(32, g_run.n - 32 * g_cur->warp);
  return (src >= 0 && src < lanes) ? all[src] : bits;
}

void warp_gather(uint64_t bits, uint64_t* out) { warp_gather_n(&bits, 1, out); }

// One warp barrier for up to kGatherWords words a lane (the mma emulation gathers three).
void warp_gather_n(const uint64_t* words, int n, uint64_t* out) {
  Fiber* f = g_cur;
  Barrier& b = g_run.warp_bar[size_t(f->warp)];
  const size_t par = f->shfl_count++ & 1u;
  uint64_t* slot = g_run.slots.data() + (par * g_run.warp_bar.size() + size_t(f->warp)) * 32 * kGatherWords;
  for (int w = 0; w < n; ++w) slot[size_t(f->lane) * kGatherWords + size_t(w)] = words[w];
  arrive(b);
  const int lanes = std::min(32, g_run.n - 32 * f->warp);
  for (int i = 0; i < 32; ++i)
    for (int w = 0; w < n; ++w) out[i * n + w] = i < lanes ? slot[size_t(i) * kGatherWords + size_t(w)] : 0;
}

void device_fault(const char* what) {
  // The device faults with a misaligned address: the launch fails, this block is abandoned.
  g_run.fault = what;
  to_scheduler();
  std::abort();  // an abandoned fiber is never resumed
}

bool is_device_range(const void* p, size_t bytes) { return in_device(p, bytes); }

std::atomic<uint64_t> g_prefetches{0};

void check_prefetch(const void* p, size_t bytes) {
  // The device would not fault, but a range outside the allocation prefetches the wrong bytes.
  if (bytes == 0 || !in_device(p, bytes)) device_fault("prefetch_l2: the range is not inside one device allocation");
  g_prefetches.fetch_add(1, std::memory_order_relaxed);
}

uint64_t prefetch_count() { return g_prefetches.load(std::memory_order_relaxed); }

// ---- cp.async (cuda_pipeline.h) ------------------------------------------------------------
void pipeline_copy(void* dst, const void* src, size_t size, size_t zfill) {
  if (size != 4 && size != 8 && size != 16) device_fault("__pipeline_memcpy_async: size must be 4, 8 or 16");
  if (zfill > size) device_fault("__pipeline_memcpy_async: zfill larger than the size");
  if ((reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src)) & (size - 1))
    device_fault("__pipeline_memcpy_async: source or destination not aligned to the copy size");
  if (zfill < size && !in_device(src, size - zfill))
    device_fault("__pipeline_memcpy_async: the source is not device memory");
  if (in_device(dst, size)) device_fault("__pipeline_memcpy_async: the destination is not shared memory");
  g_cur->async_open.push_back(AsyncCopy{static_cast<char*>(dst), static_cast<const char*>(src), size, zfill});
}

void pipeline_commit() {
  Fiber* f = g_cur;
  f->async_groups.push_back(std::move(f->async_open));
  f->async_open.clear();
}

void pipeline_wait_prior(size_t prior) {
  Fiber* f = g_cur;
  while (f->async_groups.size() > prior) {
    for (const AsyncCopy& c : f->async_groups.front()) {
      std::memcpy(c.dst, c.src, c.size - c.zfill);
      std::memset(c.dst + (c.size - c.zfill), 0, c.zfill);
    }
    f->async_groups.pop_front();
  }
}

void bad_kernel_argument(const LaunchConfig& c, int index) {
  fail(cudaErrorIllegalAddress, "argument " + std::to_string(index) + " of " + describe(c) +
                                    " is a pointer outside device memory");
}

cudaError_t func_set_max_dynamic_smem(const void* fn, int bytes) {
  if (bytes < 0 || size_t(bytes) > kOptinSmem) return fail(cudaErrorInvalidValue, "dynamic shared memory over 227 KiB");
  std::lock_guard<std::mutex> g(g_mu);
  g_max_dyn_smem[fn] = bytes;
  return cudaSuccess;
}

void launch(const LaunchConfig& c, Body* raw) {
  std::shared_ptr<Body> body(raw);
  std::lock_guard<std::mutex> g(g_mu);
  const uint64_t threads = uint64_t(c.block.x) * c.block.y * c.block.z;
  if (threads == 0 || threads > 1024 || c.block.z > 64 || c.grid.x == 0 || c.grid.y == 0 || c.grid.z == 0 ||
      c.grid.x > 0x7fffffffu || c.grid.y > 65535 || c.grid.z > 65535) {
    fail(cudaErrorInvalidConfiguration, "invalid launch configuration: " + describe(c));
    return;
  }
  size_t smem_cap = kDefaultSmem;
  auto it = g_max_dyn_smem.find(c.fn);
  if (it != g_max_dyn_smem.end()) smem_cap = size_t(it->second);
  if (c.smem > smem_cap) {
    fail(cudaErrorInvalidValue, "dynamic shared memory " + std::to_string(c.smem) + " over the kernel's limit " +
                                    std::to_string(smem_cap) + " (cudaFuncSetAttribute raises it): " + describe(c));
    return;
  }
  submit(c.stream, [c, body] { execute(c, body); });
}

}  // namespace gptoss_emu

// ---- runtime API ---------------------------------------------------------------------------
using namespace gptoss_emu;

dim3 blockDim, gridDim;

const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorMisalignedAddress: return "cudaErrorMisalignedAddress";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated: return "cudaErrorStreamCaptureInvalidated";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    default: return "cudaError(emu)";
  }
}
const char* cudaGetErrorString(cudaError_t e) {
  if (e != cudaSuccess && e == g_msg_err && !g_last_msg.empty()) return g_last_msg.c_str();
  return cudaGetErrorName(e);
}
cudaError_t cudaGetLastError() {
  const cudaError_t e = g_last;
  g_last = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return g_last; }

cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : fail(cudaErrorInvalidDevice, "no such device"); }
cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d) {
  if (d != 0) return fail(cudaErrorInvalidDevice, "no such device");
  memset(p, 0, sizeof *p);
  std::snprintf(p->name, sizeof p->name, "cuda-emu (CPU emulation)");
  p->totalGlobalMem = total_memory();
  const char* sm = std::getenv("GPTOSS_EMU_SM");  // e.g. "75": pretend to be an older GPU
  const int cc = sm ? std::atoi(sm) : 90;
  p->major = cc / 10;
  p->minor = cc % 10;
  const char* sms = std::getenv("GPTOSS_EMU_SMS");
  p->multiProcessorCount = sms ? std::atoi(sms) : 132;
  p->sharedMemPerBlockOptin = kOptinSmem;
  p->l2CacheSize = 60 << 20;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int d) {
  cudaDeviceProp p;
  if (cudaGetDeviceProperties(&p, d) != cudaSuccess) return cudaErrorInvalidDevice;
  if (a == cudaDevAttrMultiProcessorCount) *v = p.multiProcessorCount;
  else if (a == cudaDevAttrMaxSharedMemoryPerBlockOptin) *v = int(p.sharedMemPerBlockOptin);
  else return fail(cudaErrorInvalidValue, "attribute not emulated");
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize() {
  std::lock_guard<std::mutex> g(g_mu);
  return capture_forbidden("cudaDeviceSynchronize");
}

cudaError_t cudaMalloc(void** out, size_t bytes) {
  std::lock_guard<std::mutex> g(g_mu);
  *out = nullptr;
  if (cudaError_t e = capture_forbidden("cudaMalloc")) return e;
  const size_t rounded = (std::max<size_t>(bytes, 1) + 255) & ~size_t(255);
  if (g_used + rounded > total_memory())
    return fail(cudaErrorMemoryAllocation, "out of memory (emulated device of " + std::to_string(total_memory()) +
                                               " bytes; GPTOSS_EMU_MEMORY_GIB sets it)");
  // [guard page][pages ... data][guard page]: the data ends at the upper guard (up to the
  // 256-byte rounding), so an overrun faults.
  const size_t data_pages = (rounded + kPage - 1) / kPage;
  const size_t map_bytes = (data_pages + 2) * kPage;
  void* m = mmap(nullptr, map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) return fail(cudaErrorMemoryAllocation, "out of host memory");
  char* base = static_cast<char*>(m);
  mprotect(base, kPage, PROT_NONE);
  mprotect(base + map_bytes - kPage, kPage, PROT_NONE);
  char* user = base + map_bytes - kPage - rounded;
  memset(user, 0xa5, std::min<size_t>(rounded, 1 << 20));  // cudaMalloc memory is not zeroed (small part poisoned)
  g_allocs[reinterpret_cast<uintptr_t>(user)] = Alloc{base, map_bytes, bytes};
  g_used += rounded;
  *out = user;
  return cudaSuccess;
}
cudaError_t cudaFree(void* p) {
  if (!p) return cudaSuccess;
  std::lock_guard<std::mutex> g(g_mu);
  if (cudaError_t e = capture_forbidden("cudaFree")) return e;
  auto it = g_allocs.find(reinterpret_cast<uintptr_t>(p));
  if (it == g_allocs.end()) return fail(cudaErrorInvalidValue, "cudaFree of a pointer that cudaMalloc did not return");
  g_used -= (std::max<size_t>(it->second.bytes, 1) + 255) & ~size_t(255);
  munmap(it->second.map, it->second.map_bytes);
  g_allocs.erase(it);
  return cudaSuccess;
}
cudaError_t cudaMallocHost(void** p, size_t bytes) {
  *p = std::malloc(std::max<size_t>(bytes, 1));
  return *p ? cudaSuccess : fail(cudaErrorMemoryAllocation, "out of host memory");
}
cudaError_t cudaFreeHost(void* p) {
  std::free(p);
  return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t* fr, size_t* tot) {
  std::lock_guard<std::mutex> g(g_mu);
  *tot = total_memory();
  *fr = *tot > g_used ? *tot - g_used : 0;
  return cudaSuccess;
}

namespace {
cudaError_t check_copy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  const bool dd = in_device(dst, bytes), sd = in_device(src, bytes);
  bool ok = true;
  switch (kind) {
    case cudaMemcpyHostToDevice: ok = dd && !in_device(src, 1); break;
    case cudaMemcpyDeviceToHost: ok = sd && !in_device(dst, 1); break;
    case cudaMemcpyDeviceToDevice: ok = dd && sd; break;
    case cudaMemcpyHostToHost: ok = !in_device(dst, 1) && !in_device(src, 1); break;
    default: ok = true;
  }
  if (!ok)
    return fail(cudaErrorInvalidValue, "cudaMemcpy kind " + std::to_string(int(kind)) + " of " +
                                           std::to_string(bytes) + " bytes: a pointer is not (wholly) where the kind says");
  return cudaSuccess;
}
}  // namespace

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  std::lock_guard<std::mutex> g(g_mu);
  if (cudaError_t e = capture_forbidden("cudaMemcpy")) return e;
  if (bytes == 0) return cudaSuccess;
  if (cudaError_t e = check_copy(dst, src, bytes, kind)) return e;
  memmove(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t st) {
  std::lock_guard<std::mutex> g(g_mu);
  if (bytes == 0) return cudaSuccess;
  if (cudaError_t e = check_copy(dst, src, bytes, kind)) return e;
  submit(st, [=] { memmove(dst, src, bytes); });
  return cudaSuccess;
}
cudaError_t cudaMemset(void* p, int v, size_t bytes) {
  std::lock_guard<std::mutex> g(g_mu);
  if (cudaError_t e = capture_forbidden("cudaMemset")) return e;
  if (bytes && !in_device(p, bytes)) return fail(cudaErrorInvalidValue, "cudaMemset outside device memory");
  memset(p, v, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* p, int v, size_t bytes, cudaStream_t st) {
  std::lock_guard<std::mutex> g(g_mu);
  if (bytes && !in_device(p, bytes)) return fail(cudaErrorInvalidValue, "cudaMemsetAsync outside device memory");
  submit(st, [=] { memset(p, v, bytes); });
  return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t* st) {
  *st = new Stream;
  return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* st, unsigned) { return cudaStreamCreate(st); }
cudaError_t cudaStreamDestroy(cudaStream_t st) {
  delete st;
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t st) {
  std::lock_guard<std::mutex> g(g_mu);
  if (S(st)->capturing)
    return fail(cudaErrorStreamCaptureUnsupported, "cudaStreamSynchronize on a capturing stream");
  return cudaSuccess;
}
cudaError_t cudaStreamBeginCapture(cudaStream_t st, cudaStreamCaptureMode) {
  std::lock_guard<std::mutex> g(g_mu);
  Stream* s = S(st);
  if (!st) return fail(cudaErrorStreamCaptureUnsupported, "the legacy default stream cannot be captured");
  if (s->capturing) return fail(cudaErrorInvalidValue, "stream already capturing");
  s->capturing = true;
  s->graph = new Graph;
  any_capturing = true;
  return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t st, cudaGraph_t* out) {
  std::lock_guard<std::mutex> g(g_mu);
  Stream* s = S(st);
  if (!s->capturing) return fail(cudaErrorInvalidValue, "stream is not capturing");
  s->capturing = false;
  any_capturing = false;
  *out = s->graph;
  s->graph = nullptr;
  return cudaSuccess;
}
cudaError_t cudaStreamIsCapturing(cudaStream_t st, cudaStreamCaptureStatus* out) {
  *out = S(st)->capturing ? cudaStreamCaptureStatusActive : cudaStreamCaptureStatusNone;
  return cudaSuccess;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* e, cudaGraph_t gr, unsigned long long) {
  if (!gr) return fail(cudaErrorInvalidValue, "null graph");
  *e = new GraphExec{gr->ops};
  return cudaSuccess;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t st) {
  if (!e) return fail(cudaErrorInvalidValue, "null graph exec");
  std::lock_guard<std::mutex> g(g_mu);
  for (const Op& op : e->ops) submit(st, op);
  return cudaSuccess;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e) {
  delete e;
  return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t gr) {
  delete gr;
  return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t* e) {
  *e = new Event;
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  delete e;
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t st) {
  std::lock_guard<std::mutex> g(g_mu);
  submit(st, [e] { e->t = std::chrono::steady_clock::now(); });
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) {
  *ms = std::chrono::duration<float, std::milli>(b->t - a->t).count();
  return cudaSuccess;
}
