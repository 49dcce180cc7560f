// Random walk entry points: the C++ safety net of argument checks (Python has
// already given friendlier messages), then the backend for the device.
#include "random_walk/random_walk.h"

#include <cmath>

#include "common/route.h"

namespace wsss::random_walk {

void step(const StepArgs& args, uintptr_t stream) {
  const ArrayView& weights = args.weights;
  check_ndim(weights, 4, "weights");
  check_dtype(weights, {DType::kFloat32, DType::kFloat64}, "weights");
  check_contiguous(weights, "weights");
  const int64_t batch = weights.shape[0], taps = weights.shape[1];
  const int64_t height = weights.shape[2], width = weights.shape[3];
  check_buffer(args.offsets, "offsets", DType::kInt32, {taps, 2}, weights, "weights", false);
  check_ndim(args.x, 4, "x");
  const int64_t channels = args.x.shape[1];
  check_buffer(args.x, "x", weights.dtype, {batch, channels, height, width}, weights, "weights", false);
  check_buffer(args.y, "y", weights.dtype, {batch, channels, height, width}, weights, "weights", true);
  check_disjoint({{args.y, "y"}}, {{args.x, "x"}, {weights, "weights"}, {args.offsets, "offsets"}});
  WSSS_CHECK(args.steps >= 1, "steps must be >= 1, got ", args.steps);
  WSSS_CHECK(args.steps == 1 || !runs_on_cuda(weights), "the CUDA backend takes one step per call, got steps = ",
             args.steps);
  if (args.x.numel() == 0) return;
  WSSS_ROUTE(weights, "weights", stream, step_cuda(args, stream), step_cpu(args));
}

void weight_grad(const WeightGradArgs& args, uintptr_t stream) {
  const ArrayView& grad_weights = args.grad_weights;
  check_ndim(grad_weights, 4, "grad_weights");
  check_dtype(grad_weights, {DType::kFloat32, DType::kFloat64}, "grad_weights");
  check_contiguous(grad_weights, "grad_weights");
  check_writable(grad_weights, "grad_weights");
  const int64_t batch = grad_weights.shape[0], taps = grad_weights.shape[1];
  const int64_t height = grad_weights.shape[2], width = grad_weights.shape[3];
  check_buffer(args.offsets, "offsets", DType::kInt32, {taps, 2}, grad_weights, "grad_weights", false);
  check_ndim(args.x, 4, "x");
  const int64_t channels = args.x.shape[1];
  check_buffer(args.x, "x", grad_weights.dtype, {batch, channels, height, width}, grad_weights, "grad_weights",
               false);
  check_buffer(args.grad_y, "grad_y", grad_weights.dtype, {batch, channels, height, width}, grad_weights,
               "grad_weights", false);
  check_disjoint({{grad_weights, "grad_weights"}}, {{args.grad_y, "grad_y"}, {args.x, "x"}, {args.offsets, "offsets"}});
  if (grad_weights.numel() == 0) return;
  WSSS_ROUTE(grad_weights, "grad_weights", stream, weight_grad_cuda(args, stream), weight_grad_cpu(args));
}

AffinityStatus transition_weights(const WeightsArgs& args) {
  const ArrayView& affinity = args.affinity;
  check_ndim(affinity, 4, "affinity");
  check_dtype(affinity, {DType::kFloat32, DType::kFloat64}, "affinity");
  check_contiguous(affinity, "affinity");
  WSSS_CHECK(!affinity.is_cuda(), "transition_weights runs on CPU arrays only (CUDA computes them with torch ops), "
             "got affinity ", affinity.describe());
  const int64_t taps = affinity.shape[1];
  check_buffer(args.offsets, "offsets", DType::kInt32, {taps, 2}, affinity, "affinity", false);
  check_buffer(args.weights, "weights", affinity.dtype, {affinity.shape[0], taps, affinity.shape[2], affinity.shape[3]},
               affinity, "affinity", true);
  check_disjoint({{args.weights, "weights"}}, {{affinity, "affinity"}, {args.offsets, "offsets"}});
  WSSS_CHECK(std::isfinite(args.beta) && args.beta >= 0, "beta must be finite and >= 0, got ", args.beta);
  if (affinity.numel() == 0) return AffinityStatus::kOk;
  return transition_weights_cpu(args);
}

}  // namespace wsss::random_walk
