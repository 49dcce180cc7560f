#include "common/finite.h"

#include <cstring>
#include <vector>

#include "common/parallel.h"

namespace wsss {
namespace {

// Above this many elements the scan is split across threads.
constexpr int64_t kMinParallelElements = 1 << 20;

template <class Bits>
WSSS_CPU_VECTORIZED bool run_is_finite(const Bits* bits, int64_t count, Bits mask) {
  Bits bad = 0;  // OR of (all exponent bits set), vectorises as a reduction
#pragma omp simd reduction(| : bad)
  for (int64_t i = 0; i < count; ++i) bad |= static_cast<Bits>((bits[i] & mask) == mask);
  return bad == 0;
}

template <class Bits>
bool contiguous_is_finite(const Bits* bits, int64_t count, Bits mask) {
  const int threads = cpu_threads();
  if (count < kMinParallelElements || threads == 1) return run_is_finite(bits, count, mask);
  constexpr int64_t kChunk = 1 << 16;
  const int64_t chunks = (count + kChunk - 1) / kChunk;
  int finite = 1;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 4) reduction(& : finite)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t start = c * kChunk;
    finite &= run_is_finite(bits + start, count - start < kChunk ? count - start : kChunk, mask) ? 1 : 0;
  }
  return finite != 0;
}

// Any strides: the innermost dimension as runs, the outer ones walked as an odometer.
template <class Bits>
bool strided_is_finite(const ArrayView& v, Bits mask) {
  const Bits* base = static_cast<const Bits*>(v.data);
  const int last = v.ndim() - 1;
  const int64_t inner = v.shape[last], inner_stride = v.strides[last];
  std::vector<Bits> run(static_cast<size_t>(inner));
  std::vector<int64_t> index(static_cast<size_t>(last), 0);
  for (;;) {
    int64_t offset = 0;
    for (int d = 0; d < last; ++d) offset += index[d] * v.strides[d];
    for (int64_t i = 0; i < inner; ++i) run[i] = base[offset + i * inner_stride];
    if (!run_is_finite(run.data(), inner, mask)) return false;
    int d = last - 1;
    for (; d >= 0; --d) {
      if (++index[d] < v.shape[d]) break;
      index[d] = 0;
    }
    if (d < 0) return true;
  }
}

template <class Bits>
bool is_finite(const ArrayView& v, Bits mask) {
  if (v.ndim() == 0) return run_is_finite(static_cast<const Bits*>(v.data), 1, mask);
  if (v.is_contiguous()) return contiguous_is_finite(static_cast<const Bits*>(v.data), v.numel(), mask);
  return strided_is_finite(v, mask);
}

}  // namespace

bool all_finite_cpu(const ArrayView& values) {
  WSSS_CHECK(!values.is_cuda(), "all_finite_cpu: expected a CPU array, got ", values.describe());
  if (values.numel() == 0) return true;
  switch (values.dtype) {
    case DType::kFloat32: return is_finite<uint32_t>(values, 0x7f800000u);
    case DType::kFloat64: return is_finite<uint64_t>(values, 0x7ff0000000000000ull);
    case DType::kFloat16: return is_finite<uint16_t>(values, 0x7c00);
    case DType::kBFloat16: return is_finite<uint16_t>(values, 0x7f80);
    default: return true;  // integers and bools hold no NaN or inf
  }
}

}  // namespace wsss
