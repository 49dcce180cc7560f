// Label propagation by local attention over reference frames (MAST, CorrFlow,
// CRW): the shared math and the launchers.
//
// Candidates of query pixel p: tap t of reference frame r, t over the
// (2 radius + 1)^2 window (row-major), candidate index r * T + t. Score =
// q_p . k_r(p + o_t) * inv_temperature. A tap outside the frame follows the
// border rule: kZero (MAST) keeps it in the softmax with score 0 and value 0,
// so the label mass is below 1 near the border; kExclude (CorrFlow) leaves it
// out of the softmax, so one-hot labels keep mass 1 everywhere (the window's
// centre is always inside, so no pixel is left without candidates). Weights:
// one softmax over the candidates, or over the top-k scores only (CRW).
// Output:
//     out_p = sum_candidates weight * v_r(p + o_t)
// computed with an online softmax, so the R x T x H x W affinities are never
// stored. The softmax runs on raw dot products d and scales their difference
// to the running maximum m, exp((d - m) * inv_temperature): d - m <= 0, so a
// tiny temperature can only underflow a term to 0, never overflow a score.
// The backward keeps the per-pixel statistics (m, log sum) and the top-k
// indices from the forward and recomputes scores (as flash attention does):
//     ds = w (g_p . v - D_p),  D_p = g_p . out_p
//     grad q_p += ds k inv_t,  grad k += ds q_p inv_t,  grad v += w g_p
// with the key/value gradients gathered over the query pixels that read
// them, so no kernel needs atomics.
//
// Layouts are channels-last: query [B, H, W, C], keys [B, R, H, W, C],
// values [B, R, H, W, L], out [B, H, W, L], stats [B, H, W, 2] (m, log sum),
// delta [B, H, W], topk_index [B, H, W, K] int32 (-1 where the excluded
// border leaves fewer than K candidates).
#pragma once

#include <cmath>
#include <cstdint>

#include "common/array_view.h"
#include "common/dtype.h"
#include "common/math.h"

namespace wsss::propagation {

constexpr int kMaxTopk = 64;

enum class Border : int { kZero = 0, kExclude = 1 };

struct Problem {
  int64_t batch = 0, refs = 0, height = 0, width = 0, channels = 0, labels = 0;
  int radius = 0;
  double inv_temperature = 1.0;
  int topk = 0;  // 0: every candidate
  Border border = Border::kZero;

  WSSS_HD int64_t side() const { return 2 * static_cast<int64_t>(radius) + 1; }
  WSSS_HD int64_t taps() const { return side() * side(); }
  WSSS_HD int64_t candidates() const { return refs * taps(); }
  WSSS_HD int64_t pixels() const { return height * width; }
};

// Four partial sums (channel i into sum i % 4): one sum chained through every
// channel was most of a candidate's time on the CPU (each add waits for the
// last). The same order on every backend.
template <class T>
WSSS_HD T dot(const T* a, const T* b, int64_t n) {
  T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += a[i] * b[i];
    s1 += a[i + 1] * b[i + 1];
    s2 += a[i + 2] * b[i + 2];
    s3 += a[i + 3] * b[i + 3];
  }
  for (; i < n; ++i) s0 += a[i] * b[i];
  return (s0 + s1) + (s2 + s3);
}

// The row of keys / values candidate `index` of pixel (y, x) of image b
// reads, or -1 outside the frame (or for an index that names no candidate,
// as the -1 filler of a short top-k list).
WSSS_HD int64_t candidate_pixel(const Problem& pb, int64_t b, int64_t index, int64_t y, int64_t x) {
  if (index < 0 || index >= pb.candidates()) return -1;
  const int64_t r = index / pb.taps(), t = index % pb.taps();
  const int64_t sy = y + t / pb.side() - pb.radius, sx = x + t % pb.side() - pb.radius;
  if (sy < 0 || sy >= pb.height || sx < 0 || sx >= pb.width) return -1;
  return (b * pb.refs + r) * pb.pixels() + sy * pb.width + sx;
}

// Calls visit(index, frame_pixel) for every candidate of pixel (y, x) of
// image b, in index order, frame_pixel as candidate_pixel gives it: the
// window walked row by row, without candidate_pixel's divisions (several
// per candidate, most of a small window's time).
template <class Visit>
WSSS_HD void for_each_candidate(const Problem& pb, int64_t b, int64_t y, int64_t x, Visit&& visit) {
  const int64_t side = pb.side();
  int64_t index = 0;
  for (int64_t r = 0; r < pb.refs; ++r) {
    const int64_t frame = (b * pb.refs + r) * pb.pixels();
    for (int64_t ty = 0; ty < side; ++ty) {
      const int64_t sy = y + ty - pb.radius;
      const bool row_inside = sy >= 0 && sy < pb.height;
      for (int64_t tx = 0; tx < side; ++tx, ++index) {
        const int64_t sx = x + tx - pb.radius;
        visit(index, row_inside && sx >= 0 && sx < pb.width ? frame + sy * pb.width + sx : int64_t{-1});
      }
    }
  }
}

// The raw dot product of a candidate: 0 outside the frame (zero padding).
template <class T>
WSSS_HD T candidate_dot(const Problem& pb, const T* query_row, const T* keys, int64_t frame_pixel) {
  if (frame_pixel < 0) return T(0);
  return dot(query_row, keys + frame_pixel * pb.channels, pb.channels);
}

// exp((d - m) inv_t), the softmax term of dot d under the running maximum m.
// A non-finite d (a dot product past float's range) gives NaN rather than a
// finite wrong weight.
template <class T>
WSSS_HD T softmax_term(T d, T m, T inv_t) {
  return exp_polynomial((d - m) * inv_t) + (d - d);
}

// A candidate's weight from the forward's statistics (m, log sum).
template <class T>
WSSS_HD T candidate_weight(T d, const T* stats_row, T inv_t) {
  return exp_polynomial((d - stats_row[0]) * inv_t - stats_row[1]);
}

// Inserts (score, index) into the descending top-k lists (count entries so far).
template <class T>
WSSS_HD void topk_push(T* scores, int32_t* indices, int k, int& count, T score, int32_t index) {
  if (count == k && !(score > scores[k - 1])) return;
  int position = count < k ? count++ : k - 1;
  while (position > 0 && scores[position - 1] < score) {
    scores[position] = scores[position - 1];
    indices[position] = indices[position - 1];
    --position;
  }
  scores[position] = score;
  indices[position] = index;
}

// Forward of one pixel for labels [l0, l1): writes out_row[l0 .. l1) and,
// when write_stats, its stats and top-k indices. acc holds l1 - l0 values;
// top_dots / top_indices hold topk entries (unused without top-k).
template <class T>
WSSS_HD void pixel_forward(const Problem& pb, const T* query, const T* keys, const T* values, int64_t pixel,
                           int64_t l0, int64_t l1, T* acc, T* top_dots, int32_t* top_indices, T* out, T* stats,
                           int32_t* topk_index, bool write_stats) {
  const int64_t b = pixel / pb.pixels(), y = pixel / pb.width % pb.height, x = pixel % pb.width;
  const T* query_row = query + pixel * pb.channels;
  const T inv_t = static_cast<T>(pb.inv_temperature);
  const bool exclude = pb.border == Border::kExclude;
  for (int64_t l = l0; l < l1; ++l) acc[l - l0] = 0;
  T max = negative_infinity<T>(), sum = 0;
  if (pb.topk == 0) {
    for_each_candidate(pb, b, y, x, [&](int64_t, int64_t frame_pixel) {
      if (frame_pixel < 0 && exclude) return;
      const T d = candidate_dot(pb, query_row, keys, frame_pixel);
      if (d > max) {  // rescale what was summed to the new maximum
        const T scale = exp_polynomial((max - d) * inv_t);
        sum *= scale;
        for (int64_t l = l0; l < l1; ++l) acc[l - l0] *= scale;
        max = d;
      }
      const T e = softmax_term(d, max, inv_t);
      sum += e;
      if (frame_pixel >= 0)
        for (int64_t l = l0; l < l1; ++l) acc[l - l0] += e * values[frame_pixel * pb.labels + l];
    });
  } else {
    int count = 0;
    for_each_candidate(pb, b, y, x, [&](int64_t index, int64_t frame_pixel) {
      if (frame_pixel < 0 && exclude) return;
      topk_push(top_dots, top_indices, pb.topk, count, candidate_dot(pb, query_row, keys, frame_pixel),
                static_cast<int32_t>(index));
    });
    max = top_dots[0];
    for (int i = 0; i < count; ++i) {
      const int64_t frame_pixel = candidate_pixel(pb, b, top_indices[i], y, x);
      const T e = softmax_term(top_dots[i], max, inv_t);
      sum += e;
      if (frame_pixel >= 0)
        for (int64_t l = l0; l < l1; ++l) acc[l - l0] += e * values[frame_pixel * pb.labels + l];
    }
    if (write_stats)
      for (int i = 0; i < pb.topk; ++i) topk_index[pixel * pb.topk + i] = i < count ? top_indices[i] : -1;
  }
  const T inv_sum = T(1) / sum;
  for (int64_t l = l0; l < l1; ++l) out[pixel * pb.labels + l] = acc[l - l0] * inv_sum;
  if (write_stats) {
    stats[2 * pixel] = max;
    stats[2 * pixel + 1] = log(sum);
  }
}

// Is candidate `index` among pixel's top-k (always, without top-k)?
WSSS_HD bool selected(const Problem& pb, const int32_t* topk_index, int64_t pixel, int64_t index) {
  if (pb.topk == 0) return true;
  for (int i = 0; i < pb.topk; ++i)
    if (topk_index[pixel * pb.topk + i] == index) return true;
  return false;
}

// Gradient of query row `pixel` (channels values).
template <class T>
WSSS_HD void pixel_query_grad(const Problem& pb, const T* query, const T* keys, const T* values, const T* grad_out,
                              const T* stats, const T* delta, const int32_t* topk_index, int64_t pixel, T* grad_row) {
  const int64_t b = pixel / pb.pixels(), y = pixel / pb.width % pb.height, x = pixel % pb.width;
  const T* query_row = query + pixel * pb.channels;
  const T* g = grad_out + pixel * pb.labels;
  const T inv_t = static_cast<T>(pb.inv_temperature);
  for (int64_t c = 0; c < pb.channels; ++c) grad_row[c] = 0;
  const auto add = [&](int64_t frame_pixel) {
    if (frame_pixel < 0) return;  // a constant score (or no candidate): no gradient
    const T weight = candidate_weight(candidate_dot(pb, query_row, keys, frame_pixel), stats + 2 * pixel, inv_t);
    const T ds = weight * (dot(g, values + frame_pixel * pb.labels, pb.labels) - delta[pixel]) * inv_t;
    const T* key_row = keys + frame_pixel * pb.channels;
    for (int64_t c = 0; c < pb.channels; ++c) grad_row[c] += ds * key_row[c];
  };
  if (pb.topk == 0) {
    for_each_candidate(pb, b, y, x, [&](int64_t, int64_t frame_pixel) { add(frame_pixel); });
  } else {
    for (int64_t i = 0; i < pb.topk; ++i) add(candidate_pixel(pb, b, topk_index[pixel * pb.topk + i], y, x));
  }
}

// Gradients of key row and value row `frame_pixel` ([B, R, H, W] index):
// gathered over the query pixels whose window reads it.
template <class T>
WSSS_HD void frame_pixel_grad(const Problem& pb, const T* query, const T* keys, const T* values, const T* grad_out,
                              const T* stats, const T* delta, const int32_t* topk_index, int64_t frame_pixel,
                              T* grad_key_row, T* grad_value_row) {
  const int64_t br = frame_pixel / pb.pixels(), b = br / pb.refs, r = br % pb.refs;
  const int64_t sy = frame_pixel / pb.width % pb.height, sx = frame_pixel % pb.width;
  const T* key_row = keys + frame_pixel * pb.channels;
  const T* value_row = values + frame_pixel * pb.labels;
  const T inv_t = static_cast<T>(pb.inv_temperature);
  for (int64_t c = 0; c < pb.channels; ++c) grad_key_row[c] = 0;
  for (int64_t l = 0; l < pb.labels; ++l) grad_value_row[l] = 0;
  for (int64_t t = 0; t < pb.taps(); ++t) {
    const int64_t y = sy - (t / pb.side() - pb.radius), x = sx - (t % pb.side() - pb.radius);
    if (y < 0 || y >= pb.height || x < 0 || x >= pb.width) continue;
    const int64_t pixel = b * pb.pixels() + y * pb.width + x;
    if (!selected(pb, topk_index, pixel, r * pb.taps() + t)) continue;
    const T* query_row = query + pixel * pb.channels;
    const T* g = grad_out + pixel * pb.labels;
    const T weight = candidate_weight(dot(query_row, key_row, pb.channels), stats + 2 * pixel, inv_t);
    const T ds = weight * (dot(g, value_row, pb.labels) - delta[pixel]) * inv_t;
    for (int64_t l = 0; l < pb.labels; ++l) grad_value_row[l] += weight * g[l];
    for (int64_t c = 0; c < pb.channels; ++c) grad_key_row[c] += ds * query_row[c];
  }
}

struct ForwardArgs {
  ArrayView query, keys, values, out, stats, topk_index;
  Problem problem;
};

struct BackwardArgs {
  ArrayView query, keys, values, grad_out, stats, delta, topk_index, grad_query, grad_keys, grad_values;
  Problem problem;
};

void forward(ForwardArgs args, uintptr_t stream);
void backward(BackwardArgs args, uintptr_t stream);

void forward_cpu(const ForwardArgs& args);
void backward_cpu(const BackwardArgs& args);
#if defined(WSSS_WITH_CUDA)
void forward_cuda(const ForwardArgs& args, uintptr_t stream);
void backward_cuda(const BackwardArgs& args, uintptr_t stream);
#endif

}  // namespace wsss::propagation
