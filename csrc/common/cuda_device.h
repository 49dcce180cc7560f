// Queries of the CUDA runtime the bindings need. Defined in cuda_device.cu
// when CUDA is compiled in; the CPU-only build answers "no CUDA".
#pragma once

#include <cstdint>

namespace wsss {

bool cuda_compiled();
int cuda_device_count();          // 0 when no driver or no device
int cuda_runtime_version();       // e.g. 13000; 0 without CUDA
int cuda_pointer_device(uintptr_t ptr);  // the ordinal owning a device pointer

#if defined(WSSS_CUDA_EMULATED)
// The emulation build's switch (common/cuda_emulation.cpp): while on, every
// entry point runs its CUDA launcher, on CPU arrays too (common/route.h).
bool cuda_emulation_enabled();
void set_cuda_emulation(bool enabled);
#endif

}  // namespace wsss
