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

// Rows padded by `pad` replicated columns on each side, so that every tap of
// every column is a plain shifted load: no clamping in the inner loops. Rows
// are clamped by choosing the source row, which costs nothing per column.
struct Padding {
  int64_t pad, pitch;  // replicated columns per side; padded row length
};

Padding padding_for(const Dilations& dilations, int64_t width) {
  int64_t reach = 0;
  for (int j = 0; j < dilations.count; ++j) reach = std::max<int64_t>(reach, dilations.values[j]);
  // A shift of width - 1 or more reads the edge column from every column,
  // so larger shifts are clamped to it and the padding never exceeds the row.
  const int64_t pad = std::min(reach, width - 1);
  return {pad, width + 2 * pad};
}

// The tap's column shift within the padding.
inline int64_t padded_shift(const Padding& p, int64_t dx) { return std::max(-p.pad, std::min(p.pad, dx)); }

template <class C, class S>
void pad_rows(const S* rows_in, int64_t rows, int64_t width, const Padding& p, C* padded) {
#pragma omp parallel for schedule(static) if (rows * p.pitch >= kMinParallelValues)
  for (int64_t r = 0; r < rows; ++r) {
    const S* source = rows_in + r * width;
    C* target = padded + r * p.pitch;
    for (int64_t x = 0; x < width; ++x) target[p.pad + x] = load_as<C>(source, x);
    std::fill(target, target + p.pad, target[p.pad]);
    std::fill(target + p.pad + width, target + p.pitch, target[p.pad + width - 1]);
  }
}

// Affinities of a run of n <= kAffinityChunk pixels of one row, vectorised
// across the pixels: pixel_affinity's arithmetic in the same order per pixel,
// with every tap of the run a contiguous shifted row. centre[c] and
// tap_rows[c * taps + k] point at the run's first pixel in image channel c
// (padded rows); the weights go to weights[k * plane + i]. logits is scratch
// of taps * kAffinityChunk values.
constexpr int64_t kAffinityChunk = 64;

template <class C>
WSSS_CPU_VECTORIZED void affinity_run(const C* const* centre, const C* const* tap_rows, int64_t channels,
                                      const Dilations& dilations, C sigma, int64_t n, C* logits_scratch, C* weights,
                                      int64_t plane) {
  constexpr int64_t N = kAffinityChunk;
  const int taps = dilations.taps();
  const int count = (kNeighbours + 1) * dilations.count;  // with the centre once per dilation
  const C inv_channels = C(1) / static_cast<C>(channels);
  auto logits = [&](int k) { return logits_scratch + k * N; };
  C reach[N], inv_reach[N], mean[N], squares[N], scale[N];
  for (int k = 0; k < taps; ++k) std::fill(logits(k), logits(k) + n, C(0));
  for (int64_t c = 0; c < channels; ++c) {
    const C* m = centre[c];
    const C* const* rows = tap_rows + c * taps;
    // The shifted, scaled two-pass std of pixel_affinity (see there why).
    std::fill(reach, reach + n, C(0));
    for (int k = 0; k < taps; ++k) {
      const C* t = rows[k];
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        const C d = t[i] - m[i];
        const C magnitude = d < 0 ? -d : d;
        reach[i] = magnitude > reach[i] ? magnitude : reach[i];
      }
    }
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      inv_reach[i] = reach[i] > 0 ? C(1) / reach[i] : C(0);
      mean[i] = 0;
    }
    for (int k = 0; k < taps; ++k) {
      const C* t = rows[k];
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) mean[i] += (t[i] - m[i]) * inv_reach[i];
    }
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      mean[i] = mean[i] / static_cast<C>(count);
      squares[i] = mean[i] * mean[i] * static_cast<C>(dilations.count);
    }
    for (int k = 0; k < taps; ++k) {
      const C* t = rows[k];
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        const C deviation = (t[i] - m[i]) * inv_reach[i] - mean[i];
        squares[i] += deviation * deviation;
      }
    }
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const C stddev = reach[i] * std::sqrt(squares[i] / static_cast<C>(count - 1));
      scale[i] = inv_channels / (C(1e-8) + sigma * stddev);
    }
    for (int k = 0; k < taps; ++k) {
      const C* t = rows[k];
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        const C difference = m[i] - t[i];
        logits(k)[i] -= (difference < 0 ? -difference : difference) * scale[i];
      }
    }
  }
  // Softmax over the taps; reach and mean are reused for the max and the total.
  C* max = reach;
  C* total = mean;
  std::copy(logits(0), logits(0) + n, max);
  for (int k = 1; k < taps; ++k)
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) max[i] = logits(k)[i] > max[i] ? logits(k)[i] : max[i];
  std::fill(total, total + n, C(0));
  for (int k = 0; k < taps; ++k)
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const C e = exp_polynomial(logits(k)[i] - max[i]);
      logits(k)[i] = e;
      total[i] += e;
    }
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) total[i] = C(1) / total[i];
  for (int k = 0; k < taps; ++k)
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) weights[k * plane + i] = logits(k)[i] * total[i];
}

template <class C, class S>
void affinity_typed(const AffinityArgs& args) {
  const int64_t batch = args.image.shape[0], channels = args.image.shape[1];
  const int64_t height = args.image.shape[2], width = args.image.shape[3];
  const int64_t plane = height * width;
  const int taps = args.dilations.taps();
  const C sigma = static_cast<C>(args.sigma);
  const Padding p = padding_for(args.dilations, width);
  std::vector<C> padded(static_cast<size_t>(batch * channels * height * p.pitch));
  pad_rows(args.image.as<const S>(), batch * channels * height, width, p, padded.data());
  C* weights = args.weights.as<C>();
  const int64_t chunks = (width + kAffinityChunk - 1) / kAffinityChunk;
#pragma omp parallel if (batch * plane * taps >= kMinParallelValues)
  {
    std::vector<const C*> centre(channels), tap_rows(channels * taps);
    std::vector<C> logits(taps * kAffinityChunk);
#pragma omp for schedule(static)
    for (int64_t task = 0; task < batch * height * chunks; ++task) {
      const int64_t chunk = task % chunks, y = (task / chunks) % height, b = task / (chunks * height);
      const int64_t x0 = chunk * kAffinityChunk, n = std::min(kAffinityChunk, width - x0);
      for (int64_t c = 0; c < channels; ++c) {
        const C* image_plane = padded.data() + (b * channels + c) * height * p.pitch;
        centre[c] = image_plane + y * p.pitch + p.pad + x0;
        for (int k = 0; k < taps; ++k) {
          const Offset o = tap_offset(args.dilations, k);
          tap_rows[c * taps + k] =
              image_plane + clamp_index(y + o.dy, height) * p.pitch + p.pad + padded_shift(p, o.dx) + x0;
        }
      }
      affinity_run(centre.data(), tap_rows.data(), channels, args.dilations, sigma, n, logits.data(),
                   weights + b * taps * plane + y * width + x0, plane);
    }
  }
}

// The forward step, blocked for registers. The mask is first copied into
// rows padded by `pad` replicated columns on each side, so every tap of every
// column is a plain shifted load (no clamping in the inner loop). Then a
// kLanes-wide strip of one output row is accumulated over all taps for a
// block of channels at once: each weight vector is loaded once per block,
// the sums never leave registers, and the strip is stored once.
// 64-byte strips: one AVX-512 register of fp32 (or fp64), two AVX2 ones.
template <class C>
constexpr int kLanes = 64 / sizeof(C);

// Strip [x0, x0 + kLanes) of row y for kBlock channels, over taps
// [0, taps) of the given pointers. tap_weights[k] and tap_sources[k] point at
// column 0 of weight plane k and of the padded source row tap k reads
// (channel 0 of the block); the channels are channel_stride apart. The sums
// start from zero (first) or from out.
template <class C, int kBlock>
WSSS_CPU_VECTORIZED void gather_strip(const C* const* tap_weights, const C* const* tap_sources, int taps,
                                      int64_t x0, int64_t channel_stride, bool first, C* out, int64_t plane) {
  constexpr int L = kLanes<C>;
  C acc[kBlock][L];
  for (int c = 0; c < kBlock; ++c)
#pragma omp simd
    for (int l = 0; l < L; ++l) acc[c][l] = first ? C(0) : out[c * plane + x0 + l];
  for (int k = 0; k < taps; ++k) {
    const C* w = tap_weights[k] + x0;
    const C* s = tap_sources[k] + x0;
    for (int c = 0; c < kBlock; ++c)
#pragma omp simd
      for (int l = 0; l < L; ++l) acc[c][l] += w[l] * s[c * channel_stride + l];
  }
  for (int c = 0; c < kBlock; ++c)
#pragma omp simd
    for (int l = 0; l < L; ++l) out[c * plane + x0 + l] = acc[c][l];
}

// Taps summed in registers before the sums go back to the output row: enough
// to amortise that round trip, few enough that the source lines a strip reads
// stay in L1 until the next strip reads them again.
#ifndef WSSS_PAMR_TAP_GROUP
#define WSSS_PAMR_TAP_GROUP 8
#endif
constexpr int kTapGroup = WSSS_PAMR_TAP_GROUP;

template <class C, int kBlock>
void gather_row_blocked(const C* const* tap_weights, const C* const* tap_sources, int taps, int64_t width,
                        int64_t channel_stride, C* out_row, int64_t plane) {
  constexpr int L = kLanes<C>;
  const int64_t full = width / L * L;  // columns covered by whole strips
  for (int k0 = 0; k0 < taps; k0 += kTapGroup)
    for (int64_t x0 = 0; x0 < full; x0 += L)
      gather_strip<C, kBlock>(tap_weights + k0, tap_sources + k0, std::min(kTapGroup, taps - k0), x0,
                              channel_stride, k0 == 0, out_row, plane);
  // The ragged end: one strip ending at the last column, over every tap at
  // once. The columns it shares with the last whole strip get the same sums,
  // added in the same order, so rewriting them changes nothing.
  if (full < width)
    gather_strip<C, kBlock>(tap_weights, tap_sources, taps, width - L, channel_stride, true, out_row, plane);
}

// The largest block of channels kept in registers: 8 strips of sums plus a
// weight strip fit the 32 AVX-512 registers.
constexpr int kMaxBlock = 8;

template <class C>
void gather_row_any_block(int block, const C* const* tap_weights, const C* const* tap_sources, int taps,
                          int64_t width, int64_t channel_stride, C* out_row, int64_t plane) {
  switch (block) {
#define WSSS_PAMR_BLOCK(n) \
  case n:                  \
    return gather_row_blocked<C, n>(tap_weights, tap_sources, taps, width, channel_stride, out_row, plane);
    WSSS_PAMR_BLOCK(1) WSSS_PAMR_BLOCK(2) WSSS_PAMR_BLOCK(3) WSSS_PAMR_BLOCK(4)
    WSSS_PAMR_BLOCK(5) WSSS_PAMR_BLOCK(6) WSSS_PAMR_BLOCK(7) WSSS_PAMR_BLOCK(8)
#undef WSSS_PAMR_BLOCK
  }
}

template <class C>
void gather_blocked(const PropagateArgs& args) {
  const int64_t batch = args.mask.shape[0], channels = args.mask.shape[1];
  const int64_t height = args.mask.shape[2], width = args.mask.shape[3];
  const int64_t plane = height * width;
  const int taps = args.dilations.taps();
  const C* weights = args.weights.as<const C>();
  C* out = args.out.as<C>();
  const Padding p = padding_for(args.dilations, width);
  std::vector<C> padded(static_cast<size_t>(batch * channels * height * p.pitch));
  pad_rows(args.mask.as<const C>(), batch * channels * height, width, p, padded.data());
  // Channels split into near-equal blocks of at most kMaxBlock (21 -> 7 + 7 + 7).
  const int64_t blocks = (channels + kMaxBlock - 1) / kMaxBlock;
  const int64_t padded_plane = height * p.pitch;
#pragma omp parallel if (batch * channels * plane * taps >= kMinParallelValues)
  {
    std::vector<const C*> tap_weights(taps), tap_sources(taps);
#pragma omp for schedule(static)
    for (int64_t task = 0; task < batch * height * blocks; ++task) {
      const int64_t block = task % blocks, y = (task / blocks) % height, b = task / (blocks * height);
      const int64_t c0 = block * channels / blocks, c1 = (block + 1) * channels / blocks;
      const C* source_block = padded.data() + (b * channels + c0) * padded_plane;
      for (int k = 0; k < taps; ++k) {
        const Offset o = tap_offset(args.dilations, k);
                tap_weights[k] = weights + (b * taps + k) * plane + y * width;
        tap_sources[k] = source_block + clamp_index(y + o.dy, height) * p.pitch + p.pad + padded_shift(p, o.dx);
      }
      gather_row_any_block(static_cast<int>(c1 - c0), tap_weights.data(), tap_sources.data(), taps, width,
                           padded_plane, out + (b * channels + c0) * plane + y * width, plane);
    }
  }
}

template <class C>
void propagate_typed(const PropagateArgs& args) {
  const int64_t batch = args.mask.shape[0], channels = args.mask.shape[1];
  const int64_t height = args.mask.shape[2], width = args.mask.shape[3];
  if (!args.transpose && width >= kLanes<C>) return gather_blocked<C>(args);
  const int64_t plane = height * width;
  const int64_t taps = args.dilations.taps();
  const C* weights = args.weights.as<const C>();
  const C* mask = args.mask.as<const C>();
  C* out = args.out.as<C>();
  const int64_t rows = batch * channels * height;
#pragma omp parallel for schedule(static) if (rows * width * taps >= kMinParallelValues)
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
