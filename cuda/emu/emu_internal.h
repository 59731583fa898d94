// cuda-emu internals shared by its three parts: emu.cc (the runtime API: errors, streams, events,
// graphs, copies), emu_memory.cc (device memory and the store-visibility model), emu_blocks.cc
// (fibers, blocks in flight, launches). See cuda_runtime.h for what is and is not emulated.
#pragma once

#include <stddef.h>
#include <stdint.h>

#include <string>
#include <vector>

#include "cuda_runtime.h"

namespace gptoss_emu {

// ---- errors (emu.cc) -----------------------------------------------------------------------
// Sets the error cudaGetLastError returns (and the message cudaGetErrorString gives); returns e.
cudaError_t fail(cudaError_t e, const std::string& msg);

// ---- device memory (emu_memory.cc) ---------------------------------------------------------
struct Alloc {
  char* map;  // whole user mapping, guard pages included
  size_t map_bytes;
  size_t bytes;
  char* user;  // the pointer cudaMalloc returned
  char* data;  // first data page of the user mapping
  size_t data_bytes;
  char* back;  // the same pages, writable by the emulator (== data without the visibility model)
};
extern const size_t kPage;
size_t total_memory();
size_t used_memory();
bool visibility_model();  // GPTOSS_EMU_VISIBILITY (default on)
// The allocation that holds all of [p, p + bytes), or null.
const Alloc* find_alloc(const void* p, size_t bytes);
bool in_device(const void* p, size_t bytes);
// Where the emulator itself writes the device bytes at p (host memory: p).
void* writable(void* p, size_t bytes);
cudaError_t device_malloc(void** out, size_t bytes);
cudaError_t device_free(void* p);

// A page a block has stored to since its last fence: the block's private copy (its stores are
// visible to no other block yet). While the block runs, the page itself holds its version and
// `visible` what every other block sees; while it is held, `mine` keeps its version.
struct PrivatePage {
  char* page;     // user address (read-write while the block runs)
  char* back;     // the same page, writable
  char* base;     // what was visible at the block's first store (its stores are the bytes that differ)
  char* visible;  // what every other block sees now
  char* mine;     // the block's version while it is held (null before)
};
struct PrivatePages {
  std::vector<PrivatePage> pages;
};
// The pages of the block that runs now (set by the scheduler; null outside a launch).
void set_running_pages(PrivatePages* p);
// Merges the block's stores into what every block sees and leaves it seeing all of it.
void publish(PrivatePages& p);
// The block is held (its version put aside, the visible bytes back in place) / resumes.
void put_aside(PrivatePages& p);
void take_back(PrivatePages& p);
// A launch begins / ends: the fault handler that turns a block's first store to a page into a
// private copy is installed; the page copies of the launch are released at its end.
void launch_begins();
void launch_ends();
// For an atomic: where the value every block sees lives, and the running block's copies of it.
AtomicSite locate_atomic(void* p, size_t bytes);

// ---- blocks (emu_blocks.cc) ----------------------------------------------------------------
// Whether a launch's configuration is valid (else the error is set).
bool check_launch(const LaunchConfig& c);
// Runs one launch (the body once per thread of every block), reporting errors through fail().
void execute(const LaunchConfig& c, Body* body);
std::string describe_launch(const LaunchConfig& c);
// The error a fault inside a kernel reports (the launch and the thread that faulted).
std::string running_kernel_description();

// ---- streams (emu.cc) ----------------------------------------------------------------------
// Runs the legacy default stream's deferred memsets and copies (something synchronises with it).
void flush_legacy_stream();

}  // namespace gptoss_emu
