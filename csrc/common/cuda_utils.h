// CUDA plumbing for the kernels' .cu files: error checks, the device guard,
// the caller's stream. Included only by CUDA sources.
#pragma once

#include <cuda_runtime.h>

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
