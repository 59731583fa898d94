// cuda-emu blocks: every CUDA thread of a block is a fiber (its own stack, a hand-written x86-64
// context switch); a block's fibers run on one OS thread until each has finished or waits at a
// barrier. The blocks of a launch start in an order shuffled per launch and are interleaved: a
// block whose thread does an atomic on global memory is held right there while other blocks run,
// as long as fewer than GPTOSS_EMU_INFLIGHT (default 4) blocks are in flight and blocks are left
// to start; held blocks resume, last held first, once every block has started. Each block in
// flight has its own fibers, static and dynamic shared memory and private pages (emu_memory.cc).
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "emu_internal.h"

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace gptoss_emu {
namespace {

constexpr size_t kStack = 256 * 1024;
constexpr int kMaxThreads = 1024;
constexpr size_t kSharedArena = 227 * 1024;  // a block's static shared memory: at most the opt-in limit
constexpr size_t kDefaultSmem = 48 * 1024, kOptinSmem = 227 * 1024;

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

// One block in flight (a slot: its fibers and memory are reused by later blocks).
struct BlockRun {
  std::unique_ptr<Fiber[]> fibers{new Fiber[kMaxThreads]};
  uint3 bid{0, 0, 0};
  int n = 0;
  Barrier block_bar;
  std::vector<Barrier> warp_bar;
  std::vector<uint64_t> slots;  // [2][warps][32][kGatherWords]
  const char* fault = nullptr;  // a thread's fatal error (the block is abandoned)
  // dynamic shared memory, 128-byte aligned (an `extern __shared__ __align__(128)` array)
  char* smem = nullptr;
  size_t smem_cap = 0;
  // static shared memory: the arena, and the declarations (tag, offset) this block has made
  char* arena = nullptr;
  size_t arena_used = 0;
  std::vector<std::pair<const void*, size_t>> tags;
  PrivatePages priv;
  // the scheduler's place: threads left, the next fiber of the round, the thread order
  int remaining = 0, k = 0;
  bool progressed = false, reverse = false;
  bool hold = false;  // a thread asked to be held (after an atomic on global memory)

  BlockRun() {
    arena = static_cast<char*>(std::aligned_alloc(128, kSharedArena));
    if (!arena) throw std::bad_alloc();
    priv.pages.reserve(4096);
  }
  ~BlockRun() {
    std::free(arena);
    std::free(smem);
  }
  void reserve_smem(size_t bytes) {
    if (bytes <= smem_cap) return;
    std::free(smem);
    smem_cap = (bytes + 127) / 128 * 128;
    smem = static_cast<char*>(std::aligned_alloc(128, smem_cap));
    if (!smem) throw std::bad_alloc();
  }
};

std::vector<std::unique_ptr<BlockRun>> g_slots;
const Body* g_body = nullptr;
BlockRun* g_run = nullptr;
Fiber* g_cur = nullptr;
const LaunchConfig* g_launch = nullptr;  // the launch that runs (fault messages)
unsigned g_launches = 0;                 // kernels executed so far
bool g_may_hold = false;                 // the running block may be held at its next atomic
std::map<const void*, int> g_max_dyn_smem;
std::map<const void*, size_t> g_static_smem;  // the most static shared memory a kernel's blocks declared
#if defined(__x86_64__)
void* g_sched_sp = nullptr;
#else
ucontext_t g_sched_ctx;
#endif

int blocks_in_flight() {
  static const int n = [] {
    const char* e = std::getenv("GPTOSS_EMU_INFLIGHT");
    return e ? std::max(1, std::atoi(e)) : 4;
  }();
  return n;
}

void ensure_stacks(BlockRun& b, int n) {
  for (int i = 0; i < n; ++i) {
    Fiber& f = b.fibers[i];
    if (f.stack) continue;
    void* m = mmap(nullptr, kStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) throw std::bad_alloc();
    mprotect(m, kPage, PROT_NONE);  // stack overflow faults instead of corrupting a neighbour
    f.stack = static_cast<char*>(m);
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
  g_body->run();
  f->done = true;
  BlockRun& b = *g_run;
  --b.block_bar.live;
  --b.warp_bar[size_t(f->warp)].live;
  release_if_complete(b.block_bar);
  release_if_complete(b.warp_bar[size_t(f->warp)]);
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

void start_block(BlockRun& b, uint3 bid, const LaunchConfig& c) {
  const int n = int(c.block.x * c.block.y * c.block.z);
  const int warps = (n + 31) / 32;
  ensure_stacks(b, n);
  b.bid = bid;
  b.n = n;
  b.block_bar = Barrier{0, n, 0};
  b.warp_bar.assign(size_t(warps), Barrier{});
  for (int w = 0; w < warps; ++w) b.warp_bar[size_t(w)].live = std::min(32, n - 32 * w);
  b.slots.assign(size_t(2 * warps * 32 * kGatherWords), 0);
  b.fault = nullptr;
  b.reserve_smem(c.smem + 64);
  // Uninitialised shared memory is garbage on the device: poison it so code that reads it
  // before writing shows up as NaNs / wild values instead of lucky zeros.
  memset(b.smem, 0xff, c.smem);
  b.arena_used = 0;
  b.tags.clear();
  b.priv.pages.clear();
  const dim3 bd = c.block;
  for (int i = 0; i < n; ++i) {
    Fiber& f = b.fibers[i];
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
  // sees the stale (or poisoned) value in one order or the other, and a thread that runs ahead
  // (thread 0 first) shows stores the others have not made yet.
  b.reverse = ((bid.x + bid.y + bid.z + g_launches) & 1u) != 0;
  b.remaining = n;
  b.k = 0;
  b.progressed = false;
  b.hold = false;
}

enum class RunResult { kDone, kHeld, kFault, kDeadlock };

// Runs the block until it finishes, is held (an atomic on global memory) or fails.
RunResult run_block(BlockRun& b) {
  const int n = b.n;
  while (b.remaining > 0) {
    for (; b.k < n; ++b.k) {
      Fiber& f = b.fibers[b.reverse ? n - 1 - b.k : b.k];
      if (f.done) continue;
      if (f.wait && f.wait->gen == f.wait_gen) continue;
      f.wait = nullptr;
      resume(&f);
      if (b.fault) return RunResult::kFault;
      b.progressed = true;
      if (f.done) --b.remaining;
      if (b.hold) {  // resumes with this thread
        b.hold = false;
        return RunResult::kHeld;
      }
    }
    if (!b.progressed) return RunResult::kDeadlock;
    b.progressed = false;
    b.k = 0;
  }
  return RunResult::kDone;
}

}  // namespace

std::string describe_launch(const LaunchConfig& c) {
  char b[160];
  std::snprintf(b, sizeof b, "kernel %p grid (%u,%u,%u) block (%u,%u,%u) smem %zu", c.fn, c.grid.x, c.grid.y,
                c.grid.z, c.block.x, c.block.y, c.block.z, c.smem);
  return b;
}

namespace {
// A misaligned vector access (SIGILL: the alignment sanitizer's trap) says which launch it was
// before the process dies, as the device would report the kernel. (SIGSEGV: emu_memory.cc.)
void on_sigill(int sig) {
  const std::string m = "cuda-emu: misaligned vector access (trap) " + running_kernel_description() + "\n";
  (void)!write(2, m.data(), m.size());
  signal(sig, SIG_DFL);
  raise(sig);
}

// The shared memory the launch may use: static (as its blocks declare it) and dynamic together
// within 48 KiB, or the dynamic part within the kernel's raised limit and the whole within 227 KiB.
bool shared_memory_fits(const LaunchConfig& c, size_t static_bytes, std::string& why) {
  auto it = g_max_dyn_smem.find(c.fn);
  if (it == g_max_dyn_smem.end()) {
    if (static_bytes + c.smem <= kDefaultSmem) return true;
    why = "static (" + std::to_string(static_bytes) + " bytes) and dynamic (" + std::to_string(c.smem) +
          ") shared memory over the 48 KiB a kernel gets without raising its dynamic limit "
          "(cudaFuncSetAttribute, cudaFuncAttributeMaxDynamicSharedMemorySize)";
    return false;
  }
  if (static_bytes + size_t(it->second) <= kOptinSmem) return true;
  why = "static (" + std::to_string(static_bytes) + " bytes) shared memory and the raised dynamic limit (" +
        std::to_string(it->second) + ") over the device's 227 KiB";
  return false;
}
}  // namespace

std::string running_kernel_description() {
  if (!g_launch) return "outside a kernel";
  char b[96];
  std::snprintf(b, sizeof b, ", block (%u,%u,%u) thread %u", g_run ? g_run->bid.x : 0u, g_run ? g_run->bid.y : 0u,
                g_run ? g_run->bid.z : 0u, g_cur ? g_cur->tid.x : 0u);
  return "in " + describe_launch(*g_launch) + b;
}

void execute(const LaunchConfig& c, Body* body) {
  static bool sigill = false;
  if (!sigill) {
    sigill = true;
    signal(SIGILL, on_sigill);
  }
  launch_begins();
  g_launch = &c;
  g_body = body;
  ::blockDim = c.block;
  ::gridDim = c.grid;
  ++g_launches;
  const size_t W = size_t(blocks_in_flight());
  while (g_slots.size() < W) g_slots.push_back(std::make_unique<BlockRun>());
  // Blocks start in an order shuffled per launch (the device promises none), so code that counts
  // on block 0 running first, or on the last block being the highest, is caught.
  const uint64_t nblocks = uint64_t(c.grid.x) * c.grid.y * c.grid.z;
  std::vector<uint64_t> order(nblocks);
  for (uint64_t i = 0; i < nblocks; ++i) order[i] = i;
  uint64_t rs = 0x9e3779b97f4a7c15ull * (g_launches + 1);
  for (uint64_t i = nblocks; i > 1; --i) {
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    std::swap(order[i - 1], order[rs % i]);
  }
  std::vector<BlockRun*> free_slots, held;
  for (size_t i = 0; i < W; ++i) free_slots.push_back(g_slots[W - 1 - i].get());
  uint64_t next = 0;
  size_t static_max = 0;
  std::string error;
  cudaError_t code = cudaSuccess;
  BlockRun* b = nullptr;
  while (code == cudaSuccess) {
    if (next < nblocks && !free_slots.empty()) {
      b = free_slots.back();
      free_slots.pop_back();
      const uint64_t o = order[next++];
      start_block(*b, uint3{unsigned(o % c.grid.x), unsigned(o / c.grid.x % c.grid.y),
                            unsigned(o / (uint64_t(c.grid.x) * c.grid.y))}, c);
    } else if (!held.empty()) {
      b = held.back();
      held.pop_back();
      take_back(b->priv);
    } else {
      b = nullptr;
      break;
    }
    g_run = b;
    set_running_pages(&b->priv);
    g_may_hold = next < nblocks && held.size() + 1 < W;
    const RunResult r = run_block(*b);
    if (r == RunResult::kHeld) {
      put_aside(b->priv);
      held.push_back(b);
      continue;
    }
    if (r == RunResult::kFault) {
      code = cudaErrorMisalignedAddress;
      error = std::string(b->fault) + " in " + describe_launch(c);
      break;
    }
    if (r == RunResult::kDeadlock) {
      code = cudaErrorLaunchFailure;
      error = "deadlock: threads wait at a barrier (__syncthreads or a full-warp shuffle) that other live threads "
              "of the block never reach, in " + describe_launch(c);
      break;
    }
    publish(b->priv);  // a block's stores are visible once it has exited
    static_max = std::max(static_max, b->arena_used);
    if (!shared_memory_fits(c, b->arena_used, error)) {
      code = cudaErrorInvalidValue;
      error += ": " + describe_launch(c);
      break;
    }
    if (c.pdl)
      for (int i = 0; i < b->n; ++i)
        if (!b->fibers[i].dep_waited) {
          code = cudaErrorLaunchFailure;
          error = "thread " + std::to_string(i) + " of " + describe_launch(c) +
                  " never called cudaGridDependencySynchronize, but the kernel was launched with a "
                  "programmatic dependency: it may read its predecessor's output before it is written";
          break;
        }
    free_slots.push_back(b);
    b = nullptr;
  }
  // A failed launch abandons its blocks; what they stored becomes visible, as after a kernel.
  if (b) publish(b->priv);
  for (BlockRun* h : held) {
    set_running_pages(&h->priv);
    take_back(h->priv);
    publish(h->priv);
  }
  size_t& st = g_static_smem[c.fn];
  st = std::max(st, static_max);
  set_running_pages(nullptr);
  launch_ends();
  g_run = nullptr;
  g_launch = nullptr;
  if (code != cudaSuccess) fail(code, error);
}

// ---- device side ---------------------------------------------------------------------------
const uint3& thread_idx() { return g_cur->tid; }
const uint3& block_idx() { return g_run->bid; }
void* dynamic_smem() { return g_run->smem; }
int lane_id() { return g_cur->lane; }
void syncthreads() { arrive(g_run->block_bar); }
void grid_dependency_wait() { g_cur->dep_waited = true; }  // blocks run after their predecessors here
void threadfence() { publish(g_run->priv); }

void* block_shared(const void* tag, size_t bytes, size_t align) {
  BlockRun& b = *g_run;
  for (const auto& t : b.tags)
    if (t.first == tag) return b.arena + t.second;
  const size_t off = (b.arena_used + align - 1) / align * align;
  if (off + bytes > kSharedArena) device_fault("static shared memory over 227 KiB");
  memset(b.arena + off, 0xff, bytes);  // uninitialised: poisoned, as dynamic shared memory
  b.tags.emplace_back(tag, off);
  b.arena_used = off + bytes;
  return b.arena + off;
}

bool is_block_shared(const void* p) {
  const BlockRun& b = *g_run;
  const char* c = static_cast<const char*>(p);
  return (c >= b.arena && c < b.arena + kSharedArena) || (c >= b.smem && c < b.smem + b.smem_cap);
}

AtomicSite atomic_site(void* p, size_t bytes) { return locate_atomic(p, bytes); }

std::atomic<uint64_t> g_holds{0};

void atomic_done() {
  if (!g_may_hold) return;
  g_may_hold = false;  // held once per run: a block that resumes keeps going
  g_holds.fetch_add(1, std::memory_order_relaxed);
  g_run->hold = true;
  to_scheduler();
}

uint64_t held_count() { return g_holds.load(std::memory_order_relaxed); }

uint64_t warp_exchange(uint64_t bits, int src) {
  uint64_t all[32];
  warp_gather(bits, all);
  const int lanes = std::min(32, g_run->n - 32 * g_cur->warp);
  return (src >= 0 && src < lanes) ? all[src] : bits;
}

void warp_gather(uint64_t bits, uint64_t* out) { warp_gather_n(&bits, 1, out); }

// One warp barrier for up to kGatherWords words a lane (the mma emulation gathers three).
void warp_gather_n(const uint64_t* words, int n, uint64_t* out) {
  Fiber* f = g_cur;
  BlockRun& b = *g_run;
  Barrier& bar = b.warp_bar[size_t(f->warp)];
  const size_t par = f->shfl_count++ & 1u;
  uint64_t* slot = b.slots.data() + (par * b.warp_bar.size() + size_t(f->warp)) * 32 * kGatherWords;
  for (int w = 0; w < n; ++w) slot[size_t(f->lane) * kGatherWords + size_t(w)] = words[w];
  arrive(bar);
  const int lanes = std::min(32, b.n - 32 * f->warp);
  for (int i = 0; i < 32; ++i)
    for (int w = 0; w < n; ++w) out[i * n + w] = i < lanes ? slot[size_t(i) * kGatherWords + size_t(w)] : 0;
}

void device_fault(const char* what) {
  // The device faults with a misaligned address: the launch fails, this block is abandoned.
  g_run->fault = what;
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

// ---- kernel attributes ---------------------------------------------------------------------
cudaError_t func_set_max_dynamic_smem(const void* fn, int bytes) {
  if (bytes < 0 || size_t(bytes) > kOptinSmem) return fail(cudaErrorInvalidValue, "dynamic shared memory over 227 KiB");
  g_max_dyn_smem[fn] = bytes;
  return cudaSuccess;
}

cudaError_t func_get_attributes(cudaFuncAttributes* a, const void* fn) {
  *a = cudaFuncAttributes{};
  auto st = g_static_smem.find(fn);
  if (st != g_static_smem.end()) a->sharedSizeBytes = st->second;
  auto dy = g_max_dyn_smem.find(fn);
  a->maxDynamicSharedSizeBytes = dy != g_max_dyn_smem.end() ? dy->second : int(kDefaultSmem - a->sharedSizeBytes);
  return cudaSuccess;
}

bool check_launch(const LaunchConfig& c) {
  const uint64_t threads = uint64_t(c.block.x) * c.block.y * c.block.z;
  if (threads == 0 || threads > 1024 || c.block.z > 64 || c.grid.x == 0 || c.grid.y == 0 || c.grid.z == 0 ||
      c.grid.x > 0x7fffffffu || c.grid.y > 65535 || c.grid.z > 65535) {
    fail(cudaErrorInvalidConfiguration, "invalid launch configuration: " + describe_launch(c));
    return false;
  }
  size_t smem_cap = kDefaultSmem;
  auto it = g_max_dyn_smem.find(c.fn);
  if (it != g_max_dyn_smem.end()) smem_cap = size_t(it->second);
  if (c.smem > smem_cap) {
    fail(cudaErrorInvalidValue, "dynamic shared memory " + std::to_string(c.smem) + " over the kernel's limit " +
                                    std::to_string(smem_cap) + " (cudaFuncSetAttribute raises it): " + describe_launch(c));
    return false;
  }
  return true;
}

}  // namespace gptoss_emu
