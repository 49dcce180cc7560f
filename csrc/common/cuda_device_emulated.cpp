// The emulation build's answers to the CUDA queries (compiled instead of
// cuda_device.cu with WSSS_EXT_CUDA_EMULATE=1). No kernel was compiled for a
// GPU and none is used: cuda_compiled() is false and build_info() says
// "cuda_emulated". The emulated kernels run on CPU memory only.
#include "common/cuda_device.h"
#include "common/errors.h"

namespace wsss {

bool cuda_compiled() { return false; }
int cuda_device_count() { return 0; }
int cuda_runtime_version() { return 0; }
int cuda_pointer_device(uintptr_t) {
  WSSS_CHECK(false, "this is the CUDA emulation build of wsss_ext (a test build): its CUDA kernels run on CPU "
                    "memory under wsss_ext.testing.emulate_cuda(); reinstall without WSSS_EXT_CUDA_EMULATE for GPUs");
  return -1;
}

}  // namespace wsss
