// Propagation on CUDA: one thread per (query pixel, group of kLabelsPerThread
// labels) for the forward, with the online-softmax accumulators in
// registers; one thread per query pixel for the query gradient and per
// reference-frame pixel for the key and value gradients.
#include "common/cuda_utils.h"
#include "propagation/propagation.h"

namespace wsss::propagation {
namespace {

constexpr int kThreads = 128;
constexpr int kLabelsPerThread = 8;

template <class T>
__global__ void forward_kernel(Problem pb, const T* query, const T* keys, const T* values, T* out, T* stats,
                               int32_t* topk_index) {
  const int64_t groups = (pb.labels + kLabelsPerThread - 1) / kLabelsPerThread;
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= pb.batch * pb.pixels() * (groups > 0 ? groups : 1)) return;
  const int64_t group = groups > 0 ? index % groups : 0, pixel = groups > 0 ? index / groups : index;
  const int64_t l0 = group * kLabelsPerThread;
  const int64_t l1 = l0 + kLabelsPerThread < pb.labels ? l0 + kLabelsPerThread : pb.labels;
  T acc[kLabelsPerThread];
  T top_scores[kMaxTopk];
  int32_t top_indices[kMaxTopk];
  // The first group of each pixel also writes its stats and top-k indices.
  pixel_forward(pb, query, keys, values, pixel, l0, l1, acc, top_scores, top_indices, out, stats, topk_index,
                group == 0);
}

template <class T>
__global__ void query_grad_kernel(Problem pb, const T* query, const T* keys, const T* values, const T* grad_out,
                                  const T* stats, const T* delta, const int32_t* topk_index, T* grad_query) {
  const int64_t pixel = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (pixel >= pb.batch * pb.pixels()) return;
  pixel_query_grad(pb, query, keys, values, grad_out, stats, delta, topk_index, pixel, grad_query + pixel * pb.channels);
}

template <class T>
__global__ void frame_grad_kernel(Problem pb, const T* query, const T* keys, const T* values, const T* grad_out,
                                  const T* stats, const T* delta, const int32_t* topk_index, T* grad_keys,
                                  T* grad_values) {
  const int64_t frame_pixel = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (frame_pixel >= pb.batch * pb.refs * pb.pixels()) return;
  frame_pixel_grad(pb, query, keys, values, grad_out, stats, delta, topk_index, frame_pixel,
                   grad_keys + frame_pixel * pb.channels, grad_values + frame_pixel * pb.labels);
}

}  // namespace

void forward_cuda(const ForwardArgs& args, uintptr_t stream_handle) {
  CudaDeviceGuard guard(args.query.device_index);
  const cudaStream_t stream = as_cuda_stream(stream_handle);
  const Problem& pb = args.problem;
  const int64_t groups = (pb.labels + kLabelsPerThread - 1) / kLabelsPerThread;
  const int64_t threads = pb.batch * pb.pixels() * (groups > 0 ? groups : 1);
  dispatch_floating(
      args.query.dtype, "query",
      [&](auto tag) {
        using T = compute_t<decltype(tag)>;
        WSSS_LAUNCH((forward_kernel<T>), ceil_div(threads, kThreads), kThreads, 0, stream, pb, args.query.as<const T>(),
                    args.keys.as<const T>(), args.values.as<const T>(), args.out.as<T>(), args.stats.as<T>(),
                    args.topk_index.as<int32_t>());
        WSSS_CUDA_CHECK_LAUNCH();
      },
      /*allow_half=*/false);
}

void backward_cuda(const BackwardArgs& args, uintptr_t stream_handle) {
  CudaDeviceGuard guard(args.query.device_index);
  const cudaStream_t stream = as_cuda_stream(stream_handle);
  const Problem& pb = args.problem;
  dispatch_floating(
      args.query.dtype, "query",
      [&](auto tag) {
        using T = compute_t<decltype(tag)>;
        const T* query = args.query.as<const T>();
        const T* keys = args.keys.as<const T>();
        const T* values = args.values.as<const T>();
        const T* grad_out = args.grad_out.as<const T>();
        const T* stats = args.stats.as<const T>();
        const T* delta = args.delta.as<const T>();
        const int32_t* topk_index = args.topk_index.as<const int32_t>();
        WSSS_LAUNCH((query_grad_kernel<T>), ceil_div(pb.batch * pb.pixels(), kThreads), kThreads, 0, stream, pb, query,
                    keys, values, grad_out, stats, delta, topk_index, args.grad_query.as<T>());
        WSSS_CUDA_CHECK_LAUNCH();
        WSSS_LAUNCH((frame_grad_kernel<T>), ceil_div(pb.batch * pb.refs * pb.pixels(), kThreads), kThreads, 0, stream,
                    pb, query, keys, values, grad_out, stats, delta, topk_index, args.grad_keys.as<T>(),
                    args.grad_values.as<T>());
        WSSS_CUDA_CHECK_LAUNCH();
      },
      /*allow_half=*/false);
}

}  // namespace wsss::propagation
