// Marks a function as callable from host and device code. The per-element math
// of every kernel is written once with it, so the CPU build (and CI, which has
// no GPU) runs the very arithmetic the GPU runs.
#pragma once

#if defined(__CUDACC__)
#define WSSS_HD __host__ __device__ __forceinline__
#else
#define WSSS_HD inline
#endif
