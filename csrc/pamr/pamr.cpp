// PAMR entry points: the C++ safety net of argument checks (Python has
// already given friendlier messages), then the backend for the device.
#include "pamr/pamr.h"
#include "common/route.h"

#include <cmath>

namespace wsss::pamr {
namespace {

const std::initializer_list<DType> kFloatTypes = {DType::kFloat16, DType::kBFloat16, DType::kFloat32,
                                                  DType::kFloat64};

}  // namespace

Dilations make_dilations(const std::vector<int64_t>& values) {
  WSSS_CHECK(!values.empty(), "dilations must not be empty");
  WSSS_CHECK(values.size() <= static_cast<size_t>(kMaxDilations), "at most ", kMaxDilations,
             " dilations are supported, got ", values.size());
  Dilations dilations;
  for (int64_t d : values) {
    WSSS_CHECK(d >= 1 && d <= kMaxDilation, "dilations must be in [1, ", kMaxDilation, "], got ", d);
    dilations.values[dilations.count++] = static_cast<int32_t>(d);
  }
  return dilations;
}

void affinity(const AffinityArgs& args, uintptr_t stream) {
  const ArrayView& image = args.image;
  check_ndim(image, 4, "image");
  check_dtype(image, kFloatTypes, "image");
  check_contiguous(image, "image");
  WSSS_CHECK(image.shape[1] > 0, "image must have at least one channel, got ", image.describe());
  WSSS_CHECK(args.dilations.count >= 1 && args.dilations.count <= kMaxDilations, "dilations must hold 1 to ",
             kMaxDilations, " values, got ", args.dilations.count);
  const DType compute = image.dtype == DType::kFloat64 ? DType::kFloat64 : DType::kFloat32;
  check_buffer(args.weights, "weights", compute, {image.shape[0], args.dilations.taps(), image.shape[2], image.shape[3]},
               image, "image", true);
  WSSS_CHECK(std::isfinite(args.sigma) && args.sigma > 0, "sigma must be finite and > 0, got ", args.sigma);
  check_disjoint({{args.weights, "weights"}}, {{image, "image"}});
  if (image.numel() == 0) return;
  WSSS_ROUTE(image, "image", stream, affinity_cuda(args, stream), affinity_cpu(args));
}

void propagate(const PropagateArgs& args, uintptr_t stream) {
  const ArrayView& weights = args.weights;
  check_ndim(weights, 4, "weights");
  check_dtype(weights, {DType::kFloat32, DType::kFloat64}, "weights");
  check_contiguous(weights, "weights");
  WSSS_CHECK(weights.shape[1] == args.dilations.taps(), "weights must have ", args.dilations.taps(),
             " tap planes (8 per dilation), got ", weights.describe());
  check_ndim(args.mask, 4, "mask");
  const int64_t batch = weights.shape[0], height = weights.shape[2], width = weights.shape[3];
  const int64_t channels = args.mask.shape[1];
  check_buffer(args.mask, "mask", weights.dtype, {batch, channels, height, width}, weights, "weights", false);
  check_buffer(args.out, "out", weights.dtype, {batch, channels, height, width}, weights, "weights", true);
  check_disjoint({{args.out, "out"}}, {{args.mask, "mask"}, {weights, "weights"}});
  WSSS_CHECK(args.steps >= 1, "steps must be >= 1, got ", args.steps);
  WSSS_CHECK(args.steps == 1 || !runs_on_cuda(weights), "the CUDA backend takes one step per call, got steps = ",
             args.steps);
  if (args.mask.numel() == 0) return;
  WSSS_ROUTE(weights, "weights", stream, propagate_cuda(args, stream), propagate_cpu(args));
}

}  // namespace wsss::pamr
