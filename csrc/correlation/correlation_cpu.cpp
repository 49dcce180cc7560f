// Correlation on the CPU: OpenMP over output rows (forward) and input rows
// (backward); every inner loop is over the channels of a channels-last pixel.
#include <algorithm>
#include <vector>

#include "common/parallel.h"
#include "correlation/correlation.h"

namespace wsss::correlation {
namespace {

template <class T>
WSSS_CPU_VECTORIZED T dot(const T* a, const T* b, int64_t n) {
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t c = 0; c < n; ++c) sum += a[c] * b[c];
  return sum;
}

template <class T>
WSSS_CPU_VECTORIZED void axpy(T alpha, const T* x, T* y, int64_t n) {
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) y[c] += alpha * x[c];
}

template <class T>
void forward_typed(const ForwardArgs& args) {
  const Geometry& g = args.geometry;
  const int64_t batch = args.in1.shape[0], height = args.in1.shape[1], width = args.in1.shape[2];
  const int64_t channels = args.in1.shape[3], out_h = g.out_h(height), out_w = g.out_w(width);
  const T* in1 = args.in1.as<const T>();
  const T* in2 = args.in2.as<const T>();
  T* out = args.out.as<T>();
  const int64_t patches = static_cast<int64_t>(g.patch_h) * g.patch_w, out_plane = out_h * out_w;
#pragma omp parallel for num_threads(wsss::cpu_threads()) schedule(dynamic, 1)
  for (int64_t task = 0; task < batch * out_h; ++task) {
    const int64_t b = task / out_h, h = task % out_h;
    const T* image1 = in1 + b * height * width * channels;
    const T* image2 = in2 + b * height * width * channels;
    for (int64_t w = 0; w < out_w; ++w)
      for (int64_t p = 0; p < patches; ++p) {
        const int64_t dy = g.shift_y(static_cast<int>(p / g.patch_w)), dx = g.shift_x(static_cast<int>(p % g.patch_w));
        T sum = 0;
        for_each_product(g, height, width, h, w, dy, dx, [&](int64_t y, int64_t x, int64_t y2, int64_t x2) {
          sum += dot(image1 + (y * width + x) * channels, image2 + (y2 * width + x2) * channels, channels);
        });
        out[(b * patches + p) * out_plane + h * out_w + w] = sum;
      }
  }
}

template <class T>
void backward_typed(const BackwardArgs& args) {
  const Geometry& g = args.geometry;
  const int64_t batch = args.in1.shape[0], height = args.in1.shape[1], width = args.in1.shape[2];
  const int64_t channels = args.in1.shape[3], out_h = g.out_h(height), out_w = g.out_w(width);
  const int64_t patches = static_cast<int64_t>(g.patch_h) * g.patch_w, out_plane = out_h * out_w;
  const T* in1 = args.in1.as<const T>();
  const T* in2 = args.in2.as<const T>();
  const T* grad = args.grad.as<const T>();
  T* grad_in1 = args.grad_in1.as<T>();
  T* grad_in2 = args.grad_in2.as<T>();
#pragma omp parallel for num_threads(wsss::cpu_threads()) schedule(dynamic, 1)
  for (int64_t task = 0; task < batch * height; ++task) {
    const int64_t b = task / height, y = task % height;
    const T* image1 = in1 + b * height * width * channels;
    const T* image2 = in2 + b * height * width * channels;
    const T* grad_b = grad + b * patches * out_plane;
    for (int64_t x = 0; x < width; ++x) {
      if (grad_in1 != nullptr) {
        T* target = grad_in1 + ((b * height + y) * width + x) * channels;
        std::fill(target, target + channels, T(0));
        for_each_reader_of_in1(g, height, width, y, x, [&](int64_t h, int64_t w, int64_t p, int64_t y2, int64_t x2) {
          axpy(grad_b[p * out_plane + h * out_w + w], image2 + (y2 * width + x2) * channels, target, channels);
        });
      }
      if (grad_in2 != nullptr) {
        T* target = grad_in2 + ((b * height + y) * width + x) * channels;
        std::fill(target, target + channels, T(0));
        for_each_reader_of_in2(g, height, width, y, x, [&](int64_t h, int64_t w, int64_t p, int64_t y1, int64_t x1) {
          axpy(grad_b[p * out_plane + h * out_w + w], image1 + (y1 * width + x1) * channels, target, channels);
        });
      }
    }
  }
}

}  // namespace

void forward_cpu(const ForwardArgs& args) {
  dispatch_floating(
      args.in1.dtype, "in1", [&](auto tag) { forward_typed<compute_t<decltype(tag)>>(args); }, /*allow_half=*/false);
}

void backward_cpu(const BackwardArgs& args) {
  dispatch_floating(
      args.in1.dtype, "in1", [&](auto tag) { backward_typed<compute_t<decltype(tag)>>(args); }, /*allow_half=*/false);
}

}  // namespace wsss::correlation
