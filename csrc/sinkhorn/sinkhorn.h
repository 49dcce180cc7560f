// Sinkhorn-Knopp in the log domain: the shared math and the launchers.
//
// Notation: scores S is N samples x K prototypes, z = S / epsilon. The
// transport plan is P_ik = exp(z_ik + f_k + g_i) with dual potentials f (one
// per prototype) and g (one per sample). One Sinkhorn iteration is
//   balance prototypes:  f_k = -log K - LSE_i(z_ik + g_i)   (Python, after the
//                        column statistics of every rank are merged)
//   balance samples:     g_i = -log N - LSE_k(z_ik + f_k)
// and the codes (P times N with samples balanced) are softmax_k(z_ik + f_k).
// Nothing N x K is stored but the input and the codes.
#pragma once

#include <cstdint>

#include "common/array_view.h"
#include "common/dtype.h"
#include "common/math.h"

namespace wsss::sinkhorn {

template <class C, class S>
WSSS_HD C logit(const S* scores, int64_t index, C inv_eps) {
  return load_as<C>(scores, index) * inv_eps;
}

// g_i from the log-sum-exp of row i of z + f.
template <class C>
WSSS_HD C sample_potential(C row_logsumexp, C log_n) {
  return -log_n - row_logsumexp;
}

// Column statistics are reduced in fixed row chunks (independent of the
// thread count, so results do not depend on it), then merged per column.
constexpr int64_t kCpuMinChunkRows = 16;
constexpr int64_t kCpuMaxChunks = 256;
constexpr int64_t kCudaMinChunkRows = 64;
constexpr int64_t kCudaMaxChunks = 1024;

inline int64_t num_chunks(int64_t n_samples, bool cuda) {
  const int64_t min_rows = cuda ? kCudaMinChunkRows : kCpuMinChunkRows;
  const int64_t max_chunks = cuda ? kCudaMaxChunks : kCpuMaxChunks;
  int64_t chunks = (n_samples + min_rows - 1) / min_rows;
  chunks = chunks < max_chunks ? chunks : max_chunks;
  return chunks > 0 ? chunks : 1;
}

inline int64_t chunk_rows(int64_t n_samples, int64_t chunks) { return (n_samples + chunks - 1) / chunks; }

// One half-iteration pair. If update_g, g is written: g_i from f. Then the
// column statistics of z + g are reduced: a shift col_max[k] and col_sumexp[k]
// = sum_i exp(z_ik + g_i - col_max[k]), so LSE_i(z_ik + g_i) = col_max[k] +
// log col_sumexp[k]. The shift is the column's maximum, or (CPU, update_g)
// -f_k - log N, the one that lets the row softmax give the sums. `partials` ([2, num_chunks, K]) is the
// caller's workspace.
struct StepArgs {
  ArrayView scores, f, g, partials, col_max, col_sumexp;
  double inv_eps = 1.0;
  double log_n = 0.0;
  bool update_g = true;
};

// codes[i, k] = softmax_k(z_ik + f_k).
struct CodesArgs {
  ArrayView scores, f, codes;
  double inv_eps = 1.0;
};

// The whole fixed-iteration solve of one process in one call, on the CPU:
// the steps above with the prototype update f_k = -log K - LSE_i(z_ik + g_i)
// done here instead of by three small torch ops per iteration in Python,
// which cost more than the kernels themselves on SwAV-sized batches. The
// first iteration balances prototypes from g = 0, as SwAV does. `workspace`
// holds f, g, the partials, col_max and col_sumexp (solve_workspace_elements).
struct SolveArgs {
  ArrayView scores, codes, workspace;
  double inv_eps = 1.0;
  int64_t n_iters = 3;
};

inline int64_t solve_workspace_elements(int64_t n_samples, int64_t k_count) {
  return n_samples + (2 * num_chunks(n_samples, false) + 3) * k_count;
}

// Entry points: check every argument, then run on the scores' device.
void step(const StepArgs& args, uintptr_t stream);
void codes(const CodesArgs& args, uintptr_t stream);
// Returns whether the first column statistics (or, for n_iters = 0, the
// codes) are finite: a NaN or inf score makes them NaN, so the caller can
// refuse such scores without another pass over them.
bool solve(const SolveArgs& args);

void step_cpu(const StepArgs& args);
void codes_cpu(const CodesArgs& args);
#if defined(WSSS_WITH_CUDA)
void step_cuda(const StepArgs& args, uintptr_t stream);
void codes_cuda(const CodesArgs& args, uintptr_t stream);
#endif

}  // namespace wsss::sinkhorn
