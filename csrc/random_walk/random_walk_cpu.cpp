// Random walk on the CPU: OpenMP over output rows. For one row and one tap
// every channel reads one shifted source row, so the inner loops are
// contiguous and vectorise; the tap's weight row is read once for all
// channels.
#include <algorithm>

#include "common/parallel.h"
#include "random_walk/random_walk.h"

namespace wsss::random_walk {
namespace {

// Below this many multiply-adds a parallel region costs more than it saves.
constexpr int64_t kMinParallelWork = 1 << 15;

// The columns x with x + shift inside [0, width).
inline void valid_columns(int64_t shift, int64_t width, int64_t& lo, int64_t& hi) {
  lo = std::min(std::max<int64_t>(-shift, 0), width);
  hi = std::max(std::min(width - shift, width), lo);
}

// Row `row` of every channel of one image. Forward: y[c, p] = sum_t w[t, p]
// x[c, p + o_t]. Transpose: y[c, q] = sum_t w[t, q - o_t] x[c, q - o_t], the
// weight then read at the source pixel. Either way each tap reads one
// shifted source row.
template <class T, bool kTranspose>
WSSS_CPU_VECTORIZED void step_row(const T* weights, const int32_t* offsets, int64_t taps, const T* x,
                                  int64_t channels, int64_t height, int64_t width, int64_t row, T* y) {
  const int64_t plane = height * width;
  for (int64_t c = 0; c < channels; ++c) std::fill(y + c * plane + row * width, y + c * plane + (row + 1) * width, T(0));
  for (int64_t t = 0; t < taps; ++t) {
    const int64_t dy = kTranspose ? -offsets[2 * t] : offsets[2 * t];
    const int64_t dx = kTranspose ? -offsets[2 * t + 1] : offsets[2 * t + 1];
    const int64_t source_row = row + dy;
    if (source_row < 0 || source_row >= height) continue;
    int64_t lo, hi;
    valid_columns(dx, width, lo, hi);
    // Forward: the output pixel's weights (column col); transpose: the source's (col + dx).
    const T* w = weights + t * plane + (kTranspose ? source_row : row) * width;
    const int64_t w_shift = kTranspose ? dx : 0;
    for (int64_t c = 0; c < channels; ++c) {
      const T* source = x + c * plane + source_row * width;
      T* out = y + c * plane + row * width;
#pragma omp simd
      for (int64_t col = lo; col < hi; ++col) out[col] += w[col + w_shift] * source[col + dx];
    }
  }
}

// grad_w[t, row, :] += sum_c grad_y[c, row, :] x[c, row + dy, : + dx].
template <class T>
WSSS_CPU_VECTORIZED void weight_grad_row(const T* grad_y, const T* x, int64_t channels, int64_t height, int64_t width,
                                         int64_t row, int64_t dy, int64_t dx, T* grad_w_row) {
  const int64_t source_row = row + dy;
  if (source_row < 0 || source_row >= height) return;
  const int64_t plane = height * width;
  int64_t lo, hi;
  valid_columns(dx, width, lo, hi);
  for (int64_t c = 0; c < channels; ++c) {
    const T* g = grad_y + c * plane + row * width;
    const T* source = x + c * plane + source_row * width;
#pragma omp simd
    for (int64_t col = lo; col < hi; ++col) grad_w_row[col] += g[col] * source[col + dx];
  }
}

template <class T>
void step_typed(const StepArgs& args) {
  const int64_t batch = args.x.shape[0], channels = args.x.shape[1];
  const int64_t height = args.x.shape[2], width = args.x.shape[3], taps = args.weights.shape[1];
  const int64_t plane = height * width;
  const T* weights = args.weights.as<const T>();
  const int32_t* offsets = args.offsets.as<const int32_t>();
  const T* x = args.x.as<const T>();
  T* y = args.y.as<T>();
#pragma omp parallel for num_threads(wsss::cpu_threads()) schedule(static) if (batch * channels * plane * taps >= kMinParallelWork)
  for (int64_t task = 0; task < batch * height; ++task) {
    const int64_t b = task / height, row = task % height;
    const T* w = weights + b * taps * plane;
    const T* xb = x + b * channels * plane;
    T* yb = y + b * channels * plane;
    if (args.transpose)
      step_row<T, true>(w, offsets, taps, xb, channels, height, width, row, yb);
    else
      step_row<T, false>(w, offsets, taps, xb, channels, height, width, row, yb);
  }
}

template <class T>
void weight_grad_typed(const WeightGradArgs& args) {
  const int64_t batch = args.x.shape[0], channels = args.x.shape[1];
  const int64_t height = args.x.shape[2], width = args.x.shape[3], taps = args.grad_weights.shape[1];
  const int64_t plane = height * width;
  const int32_t* offsets = args.offsets.as<const int32_t>();
  const T* grad_y = args.grad_y.as<const T>();
  const T* x = args.x.as<const T>();
  T* grad_w = args.grad_weights.as<T>();
#pragma omp parallel for num_threads(wsss::cpu_threads()) schedule(static) if (batch * channels * plane * taps >= kMinParallelWork)
  for (int64_t task = 0; task < batch * taps * height; ++task) {
    const int64_t row = task % height, bt = task / height, b = bt / taps, t = bt % taps;
    weight_grad_row(grad_y + b * channels * plane, x + b * channels * plane, channels, height, width, row,
                    offsets[2 * t], offsets[2 * t + 1], grad_w + bt * plane + row * width);
  }
}

}  // namespace

void step_cpu(const StepArgs& args) {
  dispatch_floating(
      args.weights.dtype, "weights", [&](auto tag) { step_typed<compute_t<decltype(tag)>>(args); },
      /*allow_half=*/false);
}

void weight_grad_cpu(const WeightGradArgs& args) {
  dispatch_floating(
      args.grad_weights.dtype, "grad_weights",
      [&](auto tag) { weight_grad_typed<compute_t<decltype(tag)>>(args); }, /*allow_half=*/false);
}

}  // namespace wsss::random_walk
