// FickleNet masks on CUDA: one thread per unit for the keep bits, the masked
// tap and its transpose (the transpose sums an image's samples in order, so
// it is deterministic), one block per (row, channel) for the mask counts.
#include "common/cuda_utils.h"
#include "fickle/fickle.h"

namespace wsss::fickle {
namespace {

constexpr int kThreads = 256;

__global__ void bits_kernel(uint32_t* bits, int64_t channels, int64_t plane, int64_t total, MaskParams mask,
                            int64_t first_row) {
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= total) return;
  const int64_t rc = index / plane;
  bits[index] = unit_keep_bits(mask, static_cast<uint32_t>(first_row + rc / channels), static_cast<uint32_t>(rc % channels),
                               static_cast<uint32_t>(index % plane));
}

// One thread per output unit (row, channel, tap k of tap_count, position).
template <class T>
__global__ void forward_kernel(const T* x, const uint32_t* bits, T* out, int64_t rows, int64_t batch, int64_t channels,
                               int64_t height, int64_t width, int kernel_size, float keep_scale, int first_tap,
                               int tap_count) {
  const int64_t plane = height * width;
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= rows * channels * tap_count * plane) return;
  const int64_t position = index % plane, rck = index / plane, rc = rck / tap_count;
  const int64_t r = rc / channels, c = rc % channels;
  const int tap = first_tap + static_cast<int>(rck % tap_count);
  int64_t dy, dx;
  tap_shift(kernel_size, tap, dy, dx);
  const int64_t sy = position / width + dy, sx = position % width + dx;
  T value = 0;
  if (sy >= 0 && sy < height && sx >= 0 && sx < width)
    value = static_cast<T>(tap_scale(bits[rc * plane + position], tap, kernel_size * kernel_size / 2, keep_scale)) *
            x[((r % batch) * channels + c) * plane + sy * width + sx];
  out[index] = value;
}

// One thread per element of grad_x: each tap's sum over the samples, added tap by tap.
template <class T>
__global__ void transpose_kernel(const T* grad, const uint32_t* bits, T* grad_x, int64_t samples, int64_t batch,
                                 int64_t channels, int64_t height, int64_t width, int kernel_size, float keep_scale,
                                 int first_tap, int tap_count) {
  const int64_t plane = height * width;
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= batch * channels * plane) return;
  const int64_t position = index % plane, bc = index / plane;
  T value = grad_x[index];
  for (int k = 0; k < tap_count; ++k) {
    const int tap = first_tap + k;
    int64_t dy, dx;
    tap_shift(kernel_size, tap, dy, dx);
    const int64_t i = position / width - dy, j = position % width - dx;  // the output unit reading this pixel
    if (i < 0 || i >= height || j < 0 || j >= width) continue;
    T sum = 0;
    for (int64_t s = 0; s < samples; ++s) {
      const int64_t rc = s * batch * channels + bc, unit = rc * plane + i * width + j;
      sum += static_cast<T>(tap_scale(bits[unit], tap, kernel_size * kernel_size / 2, keep_scale)) *
             grad[(rc * tap_count + k) * plane + i * width + j];
    }
    value += sum;
  }
  grad_x[index] = value;
}

template <class T>
__global__ void counts_kernel(const uint32_t* bits, T* counts, int64_t height, int64_t width, int kernel_size,
                              float keep_scale) {
  WSSS_SHARED_ARRAY(int64_t, partial, kThreads);
  const int64_t rc = blockIdx.x, plane = height * width;
  const int taps = kernel_size * kernel_size;
  for (int tap = 0; tap < taps; ++tap) {
    int64_t dy, dx;
    tap_shift(kernel_size, tap, dy, dx);
    int64_t kept = 0;
    for (int64_t position = threadIdx.x; position < plane; position += kThreads) {
      const int64_t i = position / width, j = position % width;
      if (i + dy >= 0 && i + dy < height && j + dx >= 0 && j + dx < width) kept += bits[rc * plane + position] >> tap & 1u;
    }
    partial[threadIdx.x] = kept;
    __syncthreads();
    for (int stride = kThreads / 2; stride > 0; stride /= 2) {
      if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
      __syncthreads();
    }
    if (threadIdx.x == 0)
      counts[rc * taps + tap] = static_cast<T>(partial[0]) * static_cast<T>(tap == taps / 2 ? 1.0f : keep_scale);
    __syncthreads();
  }
}

}  // namespace

void mask_bits_cuda(const BitsArgs& args, uintptr_t stream_handle) {
  CudaDeviceGuard guard(args.bits.device_index);
  const cudaStream_t stream = as_cuda_stream(stream_handle);
  const int64_t total = args.bits.numel();
  WSSS_LAUNCH(bits_kernel, ceil_div(total, kThreads), kThreads, 0, stream, args.bits.as<uint32_t>(), args.bits.shape[1],
              args.bits.shape[2] * args.bits.shape[3], total, args.mask, args.first_row);
  WSSS_CUDA_CHECK_LAUNCH();
}

void masked_tap_cuda(const TapArgs& args, uintptr_t stream_handle) {
  const ArrayView& x = args.transpose ? args.output : args.input;
  const ArrayView& rows = args.transpose ? args.input : args.output;
  CudaDeviceGuard guard(x.device_index);
  const cudaStream_t stream = as_cuda_stream(stream_handle);
  const int64_t batch = x.shape[0], channels = x.shape[1], height = x.shape[2], width = x.shape[3];
  const uint32_t* bits = args.bits.as<const uint32_t>();
  dispatch_floating(
      x.dtype, "x",
      [&](auto tag) {
        using T = compute_t<decltype(tag)>;
        if (args.transpose) {
          WSSS_LAUNCH((transpose_kernel<T>), ceil_div(x.numel(), kThreads), kThreads, 0, stream, rows.as<const T>(),
                      bits, x.as<T>(), rows.shape[0] / batch, batch, channels, height, width, args.kernel_size,
                      args.keep_scale, args.tap, args.tap_count);
        } else {
          WSSS_LAUNCH((forward_kernel<T>), ceil_div(rows.numel(), kThreads), kThreads, 0, stream, x.as<const T>(), bits,
                      rows.as<T>(), rows.shape[0], batch, channels, height, width, args.kernel_size, args.keep_scale,
                      args.tap, args.tap_count);
        }
        WSSS_CUDA_CHECK_LAUNCH();
      },
      /*allow_half=*/false);
}

void mask_counts_cuda(const CountArgs& args, uintptr_t stream_handle) {
  CudaDeviceGuard guard(args.counts.device_index);
  const cudaStream_t stream = as_cuda_stream(stream_handle);
  const int64_t blocks = args.bits.shape[0] * args.bits.shape[1];
  WSSS_CHECK(blocks < (int64_t{1} << 31), "too many (row, channel) pairs for one call: ", blocks);
  dispatch_floating(
      args.counts.dtype, "counts",
      [&](auto tag) {
        using T = compute_t<decltype(tag)>;
        WSSS_LAUNCH((counts_kernel<T>), static_cast<unsigned int>(blocks), kThreads, 0, stream,
                    args.bits.as<const uint32_t>(), args.counts.as<T>(), args.bits.shape[2], args.bits.shape[3],
                    args.kernel_size, args.keep_scale);
        WSSS_CUDA_CHECK_LAUNCH();
      },
      /*allow_half=*/false);
}

}  // namespace wsss::fickle
