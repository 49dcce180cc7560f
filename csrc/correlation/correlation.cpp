// Correlation entry points: the C++ safety net of argument checks (Python has
// already given friendlier messages), then the backend for the device.
#include "correlation/correlation.h"
#include "common/route.h"

namespace wsss::correlation {
namespace {

void check_geometry(const Geometry& g, int64_t height, int64_t width) {
  WSSS_CHECK(g.kernel_h >= 1 && g.kernel_w >= 1, "kernel_size must be >= 1");
  WSSS_CHECK(g.patch_h >= 1 && g.patch_w >= 1, "patch_size must be >= 1");
  WSSS_CHECK(g.stride_h >= 1 && g.stride_w >= 1, "stride must be >= 1");
  WSSS_CHECK(g.pad_h >= 0 && g.pad_w >= 0, "padding must be >= 0");
  WSSS_CHECK(g.dilation_h >= 1 && g.dilation_w >= 1, "dilation must be >= 1");
  WSSS_CHECK(g.dilation_patch_h >= 1 && g.dilation_patch_w >= 1, "dilation_patch must be >= 1");
  WSSS_CHECK(g.out_h(height) >= 1 && g.out_w(width) >= 1, "the kernel (with dilation and padding) does not fit in a ",
             height, "x", width, " input");
}

void check_inputs(const ArrayView& in1, const ArrayView& in2) {
  check_ndim(in1, 4, "in1");
  check_dtype(in1, {DType::kFloat32, DType::kFloat64}, "in1");
  check_contiguous(in1, "in1");
  check_buffer(in2, "in2", in1.dtype, {in1.shape[0], in1.shape[1], in1.shape[2], in1.shape[3]}, in1, "in1", false);
}

}  // namespace

void forward(const ForwardArgs& args, uintptr_t stream) {
  check_inputs(args.in1, args.in2);
  const Geometry& g = args.geometry;
  const int64_t height = args.in1.shape[1], width = args.in1.shape[2];
  check_geometry(g, height, width);
  check_buffer(args.out, "out", args.in1.dtype, {args.in1.shape[0], g.patch_h, g.patch_w, g.out_h(height), g.out_w(width)},
               args.in1, "in1", true);
  check_disjoint({{args.out, "out"}}, {{args.in1, "in1"}, {args.in2, "in2"}});
  if (args.out.numel() == 0) return;
  WSSS_ROUTE(args.in1, "in1", stream, forward_cuda(args, stream), forward_cpu(args));
}

void backward(const BackwardArgs& args, uintptr_t stream) {
  check_inputs(args.in1, args.in2);
  const Geometry& g = args.geometry;
  const int64_t height = args.in1.shape[1], width = args.in1.shape[2];
  check_geometry(g, height, width);
  check_buffer(args.grad, "grad", args.in1.dtype,
               {args.in1.shape[0], g.patch_h, g.patch_w, g.out_h(height), g.out_w(width)}, args.in1, "in1", false);
  for (const auto& [view, name] : {std::pair{&args.grad_in1, "grad_in1"}, std::pair{&args.grad_in2, "grad_in2"}})
    if (view->data != nullptr)
      check_buffer(*view, name, args.in1.dtype, {args.in1.shape[0], height, width, args.in1.shape[3]}, args.in1, "in1",
                   true);
  check_disjoint({{args.grad_in1, "grad_in1"}, {args.grad_in2, "grad_in2"}},
                 {{args.in1, "in1"}, {args.in2, "in2"}, {args.grad, "grad"}});
  if (args.in1.numel() == 0) return;
  WSSS_ROUTE(args.in1, "in1", stream, backward_cuda(args, stream), backward_cpu(args));
}

}  // namespace wsss::correlation
