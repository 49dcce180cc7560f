// Patch correlation with spatial-correlation-sampler's semantics: the shared
// math and the launchers.
//
//   out[b, ph, pw, h, w] = sum_c sum_{i < kH, j < kW} in1[b, c, y, x] * in2[b, c, y + dy, x + dx]
//   y = -pad_h + h * stride_h + i * dilation_h,   dy = (ph - (patch_h - 1) / 2) * dilation_patch_h
//
// (likewise x, dx); taps outside either input contribute 0. The kernels take
// channels-last copies (in1, in2 [B, H, W, C]) so that every inner loop is a
// contiguous dot product or axpy over C; the output is [B, pH, pW, oH, oW].
// Both gradients are gathers over the outputs that read an input pixel, so
// no kernel needs atomics and the backward costs what the forward costs.
#pragma once

#include <cstdint>

#include "common/array_view.h"
#include "common/dtype.h"

namespace wsss::correlation {

struct Geometry {
  int kernel_h = 1, kernel_w = 1, patch_h = 1, patch_w = 1;
  int stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0;
  int dilation_h = 1, dilation_w = 1, dilation_patch_h = 1, dilation_patch_w = 1;

  WSSS_HD int64_t out_h(int64_t height) const {
    return (height + 2 * pad_h - (dilation_h * (kernel_h - 1) + 1)) / stride_h + 1;
  }
  WSSS_HD int64_t out_w(int64_t width) const {
    return (width + 2 * pad_w - (dilation_w * (kernel_w - 1) + 1)) / stride_w + 1;
  }
  // Displacement of patch row ph / column pw.
  WSSS_HD int64_t shift_y(int ph) const { return static_cast<int64_t>(ph - (patch_h - 1) / 2) * dilation_patch_h; }
  WSSS_HD int64_t shift_x(int pw) const { return static_cast<int64_t>(pw - (patch_w - 1) / 2) * dilation_patch_w; }
};

// The output index o along one axis whose kernel tap i reads input index y,
// or -1: y = -pad + o * stride + i * dilation.
WSSS_HD int64_t output_reading(int64_t y, int i, int pad, int stride, int dilation, int64_t out_size) {
  const int64_t numerator = y + pad - static_cast<int64_t>(i) * dilation;
  if (numerator < 0 || numerator % stride != 0) return -1;
  const int64_t o = numerator / stride;
  return o < out_size ? o : -1;
}

WSSS_HD bool inside(int64_t y, int64_t x, int64_t height, int64_t width) {
  return y >= 0 && y < height && x >= 0 && x < width;
}

// Calls visit(y, x, y2, x2) for every kernel tap of output (h, w) at
// displacement (dy, dx) whose in1 pixel (y, x) and in2 pixel (y2, x2) both
// lie inside the inputs: the products the output sums.
template <class Visit>
WSSS_HD void for_each_product(const Geometry& g, int64_t height, int64_t width, int64_t h, int64_t w, int64_t dy,
                              int64_t dx, Visit&& visit) {
  for (int i = 0; i < g.kernel_h; ++i)
    for (int j = 0; j < g.kernel_w; ++j) {
      const int64_t y = -g.pad_h + h * g.stride_h + static_cast<int64_t>(i) * g.dilation_h;
      const int64_t x = -g.pad_w + w * g.stride_w + static_cast<int64_t>(j) * g.dilation_w;
      if (inside(y, x, height, width) && inside(y + dy, x + dx, height, width)) visit(y, x, y + dy, x + dx);
    }
}

// Calls visit(h, w, p, y2, x2) for every output (h, w) and displacement p
// whose sum reads in1 pixel (y, x), in2 pixel (y2, x2) being its partner.
template <class Visit>
WSSS_HD void for_each_reader_of_in1(const Geometry& g, int64_t height, int64_t width, int64_t y, int64_t x,
                                    Visit&& visit) {
  const int64_t out_h = g.out_h(height), out_w = g.out_w(width), patches = static_cast<int64_t>(g.patch_h) * g.patch_w;
  for (int i = 0; i < g.kernel_h; ++i) {
    const int64_t h = output_reading(y, i, g.pad_h, g.stride_h, g.dilation_h, out_h);
    if (h < 0) continue;
    for (int j = 0; j < g.kernel_w; ++j) {
      const int64_t w = output_reading(x, j, g.pad_w, g.stride_w, g.dilation_w, out_w);
      if (w < 0) continue;
      for (int64_t p = 0; p < patches; ++p) {
        const int64_t y2 = y + g.shift_y(static_cast<int>(p / g.patch_w));
        const int64_t x2 = x + g.shift_x(static_cast<int>(p % g.patch_w));
        if (inside(y2, x2, height, width)) visit(h, w, p, y2, x2);
      }
    }
  }
}

// Calls visit(h, w, p, y1, x1) for every output (h, w) and displacement p
// whose sum reads in2 pixel (y, x), in1 pixel (y1, x1) being its partner.
template <class Visit>
WSSS_HD void for_each_reader_of_in2(const Geometry& g, int64_t height, int64_t width, int64_t y, int64_t x,
                                    Visit&& visit) {
  const int64_t out_h = g.out_h(height), out_w = g.out_w(width), patches = static_cast<int64_t>(g.patch_h) * g.patch_w;
  for (int64_t p = 0; p < patches; ++p) {
    const int64_t y1 = y - g.shift_y(static_cast<int>(p / g.patch_w));
    const int64_t x1 = x - g.shift_x(static_cast<int>(p % g.patch_w));
    if (!inside(y1, x1, height, width)) continue;
    for (int i = 0; i < g.kernel_h; ++i) {
      const int64_t h = output_reading(y1, i, g.pad_h, g.stride_h, g.dilation_h, out_h);
      if (h < 0) continue;
      for (int j = 0; j < g.kernel_w; ++j) {
        const int64_t w = output_reading(x1, j, g.pad_w, g.stride_w, g.dilation_w, out_w);
        if (w >= 0) visit(h, w, p, y1, x1);
      }
    }
  }
}

// forward: in1, in2 [B, H, W, C] -> out [B, pH, pW, oH, oW].
// backward: grad [B, pH, pW, oH, oW] with in1, in2 -> grad_in1, grad_in2 [B, H, W, C]
// (either may be empty, then it is not computed).
struct ForwardArgs {
  ArrayView in1, in2, out;
  Geometry geometry;
};

struct BackwardArgs {
  ArrayView in1, in2, grad, grad_in1, grad_in2;
  Geometry geometry;
};

void forward(const ForwardArgs& args, uintptr_t stream);
void backward(const BackwardArgs& args, uintptr_t stream);

void forward_cpu(const ForwardArgs& args);
void backward_cpu(const BackwardArgs& args);
#if defined(WSSS_WITH_CUDA)
void forward_cuda(const ForwardArgs& args, uintptr_t stream);
void backward_cuda(const BackwardArgs& args, uintptr_t stream);
#endif

}  // namespace wsss::correlation
