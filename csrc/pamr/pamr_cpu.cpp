// PAMR on the CPU: OpenMP over output rows. The affinity and the forward
// steps read maps through rows padded with replicated columns, so that each
// tap of a row is one contiguous shifted row and the inner loops vectorise
// across pixels without clamping; the forward steps also keep their sums in
// registers (see forward_steps). The transpose gathers each output row with
// the clamped runs at the edges handled on their own.
#include <algorithm>
#include <vector>

#include "common/parallel.h"
#include "common/tap_strips.h"
#include "pamr/pamr.h"

namespace wsss::pamr {
namespace {

// Below this many output values a parallel region costs more than it saves.
constexpr int64_t kMinParallelValues = 1 << 14;
// Rows (or row blocks) per work item when the threads share one image.
constexpr int64_t kTeamRows = 4;

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
#pragma omp parallel for num_threads(wsss::cpu_threads()) schedule(dynamic, 16) if (rows * p.pitch >= kMinParallelValues)
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
#pragma omp parallel num_threads(wsss::cpu_threads()) if (batch * plane * taps >= kMinParallelValues)
  {
    std::vector<const C*> centre(channels), tap_rows(channels * taps);
    std::vector<C> logits(taps * kAffinityChunk);
#pragma omp for schedule(dynamic, 4)
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

// The forward steps, run in one call, image by image so that an image's
// buffers stay in cache across the steps.
//
// Layout. The mask lives in two scratch buffers used in turn, rows padded
// with replicated columns (so every tap is a plain shifted load) and a left
// margin rounded to whole strips (so stores are aligned). The weights are
// re-laid out once as [y][tap][column]: the taps of a row are neighbours in
// memory, and rows of both are zero-extended to whole strips, so the ragged
// end of a row needs no code of its own (its extra columns compute 0 * x).
// Channel planes and tap rows are an odd number of cache lines apart.
//
// Kernel: common/tap_strips.h, summing one dilation's 8 taps in registers
// at a time for blocks of up to 8 channels.
template <class C>
constexpr int kLanes = kStripLanes<C>;

struct StepLayout {
  Padding padding;
  int64_t strips;          // whole strips per row
  int64_t left;            // the mask's column 0 in a scratch row
  int64_t pitch;           // scratch row length
  int64_t channel_stride;  // between scratch channel planes
  int64_t weight_pitch;    // between re-laid-out tap rows
};

template <class C>
StepLayout step_layout(const Dilations& dilations, int64_t height, int64_t width) {
  constexpr int L = kLanes<C>;
  StepLayout s;
  s.padding = padding_for(dilations, width);
  s.strips = (width + L - 1) / L;
  s.left = round_up(s.padding.pad, L);
  s.pitch = s.left + s.strips * L + round_up(s.padding.pad, L);
  s.channel_stride = odd_multiple(height * s.pitch, L);
  s.weight_pitch = s.strips % 2 ? s.strips * L : (s.strips + 1) * L;
  return s;
}

// Replicates a scratch row's first and last columns into its margins.
template <class C>
void fill_margins(C* row, const StepLayout& s, int64_t width) {
  std::fill(row, row + s.left, row[s.left]);
  std::fill(row + s.left + width, row + s.pitch, row[s.left + width - 1]);
}

// An image's scratch: the mask's two buffers used in turn and the re-laid-out weights.
template <class C>
struct ImageScratch {
  StripBuffer<C> buffers[2], tap_rows;
  std::vector<const C*> tap_weights, tap_sources;

  ImageScratch(const StepLayout& s, int64_t channels, int64_t height, int taps)
      : buffers{StripBuffer<C>(channels * s.channel_stride), StripBuffer<C>(channels * s.channel_stride)},
        tap_rows(height * taps * s.weight_pitch),
        tap_weights(taps),
        tap_sources(taps) {}
};

// One image's steps, by all the threads of the current parallel region
// (`team`: team_for() shares out every loop, a barrier where the next loop
// reads what the others wrote) or by the one thread that owns the image (no
// barrier at all).
template <class C>
void forward_image(const PropagateArgs& args, const StepLayout& s, int64_t b, ImageScratch<C>& shared,
                   std::vector<const C*>& tap_weights, std::vector<const C*>& tap_sources, bool team) {
  const int64_t channels = args.mask.shape[1], height = args.mask.shape[2], width = args.mask.shape[3];
  const int64_t plane = height * width;
  const int taps = args.dilations.taps();
  const C* weights = args.weights.as<const C>();
  const C* mask = args.mask.as<const C>();
  const int64_t blocks = channel_blocks(channels);
  // Every scratch row is written in full (margins included) before it is
  // read, so the extra columns of a last strip multiply zero weights by
  // finite values.
  team_for(team, height, kTeamRows, [&](int64_t y0, int64_t y1) {
    for (int64_t y = y0; y < y1; ++y)
      for (int k = 0; k < taps; ++k) {
        const C* row = weights + (b * taps + k) * plane + y * width;
        C* target = shared.tap_rows.data() + (y * taps + k) * s.weight_pitch;
        std::copy(row, row + width, target);
        std::fill(target + width, target + s.weight_pitch, C(0));
      }
  });
  team_for(team, channels * height, kTeamRows, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      C* row = shared.buffers[0].data() + (r / height) * s.channel_stride + (r % height) * s.pitch;
      std::copy(mask + (b * channels * height + r) * width, mask + (b * channels * height + r + 1) * width,
                row + s.left);
      fill_margins(row, s, width);
    }
  });
  for (int64_t step = 0; step < args.steps; ++step) {
    const C* source = shared.buffers[step % 2].data();
    C* target = shared.buffers[(step + 1) % 2].data();
    // Row-major over (row, block): a row's blocks share its weights in cache.
    team_for(team, height * blocks, kTeamRows, [&](int64_t t0, int64_t t1) {
      for (int64_t task = t0; task < t1; ++task) {
        const int64_t y = task / blocks, block = task % blocks;
        int64_t c0, c1;
        channel_block(block, blocks, channels, c0, c1);
        for (int k = 0; k < taps; ++k) {
          const Offset o = tap_offset(args.dilations, k);
          tap_weights[k] = shared.tap_rows.data() + (y * taps + k) * s.weight_pitch;
          tap_sources[k] = source + c0 * s.channel_stride + clamp_index(y + o.dy, height) * s.pitch + s.left +
                           padded_shift(s.padding, o.dx);
        }
        C* row = target + c0 * s.channel_stride + y * s.pitch;
        gather_row_strips(static_cast<int>(c1 - c0), tap_weights.data(), tap_sources.data(), taps, kNeighbours,
                          s.strips, s.channel_stride, row + s.left);
        for (int64_t c = c0; c < c1; ++c) fill_margins(row + (c - c0) * s.channel_stride, s, width);
      }
    });
  }
  const C* result = shared.buffers[args.steps % 2].data();
  C* out = args.out.as<C>();
  // Its barrier also keeps the scratch from being reused for the next image too early.
  team_for(team, channels * height, kTeamRows, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const C* row = result + (r / height) * s.channel_stride + (r % height) * s.pitch + s.left;
      std::copy(row, row + width, out + (b * channels * height + r) * width);
    }
  });
}

// With at least as many images as threads, each thread owns whole images
// (its own scratch, no barrier: a busy core delays only its images);
// otherwise the threads share each image's rows, a barrier per step.
template <class C>
void forward_steps(const PropagateArgs& args) {
  const int64_t batch = args.mask.shape[0], channels = args.mask.shape[1];
  const int64_t height = args.mask.shape[2], width = args.mask.shape[3];
  const int taps = args.dilations.taps();
  const StepLayout s = step_layout<C>(args.dilations, height, width);
  const bool parallel = batch * channels * height * width * taps >= kMinParallelValues;
  const int threads = parallel ? cpu_threads() : 1;
  if (batch >= threads) {
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
      ImageScratch<C> own(s, channels, height, taps);
#pragma omp for schedule(dynamic)
      for (int64_t b = 0; b < batch; ++b) forward_image(args, s, b, own, own.tap_weights, own.tap_sources, false);
    }
    return;
  }
  ImageScratch<C> shared(s, channels, height, taps);
#pragma omp parallel num_threads(threads)
  {
    std::vector<const C*> tap_weights(taps), tap_sources(taps);
    const bool team = thread_count() > 1;
    for (int64_t b = 0; b < batch; ++b) forward_image(args, s, b, shared, tap_weights, tap_sources, team);
  }
}

// The transpose, one step per pass through two buffers used in turn, the
// last step landing in out.
template <class C>
void transpose_steps(const PropagateArgs& args) {
  const int64_t batch = args.mask.shape[0], channels = args.mask.shape[1];
  const int64_t height = args.mask.shape[2], width = args.mask.shape[3];
  const int64_t plane = height * width;
  const int64_t taps = args.dilations.taps();
  const C* weights = args.weights.as<const C>();
  C* out = args.out.as<C>();
  std::vector<C> scratch(args.steps > 1 ? static_cast<size_t>(batch * channels * plane) : 0);
  const int64_t rows = batch * channels * height;
#pragma omp parallel num_threads(wsss::cpu_threads()) if (rows * width * taps >= kMinParallelValues)
  for (int64_t step = 0; step < args.steps; ++step) {
    const C* source = step == 0 ? args.mask.as<const C>() : ((args.steps - step) % 2 ? scratch.data() : out);
    C* target = (args.steps - 1 - step) % 2 ? scratch.data() : out;
#pragma omp for schedule(dynamic, 4)
    for (int64_t row = 0; row < rows; ++row) {
      const int64_t y = row % height, bc = row / height, b = bc / channels;
      scatter_row_as_gather(weights + b * taps * plane, plane, source + bc * plane, height, width, y,
                            args.dilations, target + bc * plane + y * width);
    }
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
        using C = compute_t<S>;
        if (args.transpose)
          transpose_steps<C>(args);
        else
          forward_steps<C>(args);
      },
      /*allow_half=*/false);
}

}  // namespace wsss::pamr
