// The CPU-only build's answers to the CUDA queries (compiled instead of
// cuda_device.cu when no CUDA compiler was found).
#include "common/cuda_device.h"
#include "common/errors.h"

namespace wsss {

bool cuda_compiled() { return false; }
int cuda_device_count() { return 0; }
int cuda_runtime_version() { return 0; }
int cuda_pointer_device(uintptr_t) {
  WSSS_CHECK(false, "wsss_ext was built without CUDA; reinstall with a CUDA compiler on the PATH");
  return -1;
}

}  // namespace wsss
