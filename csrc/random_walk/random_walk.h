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

void step(const StepArgs& args, uintptr_t stream);
void weight_grad(const WeightGradArgs& args, uintptr_t stream);

void step_cpu(const StepArgs& args);
void weight_grad_cpu(const WeightGradArgs& args);
#if defined(WSSS_WITH_CUDA)
void step_cuda(const StepArgs& args, uintptr_t stream);
void weight_grad_cuda(const WeightGradArgs& args, uintptr_t stream);
#endif

}  // namespace wsss::random_walk
