// The CPU-only build's answers to the CUDA queries (compiled instead of
// cuda_device.cu when no CUDA compiler was found). The CUDA emulation build
// (WSSS_EXT_CUDA_EMULATE=1) answers the same: no kernel was compiled for a
// GPU and none is used; build_info() says "cuda_emulated" instead.
#include "common/cuda_device.h"
#include "common/errors.h"

namespace wsss {

bool cuda_compiled() { return false; }
int cuda_device_count() { return 0; }
int cuda_runtime_version() { return 0; }
int cuda_pointer_device(uintptr_t) {
#if defined(WSSS_CUDA_EMULATED)
  WSSS_CHECK(false, "this is the CUDA emulation build of wsss_ext (a test build): its CUDA kernels run on CPU "
                    "memory under wsss_ext.testing.emulate_cuda(); reinstall without WSSS_EXT_CUDA_EMULATE for GPUs");
#endif
  WSSS_CHECK(false, "wsss_ext was built without CUDA; reinstall with a CUDA compiler on the PATH");
  return -1;
}

}  // namespace wsss
