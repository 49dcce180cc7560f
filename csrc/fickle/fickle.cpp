// FickleNet entry points: the C++ safety net of argument checks (Python has
// already given friendlier messages), then the backend for the device.
#include "fickle/fickle.h"
#include "common/route.h"

#include <cmath>
#include <limits>

namespace wsss::fickle {
namespace {

void check_kernel_size(int kernel_size) {
  WSSS_CHECK(kernel_size >= 1 && kernel_size % 2 == 1 && kernel_size <= kMaxKernelSize,
             "kernel_size must be odd and in [1, ", kMaxKernelSize, "], got ", kernel_size);
}

void check_keep_scale(float keep_scale) {
  WSSS_CHECK(std::isfinite(keep_scale) && keep_scale > 0, "keep_scale must be finite and > 0, got ", keep_scale);
}

void check_bits(const ArrayView& bits, const char* like_name, const ArrayView& like, int64_t rows) {
  check_ndim(bits, 4, "bits");
  check_buffer(bits, "bits", DType::kInt32, {rows, like.shape[1], like.shape[2], like.shape[3]}, like, like_name,
               false);
  // Rows, channels and positions travel as 32-bit Philox counter words.
  constexpr int64_t kMax = std::numeric_limits<uint32_t>::max();
  WSSS_CHECK(bits.shape[0] <= kMax && bits.shape[1] <= kMax && bits.shape[2] * bits.shape[3] <= kMax,
             "too large for the mask generator: rows, channels and H * W must each be < 2**32");
}

}  // namespace

void mask_bits(const BitsArgs& args, uintptr_t stream) {
  check_kernel_size(args.mask.kernel_size);
  check_keep_scale(args.mask.keep_scale);
  WSSS_CHECK(args.mask.drop_threshold <= (1u << 24), "drop_threshold must be <= 2**24, got ",
             args.mask.drop_threshold);
  check_bits(args.bits, "bits", args.bits, args.bits.ndim() == 4 ? args.bits.shape[0] : 0);
  check_writable(args.bits, "bits");
  WSSS_CHECK(args.first_row >= 0 && args.first_row + args.bits.shape[0] <= std::numeric_limits<uint32_t>::max(),
             "first_row + rows must be in [0, 2**32), got ", args.first_row);
  if (args.bits.numel() == 0) return;
  WSSS_ROUTE(args.bits, "bits", stream, mask_bits_cuda(args, stream), mask_bits_cpu(args));
}

void masked_tap(const TapArgs& args, uintptr_t stream) {
  check_kernel_size(args.kernel_size);
  check_keep_scale(args.keep_scale);
  const int taps = args.kernel_size * args.kernel_size;
  WSSS_CHECK(args.tap >= 0 && args.tap < taps, "tap must be in [0, ", taps, "), got ", args.tap);
  WSSS_CHECK(args.tap_count >= 1 && args.tap_count <= taps - args.tap, "tap_count must be in [1, ", taps - args.tap,
             "] (taps ", args.tap, " .. ", taps - 1, "), got ", args.tap_count);
  // x [B, C, H, W] and the per-row maps [R, C tap_count, H, W]: forward reads
  // x and writes the maps; the transpose reads the maps' gradient and adds into x's.
  const ArrayView& x = args.transpose ? args.output : args.input;
  const ArrayView& rows = args.transpose ? args.input : args.output;
  const char* x_name = args.transpose ? "grad_x" : "x";
  const char* rows_name = args.transpose ? "grad" : "out";
  check_ndim(x, 4, x_name);
  check_dtype(x, {DType::kFloat32, DType::kFloat64}, x_name);
  check_contiguous(x, x_name);
  check_writable(args.output, args.transpose ? "grad_x" : "out");
  check_ndim(rows, 4, rows_name);
  const int64_t batch = x.shape[0], row_count = rows.shape[0];
  WSSS_CHECK(batch > 0 ? row_count % batch == 0 : row_count == 0, rows_name, " must have a multiple of ", batch,
             " rows, got ", rows.describe());
  check_buffer(rows, rows_name, x.dtype, {row_count, x.shape[1] * args.tap_count, x.shape[2], x.shape[3]}, x, x_name,
               !args.transpose);
  check_bits(args.bits, x_name, x, row_count);
  check_disjoint({{args.output, args.transpose ? "grad_x" : "out"}},
                 {{args.input, args.transpose ? "grad" : "x"}, {args.bits, "bits"}});
  if (rows.numel() == 0) return;
  WSSS_ROUTE(x, x_name, stream, masked_tap_cuda(args, stream), masked_tap_cpu(args));
}

void mask_counts(const CountArgs& args, uintptr_t stream) {
  check_kernel_size(args.kernel_size);
  check_keep_scale(args.keep_scale);
  check_ndim(args.bits, 4, "bits");
  check_bits(args.bits, "bits", args.bits, args.bits.shape[0]);
  const ArrayView& counts = args.counts;
  check_buffer(counts, "counts", counts.dtype, {args.bits.shape[0], args.bits.shape[1], args.kernel_size * args.kernel_size},
               args.bits, "bits", true);
  check_dtype(counts, {DType::kFloat32, DType::kFloat64}, "counts");
  check_disjoint({{counts, "counts"}}, {{args.bits, "bits"}});
  if (counts.numel() == 0) return;
  WSSS_ROUTE(counts, "counts", stream, mask_counts_cuda(args, stream), mask_counts_cpu(args));
}

}  // namespace wsss::fickle
