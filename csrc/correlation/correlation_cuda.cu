// Correlation on CUDA: one warp per output pixel (forward) or input pixel
// (backward), its lanes spread over the channels of the channels-last rows,
// so every read is coalesced and a warp shuffle finishes each dot product.
#include "common/cuda_utils.h"
#include "correlation/correlation.h"

namespace wsss::correlation {
namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 8;

template <class T>
__device__ T warp_sum(T value) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

template <class T>
__global__ void forward_kernel(const T* in1, const T* in2, T* out, int64_t batch, int64_t height, int64_t width,
                               int64_t channels, Geometry g) {
  const int64_t out_h = g.out_h(height), out_w = g.out_w(width);
  const int64_t pixel = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (pixel >= batch * out_h * out_w) return;
  const int lane = threadIdx.x % kWarp;
  const int64_t b = pixel / (out_h * out_w), h = pixel / out_w % out_h, w = pixel % out_w;
  const int64_t patches = static_cast<int64_t>(g.patch_h) * g.patch_w;
  const T* image1 = in1 + b * height * width * channels;
  const T* image2 = in2 + b * height * width * channels;
  for (int64_t p = 0; p < patches; ++p) {
    const int64_t dy = g.shift_y(static_cast<int>(p / g.patch_w)), dx = g.shift_x(static_cast<int>(p % g.patch_w));
    T sum = 0;
    for_each_product(g, height, width, h, w, dy, dx, [&](int64_t y, int64_t x, int64_t y2, int64_t x2) {
      const T* a = image1 + (y * width + x) * channels;
      const T* b2 = image2 + (y2 * width + x2) * channels;
      for (int64_t c = lane; c < channels; c += kWarp) sum += a[c] * b2[c];
    });
    sum = warp_sum(sum);
    if (lane == 0) out[(b * patches + p) * out_h * out_w + h * out_w + w] = sum;
  }
}

// Warp per input pixel; each lane accumulates its channels of both gradients.
template <class T>
__global__ void backward_kernel(const T* in1, const T* in2, const T* grad, T* grad_in1, T* grad_in2, int64_t batch,
                                int64_t height, int64_t width, int64_t channels, Geometry g) {
  const int64_t out_h = g.out_h(height), out_w = g.out_w(width), out_plane = out_h * out_w;
  const int64_t pixel = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (pixel >= batch * height * width) return;
  const int lane = threadIdx.x % kWarp;
  const int64_t b = pixel / (height * width), y = pixel / width % height, x = pixel % width;
  const int64_t patches = static_cast<int64_t>(g.patch_h) * g.patch_w;
  const T* image1 = in1 + b * height * width * channels;
  const T* image2 = in2 + b * height * width * channels;
  const T* grad_b = grad + b * patches * out_plane;
  for (int64_t c0 = 0; c0 < channels; c0 += kWarp) {
    const int64_t c = c0 + lane;
    if (grad_in1 != nullptr) {
      T acc = 0;
      for_each_reader_of_in1(g, height, width, y, x, [&](int64_t h, int64_t w, int64_t p, int64_t y2, int64_t x2) {
        if (c < channels) acc += grad_b[p * out_plane + h * out_w + w] * image2[(y2 * width + x2) * channels + c];
      });
      if (c < channels) grad_in1[pixel * channels + c] = acc;
    }
    if (grad_in2 != nullptr) {
      T acc = 0;
      for_each_reader_of_in2(g, height, width, y, x, [&](int64_t h, int64_t w, int64_t p, int64_t y1, int64_t x1) {
        if (c < channels) acc += grad_b[p * out_plane + h * out_w + w] * image1[(y1 * width + x1) * channels + c];
      });
      if (c < channels) grad_in2[pixel * channels + c] = acc;
    }
  }
}

}  // namespace

void forward_cuda(const ForwardArgs& args, uintptr_t stream_handle) {
  CudaDeviceGuard guard(args.in1.device_index);
  const cudaStream_t stream = as_cuda_stream(stream_handle);
  const int64_t batch = args.in1.shape[0], height = args.in1.shape[1], width = args.in1.shape[2];
  const int64_t pixels = batch * args.geometry.out_h(height) * args.geometry.out_w(width);
  dispatch_floating(
      args.in1.dtype, "in1",
      [&](auto tag) {
        using T = compute_t<decltype(tag)>;
        WSSS_LAUNCH((forward_kernel<T>), ceil_div(pixels, kWarpsPerBlock), kWarpsPerBlock * kWarp, 0, stream,
                    args.in1.as<const T>(), args.in2.as<const T>(), args.out.as<T>(), batch, height, width,
                    args.in1.shape[3], args.geometry);
        WSSS_CUDA_CHECK_LAUNCH();
      },
      /*allow_half=*/false);
}

void backward_cuda(const BackwardArgs& args, uintptr_t stream_handle) {
  CudaDeviceGuard guard(args.in1.device_index);
  const cudaStream_t stream = as_cuda_stream(stream_handle);
  const int64_t batch = args.in1.shape[0], height = args.in1.shape[1], width = args.in1.shape[2];
  dispatch_floating(
      args.in1.dtype, "in1",
      [&](auto tag) {
        using T = compute_t<decltype(tag)>;
        WSSS_LAUNCH((backward_kernel<T>), ceil_div(batch * height * width, kWarpsPerBlock), kWarpsPerBlock * kWarp, 0,
                    stream, args.in1.as<const T>(), args.in2.as<const T>(), args.grad.as<const T>(),
                    args.grad_in1.as<T>(), args.grad_in2.as<T>(), batch, height, width, args.in1.shape[3],
                    args.geometry);
        WSSS_CUDA_CHECK_LAUNCH();
      },
      /*allow_half=*/false);
}

}  // namespace wsss::correlation
