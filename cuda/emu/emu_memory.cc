// cuda-emu device memory: allocations with guard pages, and the store-visibility model of global
// memory across blocks (cuda_runtime.h). Kernels see device memory read-only; a block's first
// store to a page faults and makes the page its private copy, which a __threadfence or the
// block's exit merges into what every block sees (publish). The emulator's own writes (copies,
// memsets, atomics, merges) go through a second, writable mapping of the same pages.
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>

#include "emu_internal.h"

namespace gptoss_emu {

const size_t kPage = size_t(sysconf(_SC_PAGESIZE));

namespace {
std::map<uintptr_t, Alloc> g_allocs;  // by user pointer
size_t g_used = 0;

// The data page of some allocation that holds address u (guard pages excluded), or null.
const Alloc* alloc_of_page(uintptr_t u) {
  auto it = g_allocs.upper_bound(u + kPage);  // user pointers lie within their first data page
  while (it != g_allocs.begin()) {
    --it;
    const Alloc& a = it->second;
    const uintptr_t lo = reinterpret_cast<uintptr_t>(a.data), hi = lo + a.data_bytes;
    if (u >= lo && u < hi) return &a;
    if (hi <= u) return nullptr;
  }
  return nullptr;
}

// Page copies of the blocks in flight: a bump allocator over a reserved range with a free list
// (the fault handler takes from it, so no malloc there). A block's copies go back to the free
// list when it publishes, so a launch needs copies only for the pages its blocks in flight hold;
// more than kPoolCap of them is a runaway kernel (stores far outside what it owns), which aborts
// with a message instead of exhausting host memory.
constexpr size_t kPoolCap = size_t(4) << 30;
struct PagePool {
  char* base = nullptr;
  size_t used = 0;
  std::vector<char*> free_pages;  // given back by publish (the fault handler only pops)
  char* take() {
    if (!free_pages.empty()) {
      char* p = free_pages.back();
      free_pages.pop_back();
      return p;
    }
    if (!base) {
      void* m = mmap(nullptr, kPoolCap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (m == MAP_FAILED) std::abort();
      base = static_cast<char*>(m);
    }
    if (used + kPage > kPoolCap) {
      static const char msg[] =
          "cuda-emu: the blocks in flight stored to over 4 GiB of distinct pages without a fence (a runaway "
          "kernel?): the store-visibility model gives up (GPTOSS_EMU_VISIBILITY=0 turns it off)\n";
      (void)!write(2, msg, sizeof msg - 1);
      std::abort();
    }
    char* p = base + used;
    used += kPage;
    return p;
  }
  void give(char* p) {
    if (p) free_pages.push_back(p);
  }
  void reset() {
    free_pages.clear();
    if (used > (size_t(256) << 20)) madvise(base, used, MADV_DONTNEED);  // give large launches' copies back
    used = 0;
  }
} g_pool;

PrivatePages* g_running = nullptr;  // the block that runs now
uint64_t g_private_pages = 0;
bool g_in_launch = false;
struct sigaction g_prev_segv;  // the handler before ours (Python's faulthandler, a debugger, default)

void protect(char* page, bool writable_page) {
  if (mprotect(page, kPage, writable_page ? PROT_READ | PROT_WRITE : PROT_READ) != 0) std::abort();
}

// A store of the running block to a read-only data page: the page becomes its private copy.
bool private_copy_on_store(uintptr_t addr) {
  if (!g_in_launch || !g_running) return false;
  const Alloc* a = alloc_of_page(addr);
  if (!a || a->back == a->data) return false;
  char* page = reinterpret_cast<char*>(addr & ~uintptr_t(kPage - 1));
  for (const PrivatePage& p : g_running->pages)
    if (p.page == page) return false;  // already writable: not a store fault
  PrivatePage p{page, a->back + (page - a->data), g_pool.take(), g_pool.take(), nullptr};
  std::memcpy(p.base, page, kPage);
  std::memcpy(p.visible, page, kPage);
  g_running->pages.push_back(p);  // reserved capacity: no allocation in the common case
  ++g_private_pages;
  protect(page, true);
  return true;
}

void on_segv(int sig, siginfo_t* si, void* uc) {
  if (private_copy_on_store(reinterpret_cast<uintptr_t>(si->si_addr))) return;
  // Not ours (a guard page, a wild pointer): the handler from before takes the fault when the
  // instruction faults again; without one, say which kernel it was first.
  if (!(g_prev_segv.sa_flags & SA_SIGINFO) && g_prev_segv.sa_handler == SIG_DFL) {
    const std::string what = "cuda-emu: out-of-bounds access (a guard page or read-only memory) " +
                             running_kernel_description() + "\n";
    (void)!write(2, what.data(), what.size());
  }
  sigaction(SIGSEGV, &g_prev_segv, nullptr);
  (void)sig;
  (void)uc;
}

void install_segv_handler() {
  struct sigaction cur {};
  sigaction(SIGSEGV, nullptr, &cur);
  if ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == &on_segv) return;
  g_prev_segv = cur;  // installed later than ours (e.g. faulthandler.enable()): it stays the fallback
  struct sigaction sa {};
  sa.sa_sigaction = &on_segv;
  sa.sa_flags = SA_SIGINFO;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGSEGV, &sa, nullptr);
}
}  // namespace

size_t total_memory() {
  static const size_t t = [] {
    const char* e = std::getenv("GPTOSS_EMU_MEMORY_GIB");
    const double gib = e ? std::atof(e) : 4.0;
    return size_t(gib * double(1ull << 30));
  }();
  return t;
}

size_t used_memory() { return g_used; }

bool visibility_model() {
  static const bool on = [] {
    const char* e = std::getenv("GPTOSS_EMU_VISIBILITY");
    return !(e && std::strcmp(e, "0") == 0);
  }();
  return on;
}

const Alloc* find_alloc(const void* p, size_t bytes) {
  const uintptr_t u = reinterpret_cast<uintptr_t>(p);
  auto it = g_allocs.upper_bound(u);
  if (it == g_allocs.begin()) return nullptr;
  --it;
  return u >= it->first && u + bytes <= it->first + it->second.bytes ? &it->second : nullptr;
}

bool in_device(const void* p, size_t bytes) { return find_alloc(p, bytes) != nullptr; }

void* writable(void* p, size_t bytes) {
  const Alloc* a = find_alloc(p, bytes ? bytes : 1);
  return a ? a->back + (static_cast<char*>(p) - a->data) : p;
}

cudaError_t device_malloc(void** out, size_t bytes) {
  const size_t rounded = (std::max<size_t>(bytes, 1) + 255) & ~size_t(255);
  if (g_used + rounded > total_memory())
    return fail(cudaErrorMemoryAllocation, "out of memory (emulated device of " + std::to_string(total_memory()) +
                                               " bytes; GPTOSS_EMU_MEMORY_GIB sets it)");
  const size_t data_pages = (rounded + kPage - 1) / kPage, data_bytes = data_pages * kPage;
  const size_t map_bytes = data_bytes + 2 * kPage;
  void* m = mmap(nullptr, map_bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) return fail(cudaErrorMemoryAllocation, "out of host memory");
  char* base = static_cast<char*>(m);
  char* data = base + kPage;
  char* back = data;
  if (visibility_model()) {
    const int fd = memfd_create("gptoss-emu-device", MFD_CLOEXEC);
    bool ok = fd >= 0 && ftruncate(fd, off_t(data_bytes)) == 0 &&
              mmap(data, data_bytes, PROT_READ, MAP_SHARED | MAP_FIXED, fd, 0) != MAP_FAILED;
    void* b = ok ? mmap(nullptr, data_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) : MAP_FAILED;
    if (fd >= 0) close(fd);
    if (b == MAP_FAILED) {
      munmap(base, map_bytes);
      return fail(cudaErrorMemoryAllocation, "out of host memory (device mapping)");
    }
    back = static_cast<char*>(b);
  } else if (mprotect(data, data_bytes, PROT_READ | PROT_WRITE) != 0) {
    munmap(base, map_bytes);
    return fail(cudaErrorMemoryAllocation, "out of host memory");
  }
  char* user = data + data_bytes - rounded;
  std::memset(back + (user - data), 0xa5, std::min<size_t>(rounded, 1 << 20));  // not zeroed (part poisoned)
  g_allocs[reinterpret_cast<uintptr_t>(user)] = Alloc{base, map_bytes, bytes, user, data, data_bytes, back};
  g_used += rounded;
  *out = user;
  return cudaSuccess;
}

cudaError_t device_free(void* p) {
  auto it = g_allocs.find(reinterpret_cast<uintptr_t>(p));
  if (it == g_allocs.end()) return fail(cudaErrorInvalidValue, "cudaFree of a pointer that cudaMalloc did not return");
  const Alloc& a = it->second;
  g_used -= (std::max<size_t>(a.bytes, 1) + 255) & ~size_t(255);
  if (a.back != a.data) munmap(a.back, a.data_bytes);
  munmap(a.map, a.map_bytes);
  g_allocs.erase(it);
  return cudaSuccess;
}

// ---- the visibility model ------------------------------------------------------------------
void set_running_pages(PrivatePages* p) { g_running = p; }

uint64_t private_page_count() { return g_private_pages; }

void publish(PrivatePages& pp) {
  for (PrivatePage& p : pp.pages) {
    if (std::memcmp(p.visible, p.base, kPage) != 0) {  // another block published into it meanwhile
      for (size_t i = 0; i < kPage; ++i)
        if (p.page[i] != p.base[i]) p.visible[i] = p.page[i];
      std::memcpy(p.back, p.visible, kPage);  // and this block now sees all of it
    }
    protect(p.page, false);
    g_pool.give(p.base);
    g_pool.give(p.visible);
    g_pool.give(p.mine);
  }
  pp.pages.clear();
}

void put_aside(PrivatePages& pp) {
  for (PrivatePage& p : pp.pages) {
    if (!p.mine) p.mine = g_pool.take();
    std::memcpy(p.mine, p.page, kPage);
    std::memcpy(p.back, p.visible, kPage);
    protect(p.page, false);
  }
}

void take_back(PrivatePages& pp) {
  for (PrivatePage& p : pp.pages) {
    std::memcpy(p.visible, p.page, kPage);  // others may have published into it while it was held
    std::memcpy(p.back, p.mine, kPage);
    protect(p.page, true);
  }
}

void launch_begins() {
  g_in_launch = visibility_model();
  if (g_in_launch) install_segv_handler();
}

void launch_ends() {
  g_in_launch = false;
  g_running = nullptr;
  g_pool.reset();
}

AtomicSite locate_atomic(void* p, size_t bytes) {
  const Alloc* a = find_alloc(p, bytes);
  if (!a) device_fault("atomic on memory that is neither the block's shared memory nor device memory");
  char* c = static_cast<char*>(p);
  char* back = a->back + (c - a->data);
  if (g_running) {
    char* page = reinterpret_cast<char*>(reinterpret_cast<uintptr_t>(c) & ~uintptr_t(kPage - 1));
    for (PrivatePage& q : g_running->pages)
      if (q.page == page) return AtomicSite{q.visible + (c - page), q.base + (c - page), back};
  }
  return AtomicSite{back, nullptr, nullptr};
}

}  // namespace gptoss_emu
