// The CUDA-on-CPU emulation build's runtime: what the kernels' .cu files use
// from CUDA, provided for host code so that those very sources compile as
// C++ (WSSS_EXT_CUDA_EMULATE=1) and run on CPU memory. CI has no GPU: this is
// how it executes the CUDA launchers and compares them with the CPU backends.
//
// The model, kept exact where kernels rely on it:
//  - A launch runs its blocks one after another on the calling thread; the
//    threads of a block are user-level fibers, switched only at
//    __syncthreads() and the warp intrinsics, so a barrier is a real barrier
//    and a shuffle sees every lane's value of the same step. Scheduling is
//    deterministic (threads in order of their linear index).
//  - A thread that returns leaves the block's barrier count and its warp, as
//    on Volta and later. A barrier or warp step that some live thread can
//    never reach is reported as a deadlock instead of hanging.
//  - Warps are 32 consecutive linear thread indices; shuffles follow PTX's
//    shfl.sync lane arithmetic for every width (a power of two up to 32).
//    A value read from a lane that does not take part (exited, or outside
//    the mask) is undefined on a GPU: here it reads as all-one bytes (NaN,
//    -1), so a result that depends on it shows in a comparison.
//  - Shared memory is allocated per block, separately for each array, filled
//    with all-one bytes (its content is undefined at block start on a GPU)
//    and sized exactly, so AddressSanitizer reports an access past its end.
//  - Launch errors as on a GPU: a block over 1024 threads, a zero or
//    oversized grid, more than 48 KiB of shared memory without opting in.
//    A fault inside a kernel (deadlock, a misused intrinsic) is reported by
//    the next cudaGetLastError() with the kernel, block and thread named.
//  - Streams order work only; launches and copies complete before they return.
// Not modelled: concurrency between threads other than at the points above
// (no data race is exercised), the memory model beyond sequential
// consistency, texture/constant memory, and the __CUDA_ARCH__ branches of
// the shared headers (the host side of each runs instead; README lists them).
#pragma once

#include <math.h>  // libstdc++'s <math.h> puts std's float overloads (log(float), ...) in the global namespace, as CUDA's headers do

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

// Unqualified float math must pick the float overloads, as it does in device code.
static_assert(std::is_same_v<decltype(log(1.0f)), float>, "log(float) must be the float overload");
static_assert(std::is_same_v<decltype(exp(1.0f)), float>, "exp(float) must be the float overload");

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// `__shared__` is deliberately not defined: a per-block array needs
// WSSS_SHARED_ARRAY / WSSS_DYNAMIC_SHARED (common/cuda_utils.h), which
// expand to __shared__ under nvcc.

struct uint3 {
  unsigned int x, y, z;
};

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
};

// The built-in variables, set by the scheduler before it switches to a thread.
extern uint3 threadIdx;
extern uint3 blockIdx;
extern dim3 blockDim;
extern dim3 gridDim;
constexpr int warpSize = 32;

// ---------------------------------------------------------------------------
// Runtime API, as much as the launchers use
// ---------------------------------------------------------------------------

// The values are CUDA's, so that messages read the same.
enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevice = 101,
  cudaErrorIllegalAddress = 700,
  cudaErrorLaunchFailure = 719,
};
using cudaError = cudaError_t;

enum cudaMemcpyKind : int {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};

struct CUstream_st;
using cudaStream_t = CUstream_st*;

cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorName(cudaError_t error);
const char* cudaGetErrorString(cudaError_t error);
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDeviceCount(int* count);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t stream = nullptr);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream = nullptr);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);

// ---------------------------------------------------------------------------
// Device functions
// ---------------------------------------------------------------------------

void __syncthreads();
void __syncwarp(unsigned int mask = 0xffffffffu);
inline void __threadfence() {}
inline void __threadfence_block() {}

inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
template <class T>
T __ldg(const T* p) { return *p; }
inline float __uint_as_float(unsigned int bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
inline unsigned int __float_as_uint(float f) {
  unsigned int bits;
  std::memcpy(&bits, &f, sizeof bits);
  return bits;
}

namespace wsss::emu {

// One warp-synchronous step: the calling lane publishes `value` (up to 8
// bytes) and its operand, waits for every live lane of `mask`, and gets its
// partner's value in `result`. ballot/any/all read the predicates.
enum class WarpOp : int { kSync, kShflIdx, kShflUp, kShflDown, kShflXor, kBallot };
void warp_step(WarpOp op, unsigned int mask, const void* value, size_t size, int operand, int width, void* result,
               unsigned int* ballot);

template <class T>
T shuffle(WarpOp op, unsigned int mask, T value, int operand, int width) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "shuffles move values of up to 8 bytes");
  T result;
  warp_step(op, mask, &value, sizeof(T), operand, width, &result, nullptr);
  return result;
}

// Shared memory of the running block. static_shared returns the block's
// instance of the array declared at `tag` (allocated on its first use in the
// block); dynamic_shared the launch's dynamic allocation.
void* static_shared(const void* tag, size_t bytes, size_t alignment);
void* dynamic_shared();

// A launch, type-erased: run(closure) executes one CUDA thread's body.
struct KernelBody {
  void (*run)(const void* closure);
  const void* closure;
};
void launch_kernel(const char* name, dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream,
                   KernelBody body);

// kernel<<<grid, block, shared_bytes, stream>>>(args...). The arguments are
// converted to the parameter types once, at the launch (the CUDA runtime
// copies them then too); every thread gets its own copies.
template <class... Params, class... Args>
void launch(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes,
            cudaStream_t stream, Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "wrong number of kernel arguments");
  using Arguments = std::tuple<std::decay_t<Params>...>;
  struct Closure {
    void (*kernel)(Params...);
    Arguments arguments;
  };
  const Closure closure{kernel, Arguments(std::forward<Args>(args)...)};
  const KernelBody body{[](const void* c) {
                          const Closure& self = *static_cast<const Closure*>(c);
                          std::apply(self.kernel, self.arguments);
                        },
                        &closure};
  launch_kernel(name, grid, block, shared_bytes, stream, body);
}

// Launches so far (valid or not): lets a test confirm that a call under
// emulation ran CUDA launchers at all.
uint64_t launch_count();

// Fault injection for the negative controls of the test suite (see
// wsss_ext.testing.emulate_cuda(fault=...)): kShuffleWrongLane makes every
// shuffle read the lane after the right one.
enum class Fault : int { kNone = 0, kShuffleWrongLane = 1 };
void set_fault(Fault fault);
Fault fault();

}  // namespace wsss::emu

template <class T>
T __shfl_sync(unsigned int mask, T value, int src_lane, int width = warpSize) {
  return ::wsss::emu::shuffle(::wsss::emu::WarpOp::kShflIdx, mask, value, src_lane, width);
}
template <class T>
T __shfl_up_sync(unsigned int mask, T value, unsigned int delta, int width = warpSize) {
  return ::wsss::emu::shuffle(::wsss::emu::WarpOp::kShflUp, mask, value, static_cast<int>(delta), width);
}
template <class T>
T __shfl_down_sync(unsigned int mask, T value, unsigned int delta, int width = warpSize) {
  return ::wsss::emu::shuffle(::wsss::emu::WarpOp::kShflDown, mask, value, static_cast<int>(delta), width);
}
template <class T>
T __shfl_xor_sync(unsigned int mask, T value, int lane_mask, int width = warpSize) {
  return ::wsss::emu::shuffle(::wsss::emu::WarpOp::kShflXor, mask, value, lane_mask, width);
}
inline unsigned int __ballot_sync(unsigned int mask, int predicate) {
  unsigned int bits = 0;
  ::wsss::emu::warp_step(::wsss::emu::WarpOp::kBallot, mask, nullptr, 0, predicate != 0, warpSize, nullptr, &bits);
  return bits;
}
inline int __any_sync(unsigned int mask, int predicate) { return __ballot_sync(mask, predicate) != 0; }
inline int __all_sync(unsigned int mask, int predicate) { return __ballot_sync(mask, predicate == 0) == 0; }

// ---------------------------------------------------------------------------
// Atomics. The threads of a launch run on one OS thread and switch only at
// barriers, so a read-modify-write is already indivisible; the GCC builtins
// keep it so should blocks ever run on several threads.
// ---------------------------------------------------------------------------

template <class T>
T wsss_emu_atomic_add(T* address, T value) {
  if constexpr (std::is_integral_v<T>) {
    return __atomic_fetch_add(address, value, __ATOMIC_SEQ_CST);
  } else {
    T expected;
    __atomic_load(address, &expected, __ATOMIC_SEQ_CST);
    T desired = expected + value;
    while (!__atomic_compare_exchange(address, &expected, &desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
      desired = expected + value;
    return expected;
  }
}
inline int atomicAdd(int* address, int value) { return wsss_emu_atomic_add(address, value); }
inline unsigned int atomicAdd(unsigned int* address, unsigned int value) { return wsss_emu_atomic_add(address, value); }
inline unsigned long long atomicAdd(unsigned long long* address, unsigned long long value) {
  return wsss_emu_atomic_add(address, value);
}
inline float atomicAdd(float* address, float value) { return wsss_emu_atomic_add(address, value); }
inline double atomicAdd(double* address, double value) { return wsss_emu_atomic_add(address, value); }

template <class T>
T wsss_emu_atomic_cas(T* address, T compare, T value) {
  __atomic_compare_exchange_n(address, &compare, value, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  return compare;  // the old value either way
}
inline int atomicCAS(int* address, int compare, int value) { return wsss_emu_atomic_cas(address, compare, value); }
inline unsigned int atomicCAS(unsigned int* address, unsigned int compare, unsigned int value) {
  return wsss_emu_atomic_cas(address, compare, value);
}
inline unsigned long long atomicCAS(unsigned long long* address, unsigned long long compare,
                                    unsigned long long value) {
  return wsss_emu_atomic_cas(address, compare, value);
}

template <class T>
T wsss_emu_atomic_max(T* address, T value) {
  T expected = __atomic_load_n(address, __ATOMIC_SEQ_CST);
  while (expected < value && !__atomic_compare_exchange_n(address, &expected, value, false, __ATOMIC_SEQ_CST,
                                                          __ATOMIC_SEQ_CST)) {
  }
  return expected;
}
inline int atomicMax(int* address, int value) { return wsss_emu_atomic_max(address, value); }
inline unsigned int atomicMax(unsigned int* address, unsigned int value) { return wsss_emu_atomic_max(address, value); }
inline long long atomicMax(long long* address, long long value) { return wsss_emu_atomic_max(address, value); }
inline unsigned long long atomicMax(unsigned long long* address, unsigned long long value) {
  return wsss_emu_atomic_max(address, value);
}
inline int atomicExch(int* address, int value) { return __atomic_exchange_n(address, value, __ATOMIC_SEQ_CST); }
