#include "common/finite.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "common/parallel.h"

namespace wsss {
namespace {

// Above this many elements a scan is split across threads.
constexpr int64_t kMinParallelElements = 1 << 20;
constexpr int64_t kChunk = 1 << 16;

// Folds visit(run, count) over runs of contiguous elements covering the
// array, with combine: a large contiguous array in parallel chunks, the
// innermost dimension of a strided one copied into a buffer run by run (the
// outer dimensions walked as an odometer). visit returns a partial result.
template <class Elem, class Result, class Visit, class Combine>
Result reduce_runs(const ArrayView& v, Result init, Visit visit, Combine combine) {
  const Elem* base = static_cast<const Elem*>(v.data);
  if (v.ndim() == 0) return combine(init, visit(base, 1));
  if (v.is_contiguous()) {
    const int64_t count = v.numel();
    const int threads = cpu_threads();
    if (count < kMinParallelElements || threads == 1) return combine(init, visit(base, count));
    const int64_t chunks = (count + kChunk - 1) / kChunk;
    std::vector<Result> partial(static_cast<size_t>(chunks), init);
#pragma omp parallel for num_threads(threads) schedule(dynamic, 4)
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t start = c * kChunk;
      partial[c] = visit(base + start, count - start < kChunk ? count - start : kChunk);
    }
    Result result = init;
    for (const Result& p : partial) result = combine(result, p);
    return result;
  }
  const int last = v.ndim() - 1;
  const int64_t inner = v.shape[last], inner_stride = v.strides[last];
  std::vector<Elem> run(static_cast<size_t>(inner));
  std::vector<int64_t> index(static_cast<size_t>(last), 0);
  Result result = init;
  for (;;) {
    int64_t offset = 0;
    for (int d = 0; d < last; ++d) offset += index[d] * v.strides[d];
    for (int64_t i = 0; i < inner; ++i) run[i] = base[offset + i * inner_stride];
    result = combine(result, visit(run.data(), inner));
    int d = last - 1;
    for (; d >= 0; --d) {
      if (++index[d] < v.shape[d]) break;
      index[d] = 0;
    }
    if (d < 0) return result;
  }
}

// Whether a run of floats (as their bits) holds no NaN or inf: those have
// every exponent bit set. Vectorises as an OR reduction.
template <class Bits>
WSSS_CPU_VECTORIZED bool run_is_finite(const Bits* bits, int64_t count, Bits mask) {
  Bits bad = 0;
#pragma omp simd reduction(| : bad)
  for (int64_t i = 0; i < count; ++i) bad |= static_cast<Bits>((bits[i] & mask) == mask);
  return bad == 0;
}

template <class Bits>
bool is_finite(const ArrayView& v, Bits mask) {
  return reduce_runs<Bits>(
      v, true, [mask](const Bits* run, int64_t count) { return run_is_finite(run, count, mask); },
      [](bool a, bool b) { return a && b; });
}

// The largest |value| of a run, and whether a NaN or inf was seen.
template <class T>
struct MaxAbs {
  T max = 0;
  bool finite = true;
};

template <class T>
WSSS_CPU_VECTORIZED MaxAbs<T> run_max_abs(const T* values, int64_t count) {
  T largest = 0;
  int bad = 0;
#pragma omp simd reduction(max : largest) reduction(| : bad)
  for (int64_t i = 0; i < count; ++i) {
    const T magnitude = std::abs(values[i]);
    largest = magnitude > largest ? magnitude : largest;
    bad |= static_cast<int>(!(values[i] - values[i] == T(0)));  // NaN - NaN and inf - inf are NaN
  }
  return {largest, bad == 0};
}

template <class T>
double max_abs(const ArrayView& v) {
  const MaxAbs<T> found = reduce_runs<T>(v, MaxAbs<T>{}, run_max_abs<T>, [](MaxAbs<T> a, MaxAbs<T> b) {
    return MaxAbs<T>{a.max > b.max ? a.max : b.max, a.finite && b.finite};
  });
  return found.finite ? static_cast<double>(found.max) : std::numeric_limits<double>::infinity();
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

double max_abs_cpu(const ArrayView& values) {
  WSSS_CHECK(!values.is_cuda(), "max_abs_cpu: expected a CPU array, got ", values.describe());
  check_dtype(values, {DType::kFloat32, DType::kFloat64}, "values");
  if (values.numel() == 0) return 0.0;
  return values.dtype == DType::kFloat32 ? max_abs<float>(values) : max_abs<double>(values);
}

}  // namespace wsss
