// Sinkhorn-Knopp on the CPU: OpenMP over fixed row chunks, each chunk
// streaming its rows once per iteration (in small blocks that stay in cache,
// or row by row where the row's softmax gives the column sums too).
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common/parallel.h"
#include "sinkhorn/sinkhorn.h"

namespace wsss::sinkhorn {
namespace {

// Rows processed together: re-read three times per step (row LSE, block
// column max, column sums), so they must stay in L2 (16 x 3000 fp32 = 192 KB).
constexpr int64_t kBlockRows = 16;

// Below this many elements a parallel region costs more than it saves.
constexpr int64_t kMinParallelElements = 1 << 15;

// max_k(z_ik + f_k) of one row. The helpers below are plain inline functions
// so that they are inlined, and vectorised, inside each ISA clone of their callers.
template <class C, class S>
inline C row_max(const S* row, const C* f, int64_t k_count, C inv_eps) {
  C max = negative_infinity<C>();
#pragma omp simd reduction(max : max)
  for (int64_t k = 0; k < k_count; ++k) {
    const C x = logit<C>(row, k, inv_eps) + f[k];
    max = x > max ? x : max;
  }
  return max;
}

// LSE_k(z_ik + f_k) of one row, in two vectorised passes.
template <class C, class S>
inline C row_logsumexp(const S* row, const C* f, int64_t k_count, C inv_eps) {
  const C max = row_max(row, f, k_count, inv_eps);
  C sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t k = 0; k < k_count; ++k) sum += exp_or_nan(logit<C>(row, k, inv_eps) + f[k] - max);
  return max + std::log(sum);
}

// out[k] = exp(z_ik + f_k - max) of one row, max its largest z_ik + f_k;
// returns their sum (the row's softmax before the division).
template <class C, class S>
inline C row_exp(const S* row, const C* f, int64_t k_count, C inv_eps, C* out, C& max) {
  max = row_max(row, f, k_count, inv_eps);
  C sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t k = 0; k < k_count; ++k) {
    out[k] = exp_or_nan(logit<C>(row, k, inv_eps) + f[k] - max);
    sum += out[k];
  }
  return sum;
}

// Rows [r0, r1): balance their g and fold the column statistics of z + g
// into (chunk_max, chunk_sum) from the same exponentials. With g_i from row
// i's LSE, exp(z_ik + g_i) = exp(-f_k - log n) w_ik, w_ik = softmax_k(z_ik +
// f_k) in [0, 1]: every chunk shares the shift -f_k - log n and sums w, one
// exp per element where balancing the row and then the column statistics
// take two. A column whose total w underflows is redone by step_rows below
// (step_cpu checks). softmax is K scratch values.
template <class C, class S>
WSSS_CPU_VECTORIZED void balance_rows_with_column_sums(const S* scores, int64_t k_count, int64_t r0, int64_t r1,
                                                       const C* f, C* g, C inv_eps, C log_n, C* chunk_max,
                                                       C* chunk_sum, C* softmax) {
#pragma omp simd
  for (int64_t k = 0; k < k_count; ++k) {
    chunk_max[k] = -f[k] - log_n;
    chunk_sum[k] = 0;
  }
  for (int64_t i = r0; i < r1; ++i) {
    C max;
    const C sum = row_exp(scores + i * k_count, f, k_count, inv_eps, softmax, max);
    g[i] = sample_potential(max + std::log(sum), log_n);
    const C inv_sum = C(1) / sum;
#pragma omp simd
    for (int64_t k = 0; k < k_count; ++k) chunk_sum[k] += softmax[k] * inv_sum;
  }
}

// Whether every column's total softmax mass is far enough above the
// smallest normal number that no underflowed term matters (each lost term is
// below it; there are at most n of them): otherwise the stable statistics.
template <class C>
bool column_sums_are_exact(const C* col_sumexp, int64_t k_count, int64_t n) {
  const C floor = std::numeric_limits<C>::min() * static_cast<C>(n) / std::numeric_limits<C>::epsilon();
  for (int64_t k = 0; k < k_count; ++k)
    if (col_sumexp[k] < floor) return false;  // NaN compares false: it propagates as it is
  return true;
}

// Rows [r0, r1): optionally balance their g, then fold the column statistics
// of z + g into (chunk_max, chunk_sum), each column shifted by its own
// running maximum (any magnitude). block_max is K scratch values.
template <class C, class S>
WSSS_CPU_VECTORIZED void step_rows(const S* scores, int64_t k_count, int64_t r0, int64_t r1, const C* f, C* g,
                                   bool update_g, C inv_eps, C log_n, C* chunk_max, C* chunk_sum, C* block_max) {
  for (int64_t k = 0; k < k_count; ++k) {
    chunk_max[k] = negative_infinity<C>();
    chunk_sum[k] = 0;
  }
  for (int64_t b0 = r0; b0 < r1; b0 += kBlockRows) {
    const int64_t b1 = std::min(b0 + kBlockRows, r1);
    if (update_g)
      for (int64_t i = b0; i < b1; ++i)
        g[i] = sample_potential(row_logsumexp(scores + i * k_count, f, k_count, inv_eps), log_n);

    for (int64_t k = 0; k < k_count; ++k) block_max[k] = chunk_max[k];
    for (int64_t i = b0; i < b1; ++i) {
      const S* row = scores + i * k_count;
      const C gi = g[i];
#pragma omp simd
      for (int64_t k = 0; k < k_count; ++k) {
        const C x = logit<C>(row, k, inv_eps) + gi;
        block_max[k] = x > block_max[k] ? x : block_max[k];
      }
    }
    // Rescale the running sums to the new maxima (exp(-inf) = 0 on the first block).
#pragma omp simd
    for (int64_t k = 0; k < k_count; ++k) {
      chunk_sum[k] *= exp_polynomial(chunk_max[k] - block_max[k]);
      chunk_max[k] = block_max[k];
    }
    for (int64_t i = b0; i < b1; ++i) {
      const S* row = scores + i * k_count;
      const C gi = g[i];
#pragma omp simd
      for (int64_t k = 0; k < k_count; ++k) chunk_sum[k] += exp_or_nan(logit<C>(row, k, inv_eps) + gi - chunk_max[k]);
    }
  }
}

template <class C>
void merge_chunks(const C* partials, int64_t chunks, int64_t k_count, C* col_max, C* col_sumexp) {
  const C* maxima = partials;
  const C* sums = partials + chunks * k_count;
#pragma omp parallel for num_threads(wsss::cpu_threads()) schedule(dynamic, 64) if (chunks * k_count >= kMinParallelElements)
  for (int64_t k = 0; k < k_count; ++k) {
    C max = negative_infinity<C>(), sum = 0;
    for (int64_t c = 0; c < chunks; ++c) logsumexp_merge(max, sum, maxima[c * k_count + k], sums[c * k_count + k]);
    col_max[k] = max;
    col_sumexp[k] = sum;
  }
}

template <class C, class S>
WSSS_CPU_VECTORIZED void codes_row(const S* row, const C* f, int64_t k_count, C inv_eps, C* out) {
  C max;
  const C sum = row_exp(row, f, k_count, inv_eps, out, max);
  const C inv_sum = C(1) / sum;
#pragma omp simd
  for (int64_t k = 0; k < k_count; ++k) out[k] *= inv_sum;
}

}  // namespace

void step_cpu(const StepArgs& args) {
  dispatch_floating(args.scores.dtype, "scores", [&](auto storage_tag) {
    using S = decltype(storage_tag);
    using C = compute_t<S>;
    const S* scores = args.scores.as<const S>();
    const int64_t n = args.scores.shape[0], k_count = args.scores.shape[1];
    const int64_t chunks = num_chunks(n, /*cuda=*/false);
    const int64_t rows = chunk_rows(n, chunks);
    C* partials = args.partials.as<C>();
    const C* f = args.f.as<const C>();
    C* g = args.g.as<C>();
    const C inv_eps = static_cast<C>(args.inv_eps), log_n = static_cast<C>(args.log_n);
    const auto run = [&](bool fused, bool update_g) {
#pragma omp parallel num_threads(wsss::cpu_threads()) if (n * k_count >= kMinParallelElements)
      {
        std::vector<C> scratch(static_cast<size_t>(k_count));
#pragma omp for schedule(dynamic, 1)
        for (int64_t c = 0; c < chunks; ++c) {
          const int64_t r0 = std::min(c * rows, n), r1 = std::min(r0 + rows, n);
          C* chunk_max = partials + c * k_count;
          C* chunk_sum = partials + (chunks + c) * k_count;
          if (fused)
            balance_rows_with_column_sums(scores, k_count, r0, r1, f, g, inv_eps, log_n, chunk_max, chunk_sum,
                                          scratch.data());
          else
            step_rows(scores, k_count, r0, r1, f, g, update_g, inv_eps, log_n, chunk_max, chunk_sum, scratch.data());
        }
      }
      merge_chunks(partials, chunks, k_count, args.col_max.as<C>(), args.col_sumexp.as<C>());
    };
    if (!args.update_g) {
      run(false, false);
    } else {
      run(true, true);
      // A column with (almost) no mass under the new g: its statistics again,
      // each column shifted by its own maximum (g is kept).
      if (!column_sums_are_exact(args.col_sumexp.as<C>(), k_count, n)) run(false, false);
    }
  });
}

void codes_cpu(const CodesArgs& args) {
  dispatch_floating(args.scores.dtype, "scores", [&](auto storage_tag) {
    using S = decltype(storage_tag);
    using C = compute_t<S>;
    const S* scores = args.scores.as<const S>();
    const int64_t n = args.scores.shape[0], k_count = args.scores.shape[1];
    const C* f = args.f.as<const C>();
    C* out = args.codes.as<C>();
    const C inv_eps = static_cast<C>(args.inv_eps);
#pragma omp parallel for num_threads(wsss::cpu_threads()) schedule(dynamic, 16) if (n * k_count >= kMinParallelElements)
    for (int64_t i = 0; i < n; ++i) codes_row(scores + i * k_count, f, k_count, inv_eps, out + i * k_count);
  });
}

}  // namespace wsss::sinkhorn
