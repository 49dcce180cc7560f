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
                  const ArrayView& stats, const ArrayView& topk_index, bool stats_written) {
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
  check_buffer(stats, "stats", query.dtype, {pb.batch, pb.height, pb.width, 2}, query, "query", stats_written);
  WSSS_CHECK(pb.radius >= 0 && pb.radius <= 64, "radius must be in [0, 64], got ", pb.radius);
  WSSS_CHECK(pb.refs >= 1, "keys must hold at least one reference frame");
  // The kernels compute in the query's dtype: inv_temperature must be finite there too.
  const double max_inv_temperature = query.dtype == DType::kFloat32 ? std::numeric_limits<float>::max()
                                                                    : std::numeric_limits<double>::max();
  WSSS_CHECK(std::isfinite(pb.inv_temperature) && pb.inv_temperature > 0 &&
                 pb.inv_temperature <= max_inv_temperature,
             "inv_temperature must be > 0 and at most ", max_inv_temperature, " (the ", dtype_name(query.dtype),
             " range), got ", pb.inv_temperature);
  WSSS_CHECK(pb.border == Border::kZero || pb.border == Border::kExclude, "border must be 'zero' or 'exclude'");
  WSSS_CHECK(pb.candidates() <= std::numeric_limits<int32_t>::max(), "too many candidates per pixel");
  WSSS_CHECK(pb.topk >= 0 && pb.topk <= kMaxTopk && pb.topk <= pb.candidates(), "topk must be in [0, min(",
             kMaxTopk, ", refs * window)], got ", pb.topk);
  if (pb.topk > 0)
    check_buffer(topk_index, "topk_index", DType::kInt32, {pb.batch, pb.height, pb.width, pb.topk}, query, "query",
                 stats_written);
}

// The backward reads keys and values at the candidates topk_index names:
// each entry must name one, or be the -1 filler of a short list. Checked
// here for CPU arrays; the CUDA kernels skip an entry that names none (a
// check there would need a host synchronisation).
void check_topk_entries(const Problem& pb, const ArrayView& topk_index) {
  if (pb.topk == 0 || topk_index.is_cuda()) return;
  const int32_t* entries = topk_index.as<const int32_t>();
  const int64_t count = topk_index.numel();
  for (int64_t i = 0; i < count; ++i)
    WSSS_CHECK(entries[i] >= -1 && entries[i] < pb.candidates(), "topk_index holds ", entries[i], " at entry ", i,
               ": entries must be candidate indices in [0, ", pb.candidates(), ") or -1");
}

}  // namespace

void forward(ForwardArgs args, uintptr_t stream) {
  check_common(args.problem, args.query, args.keys, args.values, args.stats, args.topk_index, true);
  const Problem& pb = args.problem;
  check_buffer(args.out, "out", args.query.dtype, {pb.batch, pb.height, pb.width, pb.labels}, args.query, "query",
               true);
  check_disjoint({{args.out, "out"}, {args.stats, "stats"}, {args.topk_index, "topk_index"}},
                 {{args.query, "query"}, {args.keys, "keys"}, {args.values, "values"}});
  if (pb.batch * pb.pixels() == 0) return;
  WSSS_ROUTE(args.query, "query", stream, forward_cuda(args, stream), forward_cpu(args));
}

void backward(BackwardArgs args, uintptr_t stream) {
  check_common(args.problem, args.query, args.keys, args.values, args.stats, args.topk_index, false);
  const Problem& pb = args.problem;
  const ArrayView& q = args.query;
  check_buffer(args.grad_out, "grad_out", q.dtype, {pb.batch, pb.height, pb.width, pb.labels}, q, "query", false);
  check_buffer(args.delta, "delta", q.dtype, {pb.batch, pb.height, pb.width}, q, "query", false);
  check_buffer(args.grad_query, "grad_query", q.dtype, {pb.batch, pb.height, pb.width, pb.channels}, q, "query", true);
  check_buffer(args.grad_keys, "grad_keys", q.dtype, {pb.batch, pb.refs, pb.height, pb.width, pb.channels}, q, "query",
               true);
  check_buffer(args.grad_values, "grad_values", q.dtype, {pb.batch, pb.refs, pb.height, pb.width, pb.labels}, q,
               "query", true);
  check_disjoint({{args.grad_query, "grad_query"}, {args.grad_keys, "grad_keys"}, {args.grad_values, "grad_values"}},
                 {{q, "query"}, {args.keys, "keys"}, {args.values, "values"}, {args.grad_out, "grad_out"},
                  {args.stats, "stats"}, {args.delta, "delta"}, {args.topk_index, "topk_index"}});
  if (pb.batch * pb.pixels() == 0) return;
  check_topk_entries(pb, args.topk_index);
  WSSS_ROUTE(q, "query", stream, backward_cuda(args, stream), backward_cpu(args));
}

}  // namespace wsss::propagation
