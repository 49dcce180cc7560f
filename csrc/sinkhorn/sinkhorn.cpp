// Sinkhorn entry points: the C++ safety net of argument checks (Python has
// already given friendlier messages), then the backend for the device.
#include "sinkhorn/sinkhorn.h"
#include "common/route.h"

#include <cmath>

namespace wsss::sinkhorn {
namespace {

const std::initializer_list<DType> kScoreTypes = {DType::kFloat16, DType::kBFloat16, DType::kFloat32,
                                                  DType::kFloat64};

DType compute_dtype(const ArrayView& scores) {
  return scores.dtype == DType::kFloat64 ? DType::kFloat64 : DType::kFloat32;
}

void check_scores(const ArrayView& scores) {
  check_ndim(scores, 2, "scores");
  check_dtype(scores, kScoreTypes, "scores");
  check_contiguous(scores, "scores");
  WSSS_CHECK(scores.shape[0] > 0 && scores.shape[1] > 0, "scores must have at least one sample and one prototype, got ",
             scores.describe());
}

// A buffer of the compute dtype, on the scores' device, of the given shape.
void check_buffer(const ArrayView& buffer, const ArrayView& scores, std::initializer_list<int64_t> shape,
                  const char* name, bool written) {
  check_same_device(buffer, name, scores, "scores");
  check_dtype(buffer, {compute_dtype(scores)}, name);
  check_shape(buffer, shape, name);
  check_contiguous(buffer, name);
  if (written) check_writable(buffer, name);
}

}  // namespace

void step(const StepArgs& args, uintptr_t stream) {
  check_scores(args.scores);
  const int64_t n = args.scores.shape[0], k = args.scores.shape[1];
  check_buffer(args.f, args.scores, {k}, "f", false);
  check_buffer(args.g, args.scores, {n}, "g", args.update_g);
  check_buffer(args.partials, args.scores, {2, num_chunks(n, runs_on_cuda(args.scores)), k}, "partials", true);
  check_buffer(args.col_max, args.scores, {k}, "col_max", true);
  check_buffer(args.col_sumexp, args.scores, {k}, "col_sumexp", true);
  WSSS_CHECK(std::isfinite(args.inv_eps) && args.inv_eps > 0, "inv_eps must be finite and positive, got ",
             args.inv_eps);
  WSSS_CHECK(std::isfinite(args.log_n), "log_n must be finite, got ", args.log_n);
  const Named g{args.g, "g"}, partials{args.partials, "partials"};
  const Named col_max{args.col_max, "col_max"}, col_sumexp{args.col_sumexp, "col_sumexp"};
  if (args.update_g)
    check_disjoint({g, partials, col_max, col_sumexp}, {{args.scores, "scores"}, {args.f, "f"}});
  else
    check_disjoint({partials, col_max, col_sumexp}, {{args.scores, "scores"}, {args.f, "f"}, g});
  WSSS_ROUTE(args.scores, "scores", stream, step_cuda(args, stream), step_cpu(args));
}

void codes(const CodesArgs& args, uintptr_t stream) {
  check_scores(args.scores);
  const int64_t n = args.scores.shape[0], k = args.scores.shape[1];
  check_buffer(args.f, args.scores, {k}, "f", false);
  check_buffer(args.codes, args.scores, {n, k}, "codes", true);
  check_disjoint({{args.codes, "codes"}}, {{args.scores, "scores"}, {args.f, "f"}});
  WSSS_CHECK(std::isfinite(args.inv_eps) && args.inv_eps > 0, "inv_eps must be finite and positive, got ",
             args.inv_eps);
  WSSS_ROUTE(args.scores, "scores", stream, codes_cuda(args, stream), codes_cpu(args));
}

}  // namespace wsss::sinkhorn
