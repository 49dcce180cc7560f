// FickleNet's centre-preserving random selection of hidden units (Lee et al.,
// CVPR 2019), without the expanded map: the shared math and the launchers.
//
// The paper expands x [B, C, H, W] so that the k x k window of every output
// position (i, j) is its own block, drops units of the expanded map, and
// applies a k x k conv with stride k. Unit (c, i, j, tap) of the expanded map
// is x[c, i + u - k/2, j + v - k/2] (zero outside), tap = u * k + v. Here the
// map is never built:
//   1. mask_bits draws every unit's keep decision once, as one bit per tap:
//      bits [R, C, H, W] int32 (k <= 5), R = n_samples x B rows, sample s of
//      image b being row s * B + b;
//   2. masked_tap produces, for one tap (or several), the masked, shifted input
//          out[r, c, i, j] = keep(r, c, i, j, tap) * x[r % B, c, i + u - k/2, j + v - k/2]
//      (or adds its transpose into x's gradient), and the classifier is a
//      sum of k^2 1 x 1 convs of these (one matmul over all taps at once).
//
// Decisions are a pure function of (seed, row, channel, position = i W + j,
// tap) through Philox4x32-10: taps 4q .. 4q + 3 take words 0 .. 3 of the draw
// at counter (row, channel, position, q). A unit is kept if the top 24 bits
// of its word are >= p 2^24 (probability 1 - p); the centre tap is always
// kept. Kept off-centre units are multiplied by keep_scale (1, or 1 / (1 - p)).
#pragma once

#include <cstdint>

#include "common/array_view.h"
#include "common/dtype.h"
#include "common/philox.h"

namespace wsss::fickle {

constexpr int kMaxKernelSize = 5;  // k^2 = 25 tap bits fit one int32 per unit

struct MaskParams {
  uint64_t seed = 0;
  int kernel_size = 3;
  uint32_t drop_threshold = 0;  // ceil(p * 2^24): drawn 24-bit values below it drop the unit
  float keep_scale = 1.0f;      // multiplier of kept non-centre units

  WSSS_HD int taps() const { return kernel_size * kernel_size; }
  WSSS_HD int centre() const { return taps() / 2; }
};

// Keep bits of taps 4 group .. 4 group + 3 of unit (row, channel, position)
// (bit 0 = tap 4 group): one Philox draw.
WSSS_HD uint32_t group_keep_bits(const MaskParams& mask, uint32_t row, uint32_t channel, uint32_t position,
                                 uint32_t group) {
  uint32_t w0, w1, w2, w3;
  philox4x32_10_words(row, channel, position, group, static_cast<uint32_t>(mask.seed),
                      static_cast<uint32_t>(mask.seed >> 32), w0, w1, w2, w3);
  return static_cast<uint32_t>((w0 >> 8) >= mask.drop_threshold) |
         static_cast<uint32_t>((w1 >> 8) >= mask.drop_threshold) << 1 |
         static_cast<uint32_t>((w2 >> 8) >= mask.drop_threshold) << 2 |
         static_cast<uint32_t>((w3 >> 8) >= mask.drop_threshold) << 3;
}

// Clears the bits past the last tap and sets the centre's (always kept).
WSSS_HD uint32_t finish_keep_bits(const MaskParams& mask, uint32_t bits) {
  return (bits & ((1u << mask.taps()) - 1u)) | (1u << mask.centre());
}

// The keep bits of every tap of unit (row, channel, position): bit t set if
// tap t is kept. Three Philox draws for k = 3.
WSSS_HD uint32_t unit_keep_bits(const MaskParams& mask, uint32_t row, uint32_t channel, uint32_t position) {
  uint32_t bits = 0;
  for (int group = 0; group * 4 < mask.taps(); ++group)
    bits |= group_keep_bits(mask, row, channel, position, static_cast<uint32_t>(group)) << (4 * group);
  return finish_keep_bits(mask, bits);
}

// The multiplier of a unit's tap given its keep bits.
WSSS_HD float tap_scale(uint32_t bits, int tap, int centre, float keep_scale) {
  return (bits >> tap & 1u) ? (tap == centre ? 1.0f : keep_scale) : 0.0f;
}

// Tap (u, v) reads x[i + dy, j + dx].
WSSS_HD void tap_shift(int kernel_size, int tap, int64_t& dy, int64_t& dx) {
  dy = tap / kernel_size - kernel_size / 2;
  dx = tap % kernel_size - kernel_size / 2;
}

// bits [R, C, H, W] int32: the decisions of rows first_row .. first_row + R
// (a slice of a larger set of selections, drawn in chunks).
struct BitsArgs {
  ArrayView bits;
  MaskParams mask;
  int64_t first_row = 0;
};

// Taps tap .. tap + tap_count - 1 at once. Forward: output [R, C n, H, W]
// (n = tap_count), channel c n + k = the masked, shifted input x [B, C, H, W]
// of tap (tap + k): with every tap, the classifier is one matmul of
// [O, C k^2] weights (their own layout) with it, instead of k^2 small ones.
// Transpose: output grad_x [B, C, H, W] += the adjoint applied to input grad
// [R, C n, H, W], tap by tap in order (the sums of n one-tap calls).
struct TapArgs {
  ArrayView input, output, bits;
  int kernel_size = 3;
  float keep_scale = 1.0f;
  int tap = 0;
  bool transpose = false;
  int tap_count = 1;
};

// counts [R, C, k^2]: per row, channel and tap, the sum of the tap's
// multipliers over the positions whose tap lies inside the map (the
// closed-form Grad-CAM weights need only these).
struct CountArgs {
  ArrayView bits, counts;
  int kernel_size = 3;
  float keep_scale = 1.0f;
};

void mask_bits(const BitsArgs& args, uintptr_t stream);
void masked_tap(const TapArgs& args, uintptr_t stream);
void mask_counts(const CountArgs& args, uintptr_t stream);

void mask_bits_cpu(const BitsArgs& args);
void masked_tap_cpu(const TapArgs& args);
void mask_counts_cpu(const CountArgs& args);
#if defined(WSSS_WITH_CUDA)
void mask_bits_cuda(const BitsArgs& args, uintptr_t stream);
void masked_tap_cuda(const TapArgs& args, uintptr_t stream);
void mask_counts_cuda(const CountArgs& args, uintptr_t stream);
#endif

}  // namespace wsss::fickle
