#include <cuda_runtime.h>

#include "common/cuda_device.h"
#include "common/cuda_utils.h"

namespace wsss {

bool cuda_compiled() { return true; }

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return count;
}

int cuda_runtime_version() { return CUDART_VERSION; }

int cuda_pointer_device(uintptr_t ptr) {
  cudaPointerAttributes attributes{};
  WSSS_CUDA_CHECK(cudaPointerGetAttributes(&attributes, reinterpret_cast<const void*>(ptr)));
  WSSS_CHECK(attributes.type == cudaMemoryTypeDevice || attributes.type == cudaMemoryTypeManaged,
             "pointer ", ptr, " is not CUDA device memory");
  return attributes.device;
}

}  // namespace wsss
