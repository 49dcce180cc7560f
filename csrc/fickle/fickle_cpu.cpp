// FickleNet masks on the CPU: OpenMP over (row, channel) planes. The keep
// bits are drawn one map row at a time, Philox vectorised across positions;
// the masked taps and their transpose are gathers (the transpose sums an
// image's samples in a fixed order), so results do not depend on the thread
// count.
#include <algorithm>
#include <vector>

#include "common/parallel.h"
#include "fickle/fickle.h"

namespace wsss::fickle {
namespace {

// Columns j with j + dx inside [0, width).
inline void valid_columns(int64_t dx, int64_t width, int64_t& lo, int64_t& hi) {
  lo = std::min(std::max<int64_t>(-dx, 0), width);
  hi = std::max(std::min(width - dx, width), lo);
}

WSSS_CPU_VECTORIZED void draw_row(const MaskParams& mask, uint32_t row, uint32_t channel, uint32_t first_position,
                                  int64_t count, uint32_t* __restrict bits) {
  std::fill(bits, bits + count, 0u);
  for (int group = 0; group * 4 < mask.taps(); ++group)
    for (int64_t j = 0; j < count; ++j)
      bits[j] |= group_keep_bits(mask, row, channel, first_position + static_cast<uint32_t>(j),
                                 static_cast<uint32_t>(group))
                 << (4 * group);
  for (int64_t j = 0; j < count; ++j) bits[j] = finish_keep_bits(mask, bits[j]);
}

// Where one tap reads: x[i + dy, j + dx] for output rows [i_lo, i_hi) and
// columns [lo, hi); zero elsewhere.
struct TapWindow {
  int tap;
  int64_t dy, dx, lo, hi, i_lo, i_hi;

  TapWindow(int kernel_size, int tap_index, int64_t height, int64_t width) : tap(tap_index) {
    tap_shift(kernel_size, tap, dy, dx);
    valid_columns(dx, width, lo, hi);
    i_lo = std::clamp<int64_t>(-dy, 0, height);
    i_hi = std::max(i_lo, std::min(height, height - dy));
  }
};

// target [H, W] = the kept units of one tap of one (row, channel) plane.
template <class T>
void masked_plane(const T* source, const uint32_t* unit_bits, const TapWindow& w, T kept, int64_t height,
                  int64_t width, T* target) {
  std::fill(target, target + w.i_lo * width, T(0));
  for (int64_t i = w.i_lo; i < w.i_hi; ++i) {
    const T* source_row = source + (i + w.dy) * width + w.dx;
    T* target_row = target + i * width;
    std::fill(target_row, target_row + w.lo, T(0));
#pragma omp simd
    for (int64_t j = w.lo; j < w.hi; ++j)
      target_row[j] = (unit_bits[i * width + j] >> w.tap & 1u) ? kept * source_row[j] : T(0);
    std::fill(target_row + w.hi, target_row + width, T(0));
  }
  std::fill(target + w.i_hi * width, target + height * width, T(0));
}

// Below this many units a parallel region costs more than it saves.
constexpr int64_t kMinParallelUnits = 1 << 14;

template <class T>
void masked_tap_typed(const TapArgs& args) {
  const ArrayView& x = args.transpose ? args.output : args.input;
  const ArrayView& rows = args.transpose ? args.input : args.output;
  const int64_t batch = x.shape[0], channels = x.shape[1], height = x.shape[2], width = x.shape[3];
  const int64_t samples = rows.shape[0] / batch, plane = height * width, count = args.tap_count;
  const uint32_t* bits = args.bits.as<const uint32_t>();
  const int centre = args.kernel_size * args.kernel_size / 2;
  std::vector<TapWindow> windows;
  std::vector<T> kept;
  for (int k = 0; k < count; ++k) {
    windows.emplace_back(args.kernel_size, args.tap + k, height, width);
    kept.push_back(static_cast<T>(args.tap + k == centre ? 1.0f : args.keep_scale));
  }
  const int threads = rows.numel() >= kMinParallelUnits ? wsss::cpu_threads() : 1;
  if (!args.transpose) {
    const T* in = x.as<const T>();
    T* out = rows.as<T>();
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) if (threads > 1)
    for (int64_t rc = 0; rc < rows.shape[0] * channels; ++rc) {
      const int64_t r = rc / channels, c = rc % channels;
      const T* source = in + ((r % batch) * channels + c) * plane;
      for (int64_t k = 0; k < count; ++k)
        masked_plane(source, bits + rc * plane, windows[k], kept[k], height, width, out + (rc * count + k) * plane);
    }
    return;
  }
  // grad_x[b, c, (i, j) + shift] += sum_s keep(s B + b, c, i, j) * grad[s B + b, c, i, j], tap by tap.
  const T* grad = rows.as<const T>();
  T* grad_x = x.as<T>();
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) if (threads > 1)
  for (int64_t bc = 0; bc < batch * channels; ++bc) {
    T* target = grad_x + bc * plane;
    for (int64_t k = 0; k < count; ++k) {
      const TapWindow& w = windows[k];
      for (int64_t s = 0; s < samples; ++s) {
        const int64_t rc = s * batch * channels + bc;
        const T* source = grad + (rc * count + k) * plane;
        const uint32_t* unit_bits = bits + rc * plane;
        for (int64_t i = w.i_lo; i < w.i_hi; ++i) {
          T* target_row = target + (i + w.dy) * width + w.dx;
#pragma omp simd
          for (int64_t j = w.lo; j < w.hi; ++j)
            target_row[j] += (unit_bits[i * width + j] >> w.tap & 1u) ? kept[k] * source[i * width + j] : T(0);
        }
      }
    }
  }
}

}  // namespace

void mask_bits_cpu(const BitsArgs& args) {
  const int64_t rows = args.bits.shape[0], channels = args.bits.shape[1];
  const int64_t plane = args.bits.shape[2] * args.bits.shape[3];
  uint32_t* bits = args.bits.as<uint32_t>();
  // Whole planes per task; Philox keeps each value independent of the split.
  const int threads = rows * channels * plane >= kMinParallelUnits ? wsss::cpu_threads() : 1;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 4) if (threads > 1)
  for (int64_t rc = 0; rc < rows * channels; ++rc)
    draw_row(args.mask, static_cast<uint32_t>(args.first_row + rc / channels), static_cast<uint32_t>(rc % channels),
             0, plane, bits + rc * plane);
}

void masked_tap_cpu(const TapArgs& args) {
  const DType dtype = args.transpose ? args.output.dtype : args.input.dtype;
  dispatch_floating(
      dtype, "x", [&](auto tag) { masked_tap_typed<compute_t<decltype(tag)>>(args); }, /*allow_half=*/false);
}

void mask_counts_cpu(const CountArgs& args) {
  const int64_t rows = args.bits.shape[0], channels = args.bits.shape[1];
  const int64_t height = args.bits.shape[2], width = args.bits.shape[3];
  const int taps = args.kernel_size * args.kernel_size, centre = taps / 2;
  const uint32_t* bits = args.bits.as<const uint32_t>();
  dispatch_floating(
      args.counts.dtype, "counts",
      [&](auto tag) {
        using T = compute_t<decltype(tag)>;
        T* counts = args.counts.as<T>();
#pragma omp parallel for num_threads(wsss::cpu_threads()) schedule(dynamic, 4)
        for (int64_t rc = 0; rc < rows * channels; ++rc) {
          const uint32_t* unit_bits = bits + rc * height * width;
          for (int tap = 0; tap < taps; ++tap) {
            int64_t dy, dx, lo, hi;
            tap_shift(args.kernel_size, tap, dy, dx);
            valid_columns(dx, width, lo, hi);
            int64_t kept = 0;
            for (int64_t i = std::clamp<int64_t>(-dy, 0, height); i < std::min(height, height - dy); ++i)
              for (int64_t j = lo; j < hi; ++j) kept += unit_bits[i * width + j] >> tap & 1u;
            counts[rc * taps + tap] = static_cast<T>(kept) * static_cast<T>(tap == centre ? 1.0f : args.keep_scale);
          }
        }
      },
      /*allow_half=*/false);
}

}  // namespace wsss::fickle
