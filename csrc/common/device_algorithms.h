// The device-wide algorithms the kernels take from cub, behind thin wrappers
// so that the emulation build can give them a host implementation (cub's
// kernels are not part of our sources and do not compile as C++). Both keep
// cub's two-phase protocol: called with temp == nullptr they only set `bytes`
// to the workspace size; called again with a workspace of that size they run
// on `stream`.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/cuda_utils.h"

#if !defined(WSSS_CUDA_EMULATED)
#include <cub/device/device_scan.cuh>
#include <cub/device/device_segmented_sort.cuh>
#else
#include <algorithm>
#include <cstring>
#endif

namespace wsss {

#if !defined(WSSS_CUDA_EMULATED)

// out[i] = sum of in[0 .. i-1] for i < n (cub::DeviceScan::ExclusiveSum).
inline cudaError_t device_exclusive_sum(void* temp, size_t& bytes, const int32_t* in, int32_t* out, int n,
                                        cudaStream_t stream = nullptr) {
  return cub::DeviceScan::ExclusiveSum(temp, bytes, in, out, n, stream);
}

// keys_out = keys_in with each segment [begin[s], end[s]) sorted ascending
// (cub::DeviceSegmentedSort::SortKeys).
inline cudaError_t device_segmented_sort_keys(void* temp, size_t& bytes, const int32_t* keys_in, int32_t* keys_out,
                                              int items, int segments, const int32_t* begin, const int32_t* end,
                                              cudaStream_t stream = nullptr) {
  return cub::DeviceSegmentedSort::SortKeys(temp, bytes, keys_in, keys_out, items, segments, begin, end, stream);
}

#else

// The host versions need no workspace, but ask for one byte: a caller that
// skips the size query or sizes the workspace for the CPU backend (0 bytes)
// then fails here as it would with cub, instead of passing unnoticed.
constexpr size_t kEmulatedWorkspaceBytes = 1;

inline cudaError_t device_exclusive_sum(void* temp, size_t& bytes, const int32_t* in, int32_t* out, int n,
                                        cudaStream_t = nullptr) {
  if (temp == nullptr) {
    bytes = kEmulatedWorkspaceBytes;
    return cudaSuccess;
  }
  if (bytes < kEmulatedWorkspaceBytes || n < 0) return cudaErrorInvalidValue;
  int32_t sum = 0;
  for (int i = 0; i < n; ++i) {
    const int32_t value = in[i];  // in and out may be the same array
    out[i] = sum;
    sum += value;
  }
  return cudaSuccess;
}

inline cudaError_t device_segmented_sort_keys(void* temp, size_t& bytes, const int32_t* keys_in, int32_t* keys_out,
                                              int items, int segments, const int32_t* begin, const int32_t* end,
                                              cudaStream_t = nullptr) {
  if (temp == nullptr) {
    bytes = kEmulatedWorkspaceBytes;
    return cudaSuccess;
  }
  if (bytes < kEmulatedWorkspaceBytes || items < 0 || segments < 0) return cudaErrorInvalidValue;
  for (int s = 0; s < segments; ++s) {
    if (begin[s] < 0 || end[s] > items || begin[s] > end[s]) return cudaErrorInvalidValue;
    std::copy(keys_in + begin[s], keys_in + end[s], keys_out + begin[s]);
    std::sort(keys_out + begin[s], keys_out + end[s]);
  }
  return cudaSuccess;
}

#endif

}  // namespace wsss
