// Propagation entry points: the C++ safety net of argument checks (Python has
// already given friendlier messages), then the backend for the device.
#include "propagation/propagation.h"
#include "common/route.h"

#include <cmath>
#include <limits>

namespace wsss::propagation {
namespace {

// Fills the problem's sizes from the tensors and checks every buffer.
void check_common(Problem& pb, const ArrayView& query, const ArrayView& keys, const ArrayView& values,
                  const ArrayView& lse, const ArrayView& topk_index, bool stats_written) {
  check_ndim(query, 4, "query");
  check_dtype(query, {DType::kFloat32, DType::kFloat64}, "query");
  check_contiguous(query, "query");
  check_ndim(keys, 5, "keys");
  check_ndim(values, 5, "values");
  pb.batch = query.shape[0];
  pb.height = query.shape[1];
  pb.width = query.shape[2];
  pb.channels = query.shape[3];
  pb.refs = keys.shape[1];
  pb.labels = values.shape[4];
  check_buffer(keys, "keys", query.dtype, {pb.batch, pb.refs, pb.height, pb.width, pb.channels}, query, "query", false);
  check_buffer(values, "values", query.dtype, {pb.batch, pb.refs, pb.height, pb.width, pb.labels}, query, "query",
               false);
  check_buffer(lse, "lse", query.dtype, {pb.batch, pb.height, pb.width}, query, "query", stats_written);
  WSSS_CHECK(pb.radius >= 0 && pb.radius <= 64, "radius must be in [0, 64], got ", pb.radius);
  WSSS_CHECK(pb.refs >= 1, "keys must hold at least one reference frame");
  WSSS_CHECK(std::isfinite(pb.inv_temperature) && pb.inv_temperature > 0, "inv_temperature must be finite and > 0");
  WSSS_CHECK(pb.candidates() <= std::numeric_limits<int32_t>::max(), "too many candidates per pixel");
  WSSS_CHECK(pb.topk >= 0 && pb.topk <= kMaxTopk && pb.topk <= pb.candidates(), "topk must be in [0, min(",
             kMaxTopk, ", refs * window)], got ", pb.topk);
  if (pb.topk > 0)
    check_buffer(topk_index, "topk_index", DType::kInt32, {pb.batch, pb.height, pb.width, pb.topk}, query, "query",
                 stats_written);
}

}  // namespace

void forward(ForwardArgs args, uintptr_t stream) {
  check_common(args.problem, args.query, args.keys, args.values, args.lse, args.topk_index, true);
  const Problem& pb = args.problem;
  check_buffer(args.out, "out", args.query.dtype, {pb.batch, pb.height, pb.width, pb.labels}, args.query, "query",
               true);
  if (args.out.numel() == 0 && args.lse.numel() == 0) return;
  WSSS_ROUTE(args.query, "query", stream, forward_cuda(args, stream), forward_cpu(args));
}

void backward(BackwardArgs args, uintptr_t stream) {
  check_common(args.problem, args.query, args.keys, args.values, args.lse, args.topk_index, false);
  const Problem& pb = args.problem;
  const ArrayView& q = args.query;
  check_buffer(args.grad_out, "grad_out", q.dtype, {pb.batch, pb.height, pb.width, pb.labels}, q, "query", false);
  check_buffer(args.delta, "delta", q.dtype, {pb.batch, pb.height, pb.width}, q, "query", false);
  check_buffer(args.grad_query, "grad_query", q.dtype, {pb.batch, pb.height, pb.width, pb.channels}, q, "query", true);
  check_buffer(args.grad_keys, "grad_keys", q.dtype, {pb.batch, pb.refs, pb.height, pb.width, pb.channels}, q, "query",
               true);
  check_buffer(args.grad_values, "grad_values", q.dtype, {pb.batch, pb.refs, pb.height, pb.width, pb.labels}, q,
               "query", true);
  if (pb.batch * pb.pixels() == 0) return;
  WSSS_ROUTE(q, "query", stream, backward_cuda(args, stream), backward_cpu(args));
}

}  // namespace wsss::propagation
