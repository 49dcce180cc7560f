// Affinity random walk (AffinityNet / PSA, IRNet): the shared math and the
// launchers.
//
// Taps. offsets [T, 2] int32 holds the (dy, dx) of every tap of the
// neighbourhood (the centre included); tap t of pixel p is p + offset_t and
// exists only inside the map.
//
// One step of the walk, with weights w [B, T, H, W] already normalised
// (w_pt = a_pt^beta / sum_t' a_pt'^beta, zero for taps outside the map):
//     forward     y[c, p] = sum_t w[t, p] x[c, p + o_t]
//     transpose   y[c, q] = sum_t w[t, q - o_t] x[c, q - o_t]     (the backward)
// Both are gathers, so no kernel needs atomics; the references build the
// (HW)^2 matrix and square it instead. The gradient of the weights collects
//     grad_w[t, p] += sum_c grad_y[c, p] x[c, p + o_t]
// over the steps.
#pragma once

#include <cstdint>

#include "common/array_view.h"
#include "common/dtype.h"

namespace wsss::random_walk {

WSSS_HD bool inside(int64_t y, int64_t x, int64_t height, int64_t width) {
  return y >= 0 && y < height && x >= 0 && x < width;
}

// y = P x (or P^T x) for one step. weights [B, T, H, W]; x and y
// [B, C, H, W], all of one float dtype; y must not alias x.
// halo: the largest |dy| or |dx| of the offsets, the border the CUDA kernels
// stage in shared memory around each tile (a tap beyond it is read from
// global memory instead, so a wrong halo costs speed, never correctness).
// steps: y = P^steps x; the CPU backend runs them all in one call (its
// scratch stays in cache across them), CUDA takes one step per call.
struct StepArgs {
  ArrayView weights, offsets, x, y;
  bool transpose = false;
  int halo = 0;
  int64_t steps = 1;
};

// grad_weights [B, T, H, W] += grad_y (.) x shifted by each tap.
struct WeightGradArgs {
  ArrayView grad_y, x, offsets, grad_weights;
};

// The transition weights of the walk from affinities a [B, T, H, W] (any
// non-negative values, the taps outside the map ignored), with the public
// op's input checks, in one pass over the affinities:
//     w_pt = a_pt^beta / sum_t' a_pt'^beta   over the taps inside the map,
//     w_pt = 0 for taps outside it, and a pixel whose in-map sum is 0 gets
//     weight 1 on its centre tap (it keeps its value).
// The CPU path of a plain eager call whose affinities need no gradient:
// torch computes the same weights (differentiably) in about ten small ops,
// which cost most of a small walk's call. No CUDA backend: on a GPU those
// ops are asynchronous and the checks must not read a flag back.
struct WeightsArgs {
  ArrayView affinity, offsets, weights;
  double beta = 8.0;
};

// What the pass found in the affinities: the first problem by priority (a
// NaN or inf before a negative value); the weights are written regardless.
enum class AffinityStatus : int { kOk = 0, kNonFinite = 1, kNegative = 2 };

void step(const StepArgs& args, uintptr_t stream);
void weight_grad(const WeightGradArgs& args, uintptr_t stream);
AffinityStatus transition_weights(const WeightsArgs& args);

void step_cpu(const StepArgs& args);
void weight_grad_cpu(const WeightGradArgs& args);
AffinityStatus transition_weights_cpu(const WeightsArgs& args);
#if defined(WSSS_WITH_CUDA)
void step_cuda(const StepArgs& args, uintptr_t stream);
void weight_grad_cuda(const WeightGradArgs& args, uintptr_t stream);
#endif

}  // namespace wsss::random_walk
