// Sinkhorn entry points: the C++ safety net of argument checks (Python has
// already given friendlier messages), then the backend for the device.
#include "sinkhorn/sinkhorn.h"
#include "common/route.h"

#include <algorithm>
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

// A contiguous piece of the solve's workspace, starting `offset` elements in.
ArrayView piece(const ArrayView& workspace, int64_t offset, std::initializer_list<int64_t> shape) {
  ArrayView view = workspace;
  view.data = static_cast<char*>(workspace.data) + offset * dtype_size(workspace.dtype);
  view.shape.assign(shape);
  view.strides.assign(view.shape.size(), 1);
  for (int d = static_cast<int>(view.shape.size()) - 2; d >= 0; --d)
    view.strides[d] = view.strides[d + 1] * view.shape[d + 1];
  return view;
}

template <class C>
bool all_finite(const C* values, int64_t count) {
  bool finite = true;
  for (int64_t i = 0; i < count; ++i) finite = finite && std::isfinite(values[i]);
  return finite;
}

template <class C>
bool solve_in(const SolveArgs& args) {
  const int64_t n = args.scores.shape[0], k = args.scores.shape[1];
  const int64_t chunks = num_chunks(n, false);
  StepArgs step_args{args.scores,
                     piece(args.workspace, 0, {k}),
                     piece(args.workspace, k, {n}),
                     piece(args.workspace, k + n, {2, chunks, k}),
                     piece(args.workspace, k + n + 2 * chunks * k, {k}),
                     piece(args.workspace, k + n + (2 * chunks + 1) * k, {k}),
                     args.inv_eps,
                     std::log(static_cast<double>(n)),
                     false};
  C* f = step_args.f.as<C>();
  C* g = step_args.g.as<C>();
  const C* col_max = step_args.col_max.as<C>();
  const C* col_sumexp = step_args.col_sumexp.as<C>();
  const C log_k = std::log(static_cast<C>(k));
  std::fill(f, f + k, C(0));
  std::fill(g, g + n, C(0));
  bool finite = true;
  for (int64_t iteration = 0; iteration < args.n_iters; ++iteration) {
    step_args.update_g = iteration > 0;  // iteration 0 balances prototypes from g = 0
    step_cpu(step_args);
    for (int64_t j = 0; j < k; ++j) f[j] = -log_k - (col_max[j] + std::log(col_sumexp[j]));
    if (iteration == 0) finite = all_finite(f, k);
  }
  codes_cpu(CodesArgs{args.scores, step_args.f, args.codes, args.inv_eps});
  if (args.n_iters == 0) finite = all_finite(args.codes.as<C>(), n * k);
  return finite;
}

}  // namespace

bool solve(const SolveArgs& args) {
  check_scores(args.scores);
  WSSS_CHECK(!args.scores.is_cuda(), "sinkhorn_solve runs on the CPU; on CUDA chain sinkhorn_step and sinkhorn_codes");
  const int64_t n = args.scores.shape[0], k = args.scores.shape[1];
  check_buffer(args.codes, args.scores, {n, k}, "codes", true);
  check_buffer(args.workspace, args.scores, {solve_workspace_elements(n, k)}, "workspace", true);
  check_disjoint({{args.codes, "codes"}, {args.workspace, "workspace"}}, {{args.scores, "scores"}});
  WSSS_CHECK(std::isfinite(args.inv_eps) && args.inv_eps > 0, "inv_eps must be finite and positive, got ",
             args.inv_eps);
  WSSS_CHECK(args.n_iters >= 0, "n_iters must be >= 0, got ", args.n_iters);
  return compute_dtype(args.scores) == DType::kFloat64 ? solve_in<double>(args) : solve_in<float>(args);
}

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
