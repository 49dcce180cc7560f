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

// scores[i] <- exp((scores[i] - max) inv_t); returns their sum. Its own
// per-ISA clones: cloning the whole pixel loop made the dot products slower.
template <class T>
WSSS_CPU_VECTORIZED T softmax_terms(T* scores, int64_t count, T max, T inv_t) {
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < count; ++i) {
    scores[i] = softmax_term(scores[i], max, inv_t);
    sum += scores[i];
  }
  return sum;
}

// The forward of one pixel without top-k: every candidate's dot product
// first (into scores), then their maximum, then the exps and the weighted
// values. The online softmax of pixel_forward (CUDA's, which has no room for
// the scores) rescales its sums whenever a candidate beats the running
// maximum, a branch per candidate that mispredicts on real scores; here the
// exps are one vectorised loop. The same statistics (max, log sum) result.
template <class T>
void pixel_forward_all(const Problem& pb, const T* query, const T* keys, const T* values,
                       int64_t pixel, T* scores, int64_t* frame_pixels, T* acc, T* out, T* stats) {
  const int64_t b = pixel / pb.pixels(), y = pixel / pb.width % pb.height, x = pixel % pb.width;
  const T* query_row = query + pixel * pb.channels;
  const bool exclude = pb.border == Border::kExclude;
  int64_t count = 0;
  for_each_candidate(pb, b, y, x, [&](int64_t, int64_t frame_pixel) {
    if (frame_pixel < 0 && exclude) return;
    scores[count] = candidate_dot(pb, query_row, keys, frame_pixel);
    frame_pixels[count++] = frame_pixel;
  });
  T max = negative_infinity<T>();
  for (int64_t i = 0; i < count; ++i) max = scores[i] > max ? scores[i] : max;
  const T sum = softmax_terms(scores, count, max, static_cast<T>(pb.inv_temperature));
  for (int64_t l = 0; l < pb.labels; ++l) acc[l] = 0;
  for (int64_t i = 0; i < count; ++i) {
    if (frame_pixels[i] < 0) continue;  // a zero-padded tap: label 0
    const T* value_row = values + frame_pixels[i] * pb.labels;
    for (int64_t l = 0; l < pb.labels; ++l) acc[l] += scores[i] * value_row[l];
  }
  const T inv_sum = T(1) / sum;
  for (int64_t l = 0; l < pb.labels; ++l) out[pixel * pb.labels + l] = acc[l] * inv_sum;
  stats[2 * pixel] = max;
  stats[2 * pixel + 1] = log(sum);
}

template <class T>
void forward_typed(const ForwardArgs& args) {
  const Problem& pb = args.problem;
  const int64_t pixels = pb.batch * pb.pixels();
  const T* query = args.query.as<const T>();
  const T* keys = args.keys.as<const T>();
  const T* values = args.values.as<const T>();
#pragma omp parallel num_threads(threads_for(pb))
  {
    std::vector<T> acc(static_cast<size_t>(pb.labels) + 1), top_scores(kMaxTopk);
    std::vector<int32_t> top_indices(kMaxTopk);
    std::vector<T> scores(pb.topk == 0 ? static_cast<size_t>(pb.candidates()) : 0);
    std::vector<int64_t> frame_pixels(scores.size());
#pragma omp for schedule(dynamic, 16)
    for (int64_t pixel = 0; pixel < pixels; ++pixel) {
      if (pb.topk == 0)
        pixel_forward_all(pb, query, keys, values, pixel, scores.data(), frame_pixels.data(), acc.data(),
                          args.out.as<T>(), args.stats.as<T>());
      else
        pixel_forward(pb, query, keys, values, pixel, 0, pb.labels, acc.data(), top_scores.data(),
                      top_indices.data(), args.out.as<T>(), args.stats.as<T>(), args.topk_index.as<int32_t>(), true);
    }
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
