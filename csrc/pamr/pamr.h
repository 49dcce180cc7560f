// PAMR, pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020): the
// shared math and the launchers.
//
// Taps. Every dilation d contributes the 8 neighbours d * {-1,0,1}^2 \ (0,0),
// in row-major order; tap k = 8 * (index of d) + n. Indices are clamped to
// the image (replicate padding), so dilations larger than the map are fine.
//
// Affinity, once per image: per image channel, std = the unbiased standard
// deviation of the 9 taps of every dilation, the centre counted once per
// dilation; logit_k = -mean_channels |I_centre - I_k| / (1e-8 + sigma * std);
// weights = softmax over all taps jointly. Stored [B, taps, H, W].
//
// Propagation, n times: M_i <- sum_k w_ik M_{tap k of i}. It is linear in M;
// its transpose (the backward) sends w_ik M_i back to the pixel tap k of i
// reads, which near the border is a whole run of pixels (clamping maps many
// pixels to the edge) and is written here as a gather over that run, so no
// kernel needs atomics.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "common/array_view.h"
#include "common/dtype.h"
#include "common/math.h"

namespace wsss::pamr {

constexpr int kNeighbours = 8;     // taps per dilation
constexpr int kMaxDilations = 64;  // 512 taps; the published setting has 6
constexpr int64_t kMaxDilation = int64_t{1} << 30;

// The dilations, by value so that they travel to CUDA kernels as an argument.
struct Dilations {
  int count = 0;
  int32_t values[kMaxDilations] = {};

  WSSS_HD int taps() const { return kNeighbours * count; }
};

struct Offset {
  int64_t dy, dx;
};

// Tap k's displacement: unit neighbour k % 8 (row-major, centre skipped)
// scaled by its dilation.
WSSS_HD Offset tap_offset(const Dilations& dilations, int k) {
  const int n = k % kNeighbours;
  const int cell = n < 4 ? n : n + 1;  // 3 x 3 cells 0..8, centre (4) skipped
  const int64_t d = dilations.values[k / kNeighbours];
  return {(cell / 3 - 1) * d, (cell % 3 - 1) * d};
}

WSSS_HD int64_t clamp_index(int64_t i, int64_t size) { return i < 0 ? 0 : (i >= size ? size - 1 : i); }

// The run [lo, hi] of indices i in [0, size) with clamp(i + shift) == j
// (empty when lo > hi): one index inside the map, several at its edges.
WSSS_HD void clamped_preimage(int64_t j, int64_t shift, int64_t size, int64_t& lo, int64_t& hi) {
  constexpr int64_t kFar = int64_t{1} << 40;  // beyond any index plus shift
  const int64_t target_lo = j == 0 ? -kFar : j;
  const int64_t target_hi = j == size - 1 ? kFar : j;
  lo = target_lo - shift > 0 ? target_lo - shift : 0;
  hi = target_hi - shift < size - 1 ? target_hi - shift : size - 1;
}

// Softmax-normalised affinities of pixel (y, x) to its taps, written to
// weights[k * plane] (weights points at the pixel in tap plane 0).
// image points at the pixel's image, [channels, H, W].
template <class C, class S>
WSSS_HD void pixel_affinity(const S* image, int64_t channels, int64_t height, int64_t width, int64_t y, int64_t x,
                            const Dilations& dilations, C sigma, C* weights) {
  const int64_t plane = height * width;
  const int taps = dilations.taps();
  for (int k = 0; k < taps; ++k) weights[k * plane] = 0;
  const C inv_channels = C(1) / static_cast<C>(channels);
  const int count = (kNeighbours + 1) * dilations.count;  // with the centre once per dilation
  for (int64_t c = 0; c < channels; ++c) {
    const S* channel = image + c * plane;
    auto tap_value = [&](int k) {
      const Offset o = tap_offset(dilations, k);
      return load_as<C>(channel, clamp_index(y + o.dy, height) * width + clamp_index(x + o.dx, width));
    };
    // The std is computed in a shifted, scaled form so that it neither
    // overflows (image * 1e20: squares past float's range) nor cancels (1e4
    // plus 0.01 noise: a sum of 54 values near 1e4 has an ulp of 0.06): taps
    // are read as differences to the centre (exact for nearby values), divided
    // by their largest magnitude, then the two-pass variance. The logits are
    // thereby invariant to a per-channel affine map of the image (up to the 1e-8).
    const C centre = load_as<C>(channel, y * width + x);
    C reach = 0;
    for (int k = 0; k < taps; ++k) {
      const C d = tap_value(k) - centre;
      reach = (d < 0 ? -d : d) > reach ? (d < 0 ? -d : d) : reach;
    }
    const C inv_reach = reach > 0 ? C(1) / reach : C(0);
    C sum = 0;  // of the scaled differences; the centre's own are 0
    for (int k = 0; k < taps; ++k) sum += (tap_value(k) - centre) * inv_reach;
    const C mean = sum / static_cast<C>(count);
    C squares = mean * mean * static_cast<C>(dilations.count);
    for (int k = 0; k < taps; ++k) {
      const C deviation = (tap_value(k) - centre) * inv_reach - mean;
      squares += deviation * deviation;
    }
    const C stddev = reach * std::sqrt(squares / static_cast<C>(count - 1));
    // Kept in the compute type: in fp16 the 1e-8 would flush to zero and a
    // flat patch would give 0 / 0.
    const C scale = inv_channels / (C(1e-8) + sigma * stddev);
    for (int k = 0; k < taps; ++k) {
      const C difference = centre - tap_value(k);
      weights[k * plane] -= (difference < 0 ? -difference : difference) * scale;
    }
  }
  C max = weights[0];
  for (int k = 1; k < taps; ++k) max = weights[k * plane] > max ? weights[k * plane] : max;
  C total = 0;
  for (int k = 0; k < taps; ++k) {
    const C e = exp_polynomial(weights[k * plane] - max);
    weights[k * plane] = e;
    total += e;
  }
  const C inv_total = C(1) / total;
  for (int k = 0; k < taps; ++k) weights[k * plane] *= inv_total;
}

// weights [B, taps, H, W] (compute dtype) from image [B, Ci, H, W].
struct AffinityArgs {
  ArrayView image, weights;
  Dilations dilations;
  double sigma = 0.1;
};

// out = P^steps(mask) (or (P^T)^steps(mask)); mask and out [B, C, H, W] of
// the weights' dtype, out not aliasing mask. The CPU backend runs every step
// in one call (its scratch stays in cache across them); CUDA takes one step
// per call.
struct PropagateArgs {
  ArrayView weights, mask, out;
  Dilations dilations;
  bool transpose = false;
  int64_t steps = 1;
};

// Checked conversion of the Python list.
Dilations make_dilations(const std::vector<int64_t>& values);

void affinity(const AffinityArgs& args, uintptr_t stream);
void propagate(const PropagateArgs& args, uintptr_t stream);

void affinity_cpu(const AffinityArgs& args);
void propagate_cpu(const PropagateArgs& args);
#if defined(WSSS_WITH_CUDA)
void affinity_cuda(const AffinityArgs& args, uintptr_t stream);
void propagate_cuda(const PropagateArgs& args, uintptr_t stream);
#endif

}  // namespace wsss::pamr
