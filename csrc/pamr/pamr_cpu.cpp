// PAMR on the CPU: OpenMP over output rows. A propagation step builds one
// output row of one mask channel at a time; per tap the row is a shifted
// copy of one source row, so the inner loops are contiguous and vectorise,
// with the clamped columns at either end handled as runs of their own.
#include <algorithm>
#include <vector>

#include "common/parallel.h"
#include "pamr/pamr.h"

namespace wsss::pamr {
namespace {

// Below this many output values a parallel region costs more than it saves.
constexpr int64_t kMinParallelValues = 1 << 14;

// Columns [0, lo) read column 0 of the source row, [lo, hi) read x + dx,
// [hi, width) read the last column.
inline void interior_columns(int64_t dx, int64_t width, int64_t& lo, int64_t& hi) {
  lo = std::min(std::max<int64_t>(-dx, 0), width);
  hi = std::max<int64_t>(std::min(width - dx, width), lo);
}

// out_row[x] = sum_k w_k(y, x) * mask[clamp(y + dy_k), clamp(x + dx_k)].
template <class C>
WSSS_CPU_VECTORIZED void gather_row(const C* weights_row, int64_t plane, const C* mask_plane, int64_t height,
                                    int64_t width, int64_t y, const Dilations& dilations, C* out_row) {
  std::fill(out_row, out_row + width, C(0));
  for (int k = 0; k < dilations.taps(); ++k) {
    const Offset o = tap_offset(dilations, k);
    const C* w = weights_row + k * plane;
    const C* source = mask_plane + clamp_index(y + o.dy, height) * width;
    int64_t lo, hi;
    interior_columns(o.dx, width, lo, hi);
    const C first = source[0], last = source[width - 1];
    for (int64_t x = 0; x < lo; ++x) out_row[x] += w[x] * first;
#pragma omp simd
    for (int64_t x = lo; x < hi; ++x) out_row[x] += w[x] * source[x + o.dx];
    for (int64_t x = hi; x < width; ++x) out_row[x] += w[x] * last;
  }
}

// The transpose: out_row[jx] (row jy) = sum over taps k and pixels i whose
// tap k reads (jy, jx) of w_k(i) * grad(i). Inside the map that is the one
// pixel i = j - offset; the edge columns and rows collect whole runs.
template <class C>
WSSS_CPU_VECTORIZED void scatter_row_as_gather(const C* weights_image, int64_t plane, const C* grad_plane,
                                               int64_t height, int64_t width, int64_t jy, const Dilations& dilations,
                                               C* out_row) {
  std::fill(out_row, out_row + width, C(0));
  for (int k = 0; k < dilations.taps(); ++k) {
    const Offset o = tap_offset(dilations, k);
    int64_t iy_lo, iy_hi;
    clamped_preimage(jy, o.dy, height, iy_lo, iy_hi);
    // Interior target columns 1 .. width - 2 with their one source in the map.
    const int64_t jx_lo = std::max<int64_t>(1, o.dx), jx_hi = std::min<int64_t>(width - 2, width - 1 + o.dx);
    for (int64_t iy = iy_lo; iy <= iy_hi; ++iy) {
      const C* w = weights_image + k * plane + iy * width;
      const C* g = grad_plane + iy * width;
#pragma omp simd
      for (int64_t jx = jx_lo; jx <= jx_hi; ++jx) out_row[jx] += w[jx - o.dx] * g[jx - o.dx];
      // The edge columns, 0 and width - 1 (one column when the map has one).
      for (int64_t jx = 0; jx < width; jx += width > 1 ? width - 1 : 1) {
        int64_t ix_lo, ix_hi;
        clamped_preimage(jx, o.dx, width, ix_lo, ix_hi);
        C run = 0;
        for (int64_t ix = ix_lo; ix <= ix_hi; ++ix) run += w[ix] * g[ix];
        out_row[jx] += run;
      }
    }
  }
}

template <class C, class S>
void affinity_typed(const AffinityArgs& args) {
  const int64_t batch = args.image.shape[0], channels = args.image.shape[1];
  const int64_t height = args.image.shape[2], width = args.image.shape[3];
  const int64_t plane = height * width;
  const S* image = args.image.as<const S>();
  C* weights = args.weights.as<C>();
  const int64_t taps = args.dilations.taps();
  const C sigma = static_cast<C>(args.sigma);
#pragma omp parallel for num_threads(wsss::cpu_threads()) schedule(static) if (batch * plane * taps >= kMinParallelValues)
  for (int64_t row = 0; row < batch * height; ++row) {
    const int64_t b = row / height, y = row % height;
    for (int64_t x = 0; x < width; ++x)
      pixel_affinity<C, S>(image + b * channels * plane, channels, height, width, y, x, args.dilations, sigma,
                           weights + b * taps * plane + y * width + x);
  }
}

template <class C>
void propagate_typed(const PropagateArgs& args) {
  const int64_t batch = args.mask.shape[0], channels = args.mask.shape[1];
  const int64_t height = args.mask.shape[2], width = args.mask.shape[3];
  const int64_t plane = height * width;
  const int64_t taps = args.dilations.taps();
  const C* weights = args.weights.as<const C>();
  const C* mask = args.mask.as<const C>();
  C* out = args.out.as<C>();
  const int64_t rows = batch * channels * height;
#pragma omp parallel for num_threads(wsss::cpu_threads()) schedule(static) if (rows * width * taps >= kMinParallelValues)
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t y = row % height, bc = row / height, b = bc / channels;
    const C* mask_plane = mask + bc * plane;
    C* out_row = out + bc * plane + y * width;
    if (args.transpose)
      scatter_row_as_gather(weights + b * taps * plane, plane, mask_plane, height, width, y, args.dilations,
                            out_row);
    else
      gather_row(weights + b * taps * plane + y * width, plane, mask_plane, height, width, y, args.dilations,
                 out_row);
  }
}

}  // namespace

void affinity_cpu(const AffinityArgs& args) {
  dispatch_floating(args.image.dtype, "image", [&](auto storage_tag) {
    using S = decltype(storage_tag);
    affinity_typed<compute_t<S>, S>(args);
  });
}

void propagate_cpu(const PropagateArgs& args) {
  dispatch_floating(
      args.weights.dtype, "weights",
      [&](auto storage_tag) {
        using S = decltype(storage_tag);
        propagate_typed<compute_t<S>>(args);
      },
      /*allow_half=*/false);
}

}  // namespace wsss::pamr
