// CUDA plumbing for the kernels' .cu files: error checks, the device guard,
// the caller's stream, and the launch and shared-memory macros that let the
// same sources compile with nvcc and, in the emulation build, as C++ against
// common/cuda_emulation.h. Included only by CUDA sources.
#pragma once

#if defined(WSSS_CUDA_EMULATED)
#include "common/cuda_emulation.h"
#else
#include <cuda_runtime.h>
#endif

#include <cstdint>
#include <stdexcept>

#include "common/errors.h"

#define WSSS_CUDA_CHECK(expr)                                                          \
  do {                                                                                 \
    cudaError_t wsss_err_ = (expr);                                                    \
    if (wsss_err_ != cudaSuccess)                                                      \
      throw std::runtime_error(::wsss::concat(__FILE__, ":", __LINE__, ": CUDA error ", \
                                              cudaGetErrorName(wsss_err_), ": ",       \
                                              cudaGetErrorString(wsss_err_)));         \
  } while (0)

// After a <<<...>>> launch: reports a bad configuration or an earlier
// asynchronous fault without synchronising the device.
#define WSSS_CUDA_CHECK_LAUNCH() WSSS_CUDA_CHECK(cudaGetLastError())

// kernel<<<grid, block, shared_bytes, stream>>>(args...), spelled so that
// the emulation build can route it to its scheduler. A template kernel goes
// in parentheses: WSSS_LAUNCH((codes_kernel<C, S>), grid, block, 0, stream, ...).
#if defined(WSSS_CUDA_EMULATED)
#define WSSS_LAUNCH(kernel, grid, block, shared_bytes, stream, ...) \
  ::wsss::emu::launch(#kernel, kernel, grid, block, shared_bytes, stream, __VA_ARGS__)
#else
#define WSSS_LAUNCH(kernel, grid, block, shared_bytes, stream, ...) \
  kernel<<<grid, block, shared_bytes, stream>>>(__VA_ARGS__)
#endif

// A block's shared array, `__shared__ type name[count]`, and its dynamic
// shared memory, `extern __shared__ type name[]`. The emulation allocates
// them per block (common/cuda_emulation.h); name keeps its array type.
#if defined(WSSS_CUDA_EMULATED)
#define WSSS_SHARED_ARRAY(type, name, count)                                                             \
  static const char wsss_shared_tag_##name = 0;                                                          \
  type(&name)[count] = *static_cast<type(*)[count]>(                                                     \
      ::wsss::emu::static_shared(&wsss_shared_tag_##name, sizeof(type) * (count), alignof(type)))
#define WSSS_DYNAMIC_SHARED(type, name) type* const name = static_cast<type*>(::wsss::emu::dynamic_shared())
#else
#define WSSS_SHARED_ARRAY(type, name, count) __shared__ type name[count]
#define WSSS_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

namespace wsss {

// Makes `device` current for the guard's lifetime, restoring the caller's.
class CudaDeviceGuard {
 public:
  explicit CudaDeviceGuard(int device) {
    WSSS_CUDA_CHECK(cudaGetDevice(&previous_));
    if (device != previous_) WSSS_CUDA_CHECK(cudaSetDevice(device));
  }
  ~CudaDeviceGuard() { cudaSetDevice(previous_); }
  CudaDeviceGuard(const CudaDeviceGuard&) = delete;
  CudaDeviceGuard& operator=(const CudaDeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

// Streams cross the Python boundary as integers (torch's `cuda_stream`,
// cupy's `ptr`); 0 is the legacy default stream.
inline cudaStream_t as_cuda_stream(uintptr_t handle) { return reinterpret_cast<cudaStream_t>(handle); }

inline unsigned int ceil_div(int64_t n, int64_t d) { return static_cast<unsigned int>((n + d - 1) / d); }

}  // namespace wsss
