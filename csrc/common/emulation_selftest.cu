// The emulation runtime's own test kernels (see emulation_selftest.h).
// Written as CUDA, launched through WSSS_LAUNCH like every kernel.
#include "common/emulation_selftest.h"

#include "common/cuda_utils.h"

namespace wsss::emulation_selftest {
namespace {

constexpr int kMaxThreads = 1024;

__global__ void block_sum_kernel(const int32_t* values, int32_t* out, bool planted_off_by_one) {
  WSSS_DYNAMIC_SHARED(int32_t, partial);
  const int t = threadIdx.x;
  partial[t] = values[t];
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    // The planted bug: `<=` lets thread `stride` read partial[2 * stride],
    // one past the end on the first pass.
    if (planted_off_by_one ? t <= stride : t < stride) partial[t] += partial[t + stride];
    __syncthreads();
  }
  if (t == 0) *out = partial[0];
}

__global__ void barrier_after_exits_kernel(const int32_t* values, int32_t* out) {
  WSSS_DYNAMIC_SHARED(int32_t, staged);
  const int t = threadIdx.x, n = blockDim.x;
  if (t % 2 == 1) return;
  staged[t] = values[t];
  __syncthreads();
  out[t] = staged[(t + 2) % n];
}

enum class Op { kIdx, kUp, kDown, kXor, kBallot };

__global__ void warp_op_kernel(const int32_t* values, const int32_t* exits, int32_t* out, Op op, int operand,
                               int width) {
  const int t = threadIdx.x;
  if (exits[t] != 0) return;
  const int32_t v = values[t];
  int32_t result = 0;
  switch (op) {
    case Op::kIdx: result = __shfl_sync(0xffffffffu, v, operand, width); break;
    case Op::kUp: result = __shfl_up_sync(0xffffffffu, v, static_cast<unsigned int>(operand), width); break;
    case Op::kDown: result = __shfl_down_sync(0xffffffffu, v, static_cast<unsigned int>(operand), width); break;
    case Op::kXor: result = __shfl_xor_sync(0xffffffffu, v, operand, width); break;
    case Op::kBallot: result = static_cast<int32_t>(__ballot_sync(0xffffffffu, v != 0)); break;
  }
  out[t] = result;
}

__global__ void indices_kernel(int32_t* out) {
  const int64_t block = (static_cast<int64_t>(blockIdx.z) * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
  const int64_t thread = (static_cast<int64_t>(threadIdx.z) * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
  int32_t* row = out + (block * blockDim.x * blockDim.y * blockDim.z + thread) * 12;
  const unsigned int fields[12] = {blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z,
                                   blockDim.x, blockDim.y, blockDim.z, gridDim.x,   gridDim.y,   gridDim.z};
  for (int i = 0; i < 12; ++i) row[i] = static_cast<int32_t>(fields[i]);
}

__global__ void atomics_kernel(int32_t* ints, float* sum, unsigned long long* counter) {
  const int id = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  atomicAdd(ints, 1);
  atomicMax(ints + 1, id);
  if (atomicCAS(ints + 3, -1, id) == -1) atomicAdd(ints + 2, 1);
  atomicAdd(sum, 0.25f);
  unsigned long long seen = *counter, assumed;
  do {
    assumed = seen;
    seen = atomicCAS(counter, assumed, assumed + 1);
  } while (seen != assumed);
}

__global__ void touch_shared_kernel(int64_t dynamic_bytes, bool use_static, int32_t* sink) {
  WSSS_DYNAMIC_SHARED(unsigned char, dynamic);
  int32_t sum = 0;
  if (use_static) {
    WSSS_SHARED_ARRAY(unsigned char, fixed, 8192);
    fixed[threadIdx.x % 8192] = 1;
    sum += fixed[0];
  }
  for (int64_t i = threadIdx.x; i < dynamic_bytes; i += blockDim.x) dynamic[i] = 1;
  __syncthreads();
  if (threadIdx.x == 0 && blockIdx.x == 0) *sink = sum + (dynamic_bytes > 0 ? dynamic[0] : 0);
}

__global__ void deadlock_kernel(int32_t* out) {
  const int lane = threadIdx.x;
  if (lane == 0) {
    __syncthreads();
  } else {
    out[lane] = __shfl_sync(0xffffffffu, lane, 0);
  }
}

Op parse_op(const std::string& op) {
  if (op == "idx") return Op::kIdx;
  if (op == "up") return Op::kUp;
  if (op == "down") return Op::kDown;
  if (op == "xor") return Op::kXor;
  if (op == "ballot") return Op::kBallot;
  WSSS_CHECK(false, "op must be idx, up, down, xor or ballot, got '", op, "'");
  return Op::kIdx;
}

}  // namespace

void block_sum(const ArrayView& values, const ArrayView& out, bool planted_off_by_one) {
  const int64_t n = values.numel();
  WSSS_CHECK(n >= 1 && n <= kMaxThreads && (n & (n - 1)) == 0, "values must hold a power of two <= 1024 of int32");
  WSSS_LAUNCH(block_sum_kernel, 1, static_cast<unsigned int>(n), n * sizeof(int32_t), nullptr,
              values.as<const int32_t>(), out.as<int32_t>(), planted_off_by_one);
  WSSS_CUDA_CHECK_LAUNCH();
}

void barrier_after_exits(const ArrayView& values, const ArrayView& out) {
  const int64_t n = values.numel();
  WSSS_CHECK(n >= 2 && n <= kMaxThreads && n % 2 == 0 && out.numel() == n, "values and out: int32 [even n <= 1024]");
  WSSS_LAUNCH(barrier_after_exits_kernel, 1, static_cast<unsigned int>(n), n * sizeof(int32_t), nullptr,
              values.as<const int32_t>(), out.as<int32_t>());
  WSSS_CUDA_CHECK_LAUNCH();
}

void warp_op(const ArrayView& values, const ArrayView& exits, const ArrayView& out, const std::string& op,
             int operand, int width) {
  const int64_t n = values.numel();
  WSSS_CHECK(n >= 1 && n <= kMaxThreads && exits.numel() == n && out.numel() == n, "values, exits and out: int32 [n]");
  WSSS_LAUNCH(warp_op_kernel, 1, static_cast<unsigned int>(n), 0, nullptr, values.as<const int32_t>(),
              exits.as<const int32_t>(), out.as<int32_t>(), parse_op(op), operand, width);
  WSSS_CUDA_CHECK_LAUNCH();
}

void indices(const ArrayView& out, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx, unsigned int by,
             unsigned int bz) {
  WSSS_CHECK(out.numel() == static_cast<int64_t>(gx) * gy * gz * bx * by * bz * 12, "out must be int32 [threads, 12]");
  WSSS_LAUNCH(indices_kernel, dim3(gx, gy, gz), dim3(bx, by, bz), 0, nullptr, out.as<int32_t>());
  WSSS_CUDA_CHECK_LAUNCH();
}

void atomics(const ArrayView& out_int, const ArrayView& out_float, const ArrayView& out_u64, int blocks,
             int threads) {
  WSSS_LAUNCH(atomics_kernel, static_cast<unsigned int>(blocks), static_cast<unsigned int>(threads), 0, nullptr,
              out_int.as<int32_t>(), out_float.as<float>(), out_u64.as<unsigned long long>());
  WSSS_CUDA_CHECK_LAUNCH();
}

void launch(unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx, unsigned int by, unsigned int bz,
            int64_t dynamic_shared_bytes, bool static_shared) {
  int32_t sink = 0;
  WSSS_LAUNCH(touch_shared_kernel, dim3(gx, gy, gz), dim3(bx, by, bz), static_cast<size_t>(dynamic_shared_bytes),
              nullptr, dynamic_shared_bytes, static_shared, &sink);
  WSSS_CUDA_CHECK_LAUNCH();
}

void deadlock() {
  int32_t out[32] = {};
  WSSS_LAUNCH(deadlock_kernel, 1, 32, 0, nullptr, out);
  WSSS_CUDA_CHECK_LAUNCH();
}

}  // namespace wsss::emulation_selftest
