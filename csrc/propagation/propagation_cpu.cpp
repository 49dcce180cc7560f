// Propagation on the CPU: OpenMP over query pixels (forward, query gradient)
// and reference-frame pixels (key and value gradients), each pixel's
// candidates streamed with the shared per-pixel functions.
#include <vector>

#include "common/parallel.h"
#include "propagation/propagation.h"

namespace wsss::propagation {
namespace {

// Below this many multiply-adds (pixels x candidates x (channels + labels))
// starting a parallel region costs more than it saves.
constexpr int64_t kMinParallelWork = 1 << 15;

int threads_for(const Problem& pb) {
  const int64_t work = pb.batch * pb.pixels() * pb.candidates() * (pb.channels + pb.labels);
  return work >= kMinParallelWork ? wsss::cpu_threads() : 1;
}

template <class T>
void forward_typed(const ForwardArgs& args) {
  const Problem& pb = args.problem;
  const int64_t pixels = pb.batch * pb.pixels();
#pragma omp parallel num_threads(threads_for(pb))
  {
    std::vector<T> acc(static_cast<size_t>(pb.labels) + 1), top_scores(kMaxTopk);
    std::vector<int32_t> top_indices(kMaxTopk);
#pragma omp for schedule(dynamic, 16)
    for (int64_t pixel = 0; pixel < pixels; ++pixel)
      pixel_forward(pb, args.query.as<const T>(), args.keys.as<const T>(), args.values.as<const T>(), pixel, 0,
                    pb.labels, acc.data(), top_scores.data(), top_indices.data(), args.out.as<T>(), args.stats.as<T>(),
                    args.topk_index.as<int32_t>(), true);
  }
}

template <class T>
void backward_typed(const BackwardArgs& args) {
  const Problem& pb = args.problem;
  const T* query = args.query.as<const T>();
  const T* keys = args.keys.as<const T>();
  const T* values = args.values.as<const T>();
  const T* grad_out = args.grad_out.as<const T>();
  const T* stats = args.stats.as<const T>();
  const T* delta = args.delta.as<const T>();
  const int32_t* topk_index = args.topk_index.as<const int32_t>();
  T* grad_query = args.grad_query.as<T>();
  T* grad_keys = args.grad_keys.as<T>();
  T* grad_values = args.grad_values.as<T>();
  const int threads = threads_for(pb);
#pragma omp parallel for num_threads(threads) schedule(dynamic, 16)
  for (int64_t pixel = 0; pixel < pb.batch * pb.pixels(); ++pixel)
    pixel_query_grad(pb, query, keys, values, grad_out, stats, delta, topk_index, pixel,
                     grad_query + pixel * pb.channels);
#pragma omp parallel for num_threads(threads) schedule(dynamic, 16)
  for (int64_t frame_pixel = 0; frame_pixel < pb.batch * pb.refs * pb.pixels(); ++frame_pixel)
    frame_pixel_grad(pb, query, keys, values, grad_out, stats, delta, topk_index, frame_pixel,
                     grad_keys + frame_pixel * pb.channels, grad_values + frame_pixel * pb.labels);
}

}  // namespace

void forward_cpu(const ForwardArgs& args) {
  dispatch_floating(
      args.query.dtype, "query", [&](auto tag) { forward_typed<compute_t<decltype(tag)>>(args); },
      /*allow_half=*/false);
}

void backward_cpu(const BackwardArgs& args) {
  dispatch_floating(
      args.query.dtype, "query", [&](auto tag) { backward_typed<compute_t<decltype(tag)>>(args); },
      /*allow_half=*/false);
}

}  // namespace wsss::propagation
