// cuda-emu runtime API: errors, device properties, memory calls, streams that run work at once
// (or record it while capturing a graph; the legacy default stream defers its memsets and copies
// until something waits for it), events and graphs. Launches: emu_blocks.cc; device memory and
// the store-visibility model: emu_memory.cc; what is and is not emulated: cuda_runtime.h.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <functional>
#include <stdexcept>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "emu_internal.h"
#include "mma_sync.h"

namespace gptoss_emu {

// ---- errors --------------------------------------------------------------------------------
namespace {
thread_local cudaError_t g_last = cudaSuccess;
thread_local cudaError_t g_msg_err = cudaSuccess;  // the error g_last_msg describes (outlives GetLastError)
thread_local std::string g_last_msg;
}  // namespace

cudaError_t fail(cudaError_t e, const std::string& msg) {
  g_last = g_msg_err = e;
  g_last_msg = msg;
  if (std::getenv("GPTOSS_EMU_VERBOSE")) std::fprintf(stderr, "cuda-emu: %s\n", msg.c_str());
  return e;
}

namespace {
std::mutex g_mu;  // one launch / one API call at a time

// ---- streams, events, graphs -------------------------------------------------------------
using Op = std::function<void()>;
}  // namespace

struct Stream {
  bool capturing = false;
  bool nonblocking = false;  // cudaStreamNonBlocking: not ordered with the legacy default stream
  Graph* graph = nullptr;
};
struct Event {
  enum State { kNever, kRecorded, kCaptured } state = kNever;
  std::chrono::steady_clock::time_point t;
};
struct Graph {
  std::vector<Op> ops;
};
struct GraphExec {
  std::vector<Op> ops;
};

namespace {
Stream g_default_stream;  // the legacy default stream (0)
std::vector<Op> g_legacy;  // its deferred work, in order
Stream* S(cudaStream_t st) { return st ? st : &g_default_stream; }
bool any_capturing = false;

void run_legacy() {
  std::vector<Op> ops;
  ops.swap(g_legacy);
  for (const Op& op : ops) op();
}

// Runs `op` now, or appends it to the graph the stream is capturing. On the legacy stream,
// `deferrable` work (memsets, copies, event records) waits until something synchronises with
// that stream: work on a non-blocking stream is not ordered after it.
void submit(cudaStream_t st, Op op, bool deferrable = false) {
  Stream* s = S(st);
  if (s->capturing) {
    s->graph->ops.push_back(std::move(op));
    return;
  }
  if (!st && deferrable) {
    g_legacy.push_back(std::move(op));
    return;
  }
  if (!st || !s->nonblocking) run_legacy();  // the legacy stream and blocking streams wait for each other
  op();
}

cudaError_t capture_forbidden(const char* what) {
  if (!any_capturing) return cudaSuccess;
  return fail(cudaErrorStreamCaptureUnsupported, std::string(what) + " while a stream is capturing a graph");
}

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

void flush_legacy_stream() { run_legacy(); }

// ---- MMA mode (mma_sync.h) -----------------------------------------------------------------
int parse_mma_mode(const std::string& s) {
  int m = 0;
  size_t at = 0;
  while (at <= s.size()) {
    const size_t end = std::min(s.find_first_of("+,", at), s.size());
    const std::string w = s.substr(at, end - at);
    if (w == "hardware") m |= kMmaHardware;
    else if (w == "flush_a") m |= kMmaFlushA;
    else if (w == "flush_b") m |= kMmaFlushB;
    else if (w != "exact" && !w.empty()) return -1;
    at = end + 1;
  }
  return m;
}

std::string mma_mode_name(int m) {
  std::string s = m & kMmaHardware ? "hardware" : "exact";
  if (m & kMmaFlushA) s += "+flush_a";
  if (m & kMmaFlushB) s += "+flush_b";
  return s;
}

int g_mma_mode = [] {
  const char* e = std::getenv("GPTOSS_EMU_MMA");
  const int m = e ? parse_mma_mode(e) : 0;
  return m < 0 ? 0 : m;
}();

std::string set_mma_mode(const std::string& mode) {
  const int m = parse_mma_mode(mode);
  if (m < 0) throw std::invalid_argument("emu_set_mma_mode: 'exact' or 'hardware', optionally with '+flush_a' / '+flush_b', got '" + mode + "'");
  std::lock_guard<std::mutex> g(g_mu);
  const std::string old = mma_mode_name(g_mma_mode);
  g_mma_mode = m;
  return old;
}

void bad_kernel_argument(const LaunchConfig& c, int index) {
  fail(cudaErrorIllegalAddress, "argument " + std::to_string(index) + " of " + describe_launch(c) +
                                    " is a pointer outside device memory");
}

void launch(const LaunchConfig& c, Body* raw) {
  std::shared_ptr<Body> body(raw);
  std::lock_guard<std::mutex> g(g_mu);
  if (!check_launch(c)) return;
  submit(c.stream, [c, body] { execute(c, body.get()); });
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
  p->sharedMemPerBlockOptin = 227 * 1024;
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
  if (cudaError_t e = capture_forbidden("cudaDeviceSynchronize")) return e;
  flush_legacy_stream();
  return cudaSuccess;
}

cudaError_t cudaMalloc(void** out, size_t bytes) {
  std::lock_guard<std::mutex> g(g_mu);
  *out = nullptr;
  if (cudaError_t e = capture_forbidden("cudaMalloc")) return e;
  return device_malloc(out, bytes);
}
cudaError_t cudaFree(void* p) {
  if (!p) return cudaSuccess;
  std::lock_guard<std::mutex> g(g_mu);
  if (cudaError_t e = capture_forbidden("cudaFree")) return e;
  flush_legacy_stream();  // cudaFree synchronises the device
  return device_free(p);
}
cudaError_t cudaMallocHost(void** p, size_t bytes) {
  *p = std::malloc(std::max<size_t>(bytes, 1));
  return *p ? cudaSuccess : fail(cudaErrorMemoryAllocation, "out of host memory");
}
cudaError_t cudaFreeHost(void* p) {
  std::lock_guard<std::mutex> g(g_mu);
  flush_legacy_stream();
  std::free(p);
  return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t* fr, size_t* tot) {
  std::lock_guard<std::mutex> g(g_mu);
  *tot = total_memory();
  *fr = *tot > used_memory() ? *tot - used_memory() : 0;
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  std::lock_guard<std::mutex> g(g_mu);
  if (cudaError_t e = capture_forbidden("cudaMemcpy")) return e;
  if (bytes == 0) return cudaSuccess;
  if (cudaError_t e = check_copy(dst, src, bytes, kind)) return e;
  flush_legacy_stream();  // on the legacy stream, and the call returns when it is done
  memmove(writable(dst, bytes), src, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t st) {
  std::lock_guard<std::mutex> g(g_mu);
  if (bytes == 0) return cudaSuccess;
  if (cudaError_t e = check_copy(dst, src, bytes, kind)) return e;
  void* w = writable(dst, bytes);
  if (!st && !in_device(src, bytes)) {  // a deferred copy from the host must not see later host writes
    auto staged = std::make_shared<std::vector<char>>(static_cast<const char*>(src), static_cast<const char*>(src) + bytes);
    submit(st, [=] { memmove(w, staged->data(), bytes); }, true);
  } else {
    submit(st, [=] { memmove(w, src, bytes); }, true);
  }
  return cudaSuccess;
}
cudaError_t cudaMemset(void* p, int v, size_t bytes) {
  std::lock_guard<std::mutex> g(g_mu);
  if (cudaError_t e = capture_forbidden("cudaMemset")) return e;
  if (bytes && !in_device(p, bytes)) return fail(cudaErrorInvalidValue, "cudaMemset outside device memory");
  void* w = writable(p, bytes);
  submit(nullptr, [=] { memset(w, v, bytes); }, true);  // on the legacy stream, asynchronous
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* p, int v, size_t bytes, cudaStream_t st) {
  std::lock_guard<std::mutex> g(g_mu);
  if (bytes && !in_device(p, bytes)) return fail(cudaErrorInvalidValue, "cudaMemsetAsync outside device memory");
  void* w = writable(p, bytes);
  submit(st, [=] { memset(w, v, bytes); }, true);
  return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t* st) {
  *st = new Stream;
  return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* st, unsigned flags) {
  *st = new Stream;
  (*st)->nonblocking = (flags & cudaStreamNonBlocking) != 0;
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t st) {
  delete st;
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t st) {
  std::lock_guard<std::mutex> g(g_mu);
  if (S(st)->capturing)
    return fail(cudaErrorStreamCaptureUnsupported, "cudaStreamSynchronize on a capturing stream");
  if (!st || !S(st)->nonblocking) flush_legacy_stream();
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
// On a capturing stream a plain record only marks the capture (other streams may wait on it):
// the graph gets no node, and the event is recorded by no replay. An external record is a node.
cudaError_t cudaEventRecordWithFlags(cudaEvent_t e, cudaStream_t st, unsigned flags) {
  if (flags & ~unsigned(cudaEventRecordExternal)) return fail(cudaErrorInvalidValue, "cudaEventRecordWithFlags: unknown flags");
  std::lock_guard<std::mutex> g(g_mu);
  if (S(st)->capturing && !(flags & cudaEventRecordExternal)) {
    e->state = Event::kCaptured;
    return cudaSuccess;
  }
  submit(st, [e] {
    e->t = std::chrono::steady_clock::now();
    e->state = Event::kRecorded;
  }, true);
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t st) { return cudaEventRecordWithFlags(e, st, 0); }
cudaError_t cudaEventSynchronize(cudaEvent_t) {
  std::lock_guard<std::mutex> g(g_mu);
  flush_legacy_stream();
  return cudaSuccess;
}
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) {
  std::lock_guard<std::mutex> g(g_mu);
  for (cudaEvent_t e : {a, b})
    if (e->state != Event::kRecorded)
      return fail(cudaErrorInvalidResourceHandle,
                  e->state == Event::kCaptured
                      ? "cudaEventElapsedTime: the event was last recorded by cudaEventRecord on a capturing stream, "
                        "which adds no node to the graph: no replay records it (cudaEventRecordWithFlags(..., "
                        "cudaEventRecordExternal) does)"
                      : "cudaEventElapsedTime: the event has not been recorded (or not yet: synchronise first)");
  *ms = std::chrono::duration<float, std::milli>(b->t - a->t).count();
  return cudaSuccess;
}
