// CudaRunner: decode steps captured once per launch shape and replayed as CUDA graphs, and the
// profiler (events between kernel groups).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine_impl.cuh"

namespace gptoss::cuda {

void CudaRunner::Impl::drop_graphs() {
  for (auto& kv : graphs) cudaGraphExecDestroy(kv.second);
  graphs.clear();
}

void CudaRunner::Impl::mark(const char* label) {
  if (!prof_on) return;
  const size_t i = prof_labels.size();
  if (i == prof_events.size()) {
    cudaEvent_t e = nullptr;
    CUDA_CHECK(cudaEventCreate(&e));
    prof_events.push_back(e);
  }
  // A plain record on a capturing stream only marks a point of the capture (for other streams
  // to wait on): the graph gets no node and a replay records nothing. An external record is a
  // node of the graph, recorded at each replay.
  cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
  CUDA_CHECK(cudaStreamIsCapturing(stream, &cs));
  if (cs == cudaStreamCaptureStatusActive)
    CUDA_CHECK(cudaEventRecordWithFlags(prof_events[i], stream, cudaEventRecordExternal));
  else
    CUDA_CHECK(cudaEventRecord(prof_events[i], stream));
  prof_labels.push_back(label);
}

void CudaRunner::Impl::run_profiled(const Shape& p) {
  CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  cudaGraph_t g = nullptr;
  prof_on = true;
  try {
    mark("start");
    enqueue_forward(p);
  } catch (...) {
    prof_on = false;
    cudaStreamEndCapture(stream, &g);
    if (g) cudaGraphDestroy(g);
    cudaGetLastError();
    throw;
  }
  prof_on = false;
  CUDA_CHECK(cudaStreamEndCapture(stream, &g));
  const cudaError_t e = cudaGraphInstantiate(&prof_exec, g, 0);
  cudaGraphDestroy(g);
  CUDA_CHECK(e);
  CUDA_CHECK(cudaGraphLaunch(prof_exec, stream));
}

void CudaRunner::Impl::collect_profile() {
  if (!prof_pending) return;
  prof_pending = false;
  if (prof_exec) cudaGraphExecDestroy(prof_exec);
  prof_exec = nullptr;
  for (size_t i = 1; i < prof_labels.size(); ++i) {
    float ms = 0.f;
    CUDA_CHECK(cudaEventElapsedTime(&ms, prof_events[i - 1], prof_events[i]));
    auto& a = prof_acc[prof_labels[i]];
    a.first += ms;
    a.second += 1;
  }
  ++prof_steps;
}

void CudaRunner::Impl::drop_profile() {
  if (prof_exec) cudaGraphExecDestroy(prof_exec);
  prof_exec = nullptr;
  for (cudaEvent_t e : prof_events) cudaEventDestroy(e);
  prof_events.clear();
}

void CudaRunner::Impl::run_graph(const Shape& p) {
  auto it = graphs.find(p);
  if (it == graphs.end()) {
    if (graphs.size() >= kMaxGraphs) drop_graphs();
    CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    cudaGraph_t g = nullptr;
    try {
      enqueue_forward(p);
    } catch (...) {
      cudaStreamEndCapture(stream, &g);  // leave the stream usable
      if (g) cudaGraphDestroy(g);
      cudaGetLastError();
      throw;
    }
    CUDA_CHECK(cudaStreamEndCapture(stream, &g));
    cudaGraphExec_t ex = nullptr;
    const cudaError_t e = cudaGraphInstantiate(&ex, g, 0);
    cudaGraphDestroy(g);
    CUDA_CHECK(e);
    it = graphs.emplace(p, ex).first;
    ++graphs_captured;
  }
  CUDA_CHECK(cudaGraphLaunch(it->second, stream));
  ++graph_launches;
}

}  // namespace gptoss::cuda
