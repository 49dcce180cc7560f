// Sinkhorn-Knopp on CUDA. Per iteration: one warp per row balances g, then a
// column pass reduces the statistics of z + g over fixed row chunks
// (coalesced: consecutive threads read consecutive prototypes), then a tiny
// merge. Rows of K prototypes are read twice; nothing N x K is written.
#include "common/cuda_utils.h"
#include "sinkhorn/sinkhorn.h"

namespace wsss::sinkhorn {
namespace {

constexpr int kWarp = 32;
constexpr int kRowsPerBlock = 8;  // warps per block in the row kernels
constexpr int kColumnThreads = 128;

template <class C>
__device__ void warp_logsumexp(C& max, C& sum) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    const C other_max = __shfl_xor_sync(0xffffffffu, max, offset);
    const C other_sum = __shfl_xor_sync(0xffffffffu, sum, offset);
    logsumexp_merge(max, sum, other_max, other_sum);
  }
}

// One warp per row: (max, sum) of z_ik + f_k over k, reduced across the warp.
template <class C, class S>
__device__ void row_statistics(const S* row, const C* f, int64_t k_count, C inv_eps, C& max, C& sum) {
  max = negative_infinity<C>();
  sum = 0;
  for (int64_t k = threadIdx.x % kWarp; k < k_count; k += kWarp)
    logsumexp_push(max, sum, logit<C>(row, k, inv_eps) + f[k]);
  warp_logsumexp(max, sum);
}

template <class C, class S>
__global__ void sample_potential_kernel(const S* scores, const C* f, C* g, int64_t n, int64_t k_count, C inv_eps,
                                        C log_n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  if (i >= n) return;
  C max, sum;
  row_statistics(scores + i * k_count, f, k_count, inv_eps, max, sum);
  if (threadIdx.x % kWarp == 0) g[i] = sample_potential(max + log(sum), log_n);
}

// Thread (column k, chunk c): statistics of z_ik + g_i over the chunk's rows.
template <class C, class S>
__global__ void column_partials_kernel(const S* scores, const C* g, C* partials, int64_t n, int64_t k_count,
                                       int64_t chunks, int64_t rows_per_chunk, C inv_eps) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * kColumnThreads + threadIdx.x;
  const int64_t c = blockIdx.y;
  if (k >= k_count) return;
  const int64_t r0 = c * rows_per_chunk;
  const int64_t r1 = r0 + rows_per_chunk < n ? r0 + rows_per_chunk : n;
  C max = negative_infinity<C>(), sum = 0;
  for (int64_t i = r0; i < r1; ++i) logsumexp_push(max, sum, logit<C>(scores, i * k_count + k, inv_eps) + g[i]);
  partials[c * k_count + k] = max;
  partials[(chunks + c) * k_count + k] = sum;
}

template <class C>
__global__ void merge_chunks_kernel(const C* partials, int64_t chunks, int64_t k_count, C* col_max, C* col_sumexp) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= k_count) return;
  C max = negative_infinity<C>(), sum = 0;
  for (int64_t c = 0; c < chunks; ++c)
    logsumexp_merge(max, sum, partials[c * k_count + k], partials[(chunks + c) * k_count + k]);
  col_max[k] = max;
  col_sumexp[k] = sum;
}

template <class C, class S>
__global__ void codes_kernel(const S* scores, const C* f, C* codes, int64_t n, int64_t k_count, C inv_eps) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  if (i >= n) return;
  const S* row = scores + i * k_count;
  C max, sum;
  row_statistics(row, f, k_count, inv_eps, max, sum);
  const C log_normaliser = max + log(sum);
  for (int64_t k = threadIdx.x % kWarp; k < k_count; k += kWarp)
    codes[i * k_count + k] = exp_or_nan(logit<C>(row, k, inv_eps) + f[k] - log_normaliser);
}

}  // namespace

void step_cuda(const StepArgs& args, uintptr_t stream_handle) {
  CudaDeviceGuard guard(args.scores.device_index);
  const cudaStream_t stream = as_cuda_stream(stream_handle);
  dispatch_floating(args.scores.dtype, "scores", [&](auto storage_tag) {
    using S = decltype(storage_tag);
    using C = compute_t<S>;
    const S* scores = args.scores.as<const S>();
    const int64_t n = args.scores.shape[0], k_count = args.scores.shape[1];
    const int64_t chunks = num_chunks(n, /*cuda=*/true);
    const C inv_eps = static_cast<C>(args.inv_eps);
    C* g = args.g.as<C>();
    C* partials = args.partials.as<C>();
    if (args.update_g) {
      WSSS_LAUNCH((sample_potential_kernel<C, S>), ceil_div(n, kRowsPerBlock), kRowsPerBlock * kWarp, 0, stream, scores,
                  args.f.as<const C>(), g, n, k_count, inv_eps, static_cast<C>(args.log_n));
      WSSS_CUDA_CHECK_LAUNCH();
    }
    const dim3 grid(ceil_div(k_count, kColumnThreads), static_cast<unsigned int>(chunks));
    WSSS_LAUNCH((column_partials_kernel<C, S>), grid, kColumnThreads, 0, stream, scores, g, partials, n, k_count,
                chunks, chunk_rows(n, chunks), inv_eps);
    WSSS_CUDA_CHECK_LAUNCH();
    WSSS_LAUNCH((merge_chunks_kernel<C>), ceil_div(k_count, 256), 256, 0, stream, partials, chunks, k_count,
                args.col_max.as<C>(), args.col_sumexp.as<C>());
    WSSS_CUDA_CHECK_LAUNCH();
  });
}

void codes_cuda(const CodesArgs& args, uintptr_t stream_handle) {
  CudaDeviceGuard guard(args.scores.device_index);
  const cudaStream_t stream = as_cuda_stream(stream_handle);
  dispatch_floating(args.scores.dtype, "scores", [&](auto storage_tag) {
    using S = decltype(storage_tag);
    using C = compute_t<S>;
    const int64_t n = args.scores.shape[0], k_count = args.scores.shape[1];
    WSSS_LAUNCH((codes_kernel<C, S>), ceil_div(n, kRowsPerBlock), kRowsPerBlock * kWarp, 0, stream,
                args.scores.as<const S>(), args.f.as<const C>(), args.codes.as<C>(), n, k_count,
                static_cast<C>(args.inv_eps));
    WSSS_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace wsss::sinkhorn
