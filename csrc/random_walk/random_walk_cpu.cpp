// Random walk on the CPU: OpenMP over output rows. The steps (walk_steps)
// read zero-padded copies of the maps, so each tap of a row is one shifted
// row and the sums stay in registers (common/tap_strips.h); the weight
// gradient reads one shifted source row per tap and row, contiguous loops
// that vectorise.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <vector>

#include "common/parallel.h"
#include "common/tap_strips.h"
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

// The steps, run in one call. Channels walk independently, so each thread
// takes whole (image, channel group) items and runs every step on them with
// no barrier at all: a busy core delays only its own item, and the item's
// buffers stay in cache across the steps.
//
// Layout. Both buffers of an item are planes with `reach` zero rows and
// columns around the map (reach = the largest |dy|, |dx| of the offsets), a
// left margin rounded to whole strips, rows extended to whole 64-byte strips
// and planes an odd number of cache lines apart. Every tap of every pixel is
// then a plain shifted load: a tap outside the map reads zero, as the
// per-pixel bounds check did. The weights get the same layout (the
// transpose reads them at the source pixel: a shifted load too), without
// the padding in the forward direction, which reads them unshifted. The
// strips' extra columns are set back to zero after each row, so the padding
// stays zero for the next step.
template <class T>
struct WalkLayout {
  int64_t reach_y = 0, reach_x = 0;  // zero rows / columns around the map
  int64_t strips;                    // whole strips per row
  int64_t left;                      // column 0 of the map in a padded row
  int64_t pitch;                     // padded row length
  int64_t plane;                     // between padded planes (channels, taps)

  WalkLayout(const int32_t* offsets, int64_t taps, int64_t height, int64_t width, bool padded) {
    constexpr int L = kStripLanes<T>;
    for (int64_t t = 0; padded && t < taps; ++t) {
      reach_y = std::max<int64_t>(reach_y, std::abs(offsets[2 * t]));
      reach_x = std::max<int64_t>(reach_x, std::abs(offsets[2 * t + 1]));
    }
    // Larger shifts read nothing but padding: they are capped to it (shift()).
    reach_y = std::min(reach_y, height);
    reach_x = std::min(reach_x, width);
    strips = (width + L - 1) / L;
    left = round_up(reach_x, L);
    pitch = left + strips * L + round_up(reach_x, L);
    plane = odd_multiple((height + 2 * reach_y) * pitch, L);
  }

  int64_t at(int64_t y, int64_t x) const { return (y + reach_y) * pitch + left + x; }
  int64_t shift_y(int64_t dy) const { return std::max(-reach_y, std::min(reach_y, dy)); }
  int64_t shift_x(int64_t dx) const { return std::max(-reach_x, std::min(reach_x, dx)); }
};

template <class T>
void copy_into_padded(const T* map, int64_t planes, int64_t height, int64_t width, const WalkLayout<T>& s,
                      T* padded) {
  for (int64_t r = 0; r < planes * height; ++r)
    std::copy(map + r * width, map + (r + 1) * width, padded + (r / height) * s.plane + s.at(r % height, 0));
}

template <class T>
void walk_steps(const StepArgs& args) {
  const int64_t batch = args.x.shape[0], channels = args.x.shape[1];
  const int64_t height = args.x.shape[2], width = args.x.shape[3], taps = args.weights.shape[1];
  const int64_t plane = height * width;
  const int32_t* offsets = args.offsets.as<const int32_t>();
  const bool transpose = args.transpose;
  const WalkLayout<T> s(offsets, taps, height, width, true), ws(offsets, taps, height, width, transpose);
  // (image, channel group) items: one per register block of channels (or
  // more, to give every thread one). A group's two map buffers stay in cache
  // across the steps where all the channels' did not (one thread at IRNet's
  // size, 21 labels: 950 -> 409 ms), and a thread that another process slows
  // down holds back one block's walk, not an equal share of the map. Smaller
  // groups re-read the weights once more per step each (one channel per
  // group: 20x slower).
  const int threads = batch * channels * plane * taps >= kMinParallelWork ? cpu_threads() : 1;
  const int64_t groups =
      std::min<int64_t>(channels, std::max<int64_t>(channel_blocks(channels), (threads + batch - 1) / batch));
  // Zero-initialised: the padding is never written.
  StripBuffer<T> weights(batch * taps * ws.plane);
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
#pragma omp for schedule(dynamic)
    for (int64_t b = 0; b < batch; ++b)
      copy_into_padded(args.weights.as<const T>() + b * taps * plane, taps, height, width, ws,
                       weights.data() + b * taps * ws.plane);
    std::vector<const T*> tap_weights(taps), tap_sources(taps), block_sources(taps);
    StripBuffer<T> buffers[2];
#pragma omp for schedule(dynamic)
    for (int64_t item = 0; item < batch * groups; ++item) {
      const int64_t b = item / groups;
      int64_t g0, g1;  // the item's channels
      channel_block(item % groups, groups, channels, g0, g1);
      const int64_t count = g1 - g0, blocks = channel_blocks(count);
      for (auto& buffer : buffers) buffer.assign(count * s.plane);
      copy_into_padded(args.x.as<const T>() + (b * channels + g0) * plane, count, height, width, s,
                       buffers[0].data());
      const T* image_weights = weights.data() + b * taps * ws.plane;
      for (int64_t step = 0; step < args.steps; ++step) {
        const T* source = buffers[step % 2].data();
        T* target = buffers[(step + 1) % 2].data();
        for (int64_t row = 0; row < height; ++row) {
          for (int64_t t = 0; t < taps; ++t) {
            const int64_t dy = s.shift_y(offsets[2 * t]), dx = s.shift_x(offsets[2 * t + 1]);
            // Forward: the output pixel's weight; transpose: the source pixel's.
            tap_sources[t] = source + (transpose ? s.at(row - dy, -dx) : s.at(row + dy, dx));
            tap_weights[t] = image_weights + t * ws.plane + (transpose ? ws.at(row - dy, -dx) : ws.at(row, 0));
          }
          for (int64_t block = 0; block < blocks; ++block) {
            int64_t c0, c1;
            channel_block(block, blocks, count, c0, c1);
            for (int64_t t = 0; t < taps; ++t) block_sources[t] = tap_sources[t] + c0 * s.plane;
            T* out = target + c0 * s.plane + s.at(row, 0);
            gather_row_strips(static_cast<int>(c1 - c0), tap_weights.data(), block_sources.data(),
                              static_cast<int>(taps), static_cast<int>(taps), s.strips, s.plane, out);
            for (int64_t c = 0; c < c1 - c0; ++c)
              std::fill(out + c * s.plane + width, out + c * s.plane + s.strips * kStripLanes<T>, T(0));
          }
        }
      }
      const T* result = buffers[args.steps % 2].data();
      T* y = args.y.as<T>() + (b * channels + g0) * plane;
      for (int64_t r = 0; r < count * height; ++r) {
        const T* row = result + (r / height) * s.plane + s.at(r % height, 0);
        std::copy(row, row + width, y + r * width);
      }
    }
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
#pragma omp parallel for num_threads(wsss::cpu_threads()) schedule(dynamic, 8) if (batch * channels * plane * taps >= kMinParallelWork)
  for (int64_t task = 0; task < batch * taps * height; ++task) {
    const int64_t row = task % height, bt = task / height, b = bt / taps, t = bt % taps;
    weight_grad_row(grad_y + b * channels * plane, x + b * channels * plane, channels, height, width, row,
                    offsets[2 * t], offsets[2 * t + 1], grad_w + bt * plane + row * width);
  }
}

// v^n for a small integer n by repeated squaring: the published betas (8
// and 10) are integers, and this loop vectorises where std::pow does not. In
// double, as the weights' sums: float32 walks of 256 steps repeat whatever
// the weights get wrong, so these are rounded to the map's dtype once.
inline double integer_power(double v, int n) {
  double result = 1;
  for (; n > 0; n >>= 1, v *= v)
    if (n & 1) result *= v;
  return result;
}

// Integer betas up to this take integer_power; others std::pow.
constexpr double kMaxIntegerBeta = 64;

// One map row of the weights: the taps' powers and their sum, then the
// division (and the centre's 1 where the sum is 0). Returns the row's
// findings as bits: 1 a NaN or inf, 2 a negative value (over every tap,
// those outside the map included, as the torch checks read them).
template <class T>
WSSS_CPU_VECTORIZED int weights_row(const T* affinity, const int32_t* offsets, int64_t taps, int64_t centre,
                                    int64_t height, int64_t width, int64_t row, double beta, int integer_beta, T* weights,
                                    double* total) {
  const int64_t plane = height * width;
  int non_finite = 0, negative = 0;
  std::fill(total, total + width, 0.0);
  for (int64_t t = 0; t < taps; ++t) {
    const T* a = affinity + t * plane;
    T* w = weights + t * plane;
    const int64_t dx = offsets[2 * t + 1];
    const bool row_inside = row + offsets[2 * t] >= 0 && row + offsets[2 * t] < height;
    int64_t lo, hi;
    valid_columns(dx, width, lo, hi);
    if (!row_inside) lo = hi = 0;
#pragma omp simd reduction(| : non_finite, negative)
    for (int64_t col = 0; col < width; ++col) {
      const T v = a[col];
      non_finite |= static_cast<int>(!(v - v == T(0)));  // NaN - NaN and inf - inf are NaN
      negative |= static_cast<int>(v < T(0));
      const double powered = integer_beta >= 0 ? integer_power(v, integer_beta) : std::pow(double(v), beta);
      const bool inside = col >= lo && col < hi;
      w[col] = inside ? static_cast<T>(powered) : T(0);
      total[col] += inside ? powered : 0.0;
    }
  }
  for (int64_t t = 0; t < taps; ++t) {
    T* w = weights + t * plane;
#pragma omp simd
    for (int64_t col = 0; col < width; ++col)
      w[col] = total[col] == 0.0 ? w[col] : static_cast<T>(static_cast<double>(w[col]) / total[col]);
  }
  T* w = weights + centre * plane;
  for (int64_t col = 0; col < width; ++col) w[col] += total[col] == 0.0 ? T(1) : T(0);
  return non_finite | negative << 1;
}

template <class T>
AffinityStatus transition_weights_typed(const WeightsArgs& args) {
  const int64_t batch = args.affinity.shape[0], taps = args.affinity.shape[1];
  const int64_t height = args.affinity.shape[2], width = args.affinity.shape[3], plane = height * width;
  const int32_t* offsets = args.offsets.as<const int32_t>();
  int64_t centre = -1;
  for (int64_t t = 0; t < taps; ++t)
    if (offsets[2 * t] == 0 && offsets[2 * t + 1] == 0) centre = t;
  WSSS_CHECK(centre >= 0, "offsets must hold the centre tap (0, 0)");
  const bool integer = args.beta <= kMaxIntegerBeta && args.beta == std::floor(args.beta);
  const int integer_beta = integer ? static_cast<int>(args.beta) : -1;
  const T* affinity = args.affinity.as<const T>();
  T* weights = args.weights.as<T>();
  const int threads = batch * taps * plane >= kMinParallelWork ? cpu_threads() : 1;
  int found = 0;
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    std::vector<double> total(static_cast<size_t>(width));
#pragma omp for schedule(dynamic, 4) reduction(| : found)
    for (int64_t image_row = 0; image_row < batch * height; ++image_row) {
      const int64_t b = image_row / height, row = image_row % height;
      const int64_t offset = b * taps * plane + row * width;
      found |= weights_row(affinity + offset, offsets, taps, centre, height, width, row, args.beta,
                           integer_beta, weights + offset, total.data());
    }
  }
  if (found & 1) return AffinityStatus::kNonFinite;
  return found & 2 ? AffinityStatus::kNegative : AffinityStatus::kOk;
}

}  // namespace

AffinityStatus transition_weights_cpu(const WeightsArgs& args) {
  AffinityStatus status = AffinityStatus::kOk;
  dispatch_floating(
      args.affinity.dtype, "affinity",
      [&](auto tag) { status = transition_weights_typed<compute_t<decltype(tag)>>(args); }, /*allow_half=*/false);
  return status;
}

void step_cpu(const StepArgs& args) {
  dispatch_floating(
      args.weights.dtype, "weights", [&](auto tag) { walk_steps<compute_t<decltype(tag)>>(args); },
      /*allow_half=*/false);
}

void weight_grad_cpu(const WeightGradArgs& args) {
  dispatch_floating(
      args.grad_weights.dtype, "grad_weights",
      [&](auto tag) { weight_grad_typed<compute_t<decltype(tag)>>(args); }, /*allow_half=*/false);
}

}  // namespace wsss::random_walk
