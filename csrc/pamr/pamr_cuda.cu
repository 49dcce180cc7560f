// PAMR on CUDA. Affinity: one thread per pixel. Propagation: one thread per
// (pixel, group of kChannelsPerThread mask channels), consecutive threads on
// consecutive pixels so that weight and mask reads coalesce; each weight is
// read once per channel group, and the taps of a block overlap in L1/L2.
#include "common/cuda_utils.h"
#include "pamr/pamr.h"

namespace wsss::pamr {
namespace {

constexpr int kThreads = 256;
constexpr int kChannelsPerThread = 4;

template <class C, class S>
__global__ void affinity_kernel(const S* image, int64_t batch, int64_t channels, int64_t height, int64_t width,
                                Dilations dilations, C sigma, C* weights) {
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t plane = height * width;
  if (index >= batch * plane) return;
  const int64_t b = index / plane, pixel = index % plane;
  pixel_affinity<C, S>(image + b * channels * plane, channels, height, width, pixel / width, pixel % width,
                       dilations, sigma, weights + b * dilations.taps() * plane + pixel);
}

// Thread (b, channel group, pixel): the group's channels of P(mask) or
// P^T(mask) at the pixel.
template <class C, bool kTranspose>
__global__ void propagate_kernel(const C* weights, const C* mask, C* out, int64_t batch, int64_t channels,
                                 int64_t height, int64_t width, Dilations dilations) {
  const int64_t plane = height * width;
  const int64_t groups = (channels + kChannelsPerThread - 1) / kChannelsPerThread;
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= batch * groups * plane) return;
  const int64_t pixel = index % plane, bg = index / plane;
  const int64_t b = bg / groups, c0 = (bg % groups) * kChannelsPerThread;
  const int lanes = static_cast<int>(channels - c0 < kChannelsPerThread ? channels - c0 : kChannelsPerThread);
  const int64_t y = pixel / width, x = pixel % width;
  const C* w_image = weights + b * dilations.taps() * plane;
  const C* m = mask + (b * channels + c0) * plane;

  C acc[kChannelsPerThread] = {};
  for (int k = 0; k < dilations.taps(); ++k) {
    const Offset o = tap_offset(dilations, k);
    const C* w = w_image + k * plane;
    if (!kTranspose) {
      const C wk = w[pixel];
      const int64_t source = clamp_index(y + o.dy, height) * width + clamp_index(x + o.dx, width);
#pragma unroll
      for (int lane = 0; lane < kChannelsPerThread; ++lane)
        if (lane < lanes) acc[lane] += wk * m[lane * plane + source];
    } else {
      int64_t iy_lo, iy_hi, ix_lo, ix_hi;
      clamped_preimage(y, o.dy, height, iy_lo, iy_hi);
      clamped_preimage(x, o.dx, width, ix_lo, ix_hi);
      for (int64_t iy = iy_lo; iy <= iy_hi; ++iy)
        for (int64_t ix = ix_lo; ix <= ix_hi; ++ix) {
          const int64_t i = iy * width + ix;
          const C wk = w[i];
#pragma unroll
          for (int lane = 0; lane < kChannelsPerThread; ++lane)
            if (lane < lanes) acc[lane] += wk * m[lane * plane + i];
        }
    }
  }
  C* target = out + (b * channels + c0) * plane + pixel;
#pragma unroll
  for (int lane = 0; lane < kChannelsPerThread; ++lane)
    if (lane < lanes) target[lane * plane] = acc[lane];
}

}  // namespace

void affinity_cuda(const AffinityArgs& args, uintptr_t stream_handle) {
  CudaDeviceGuard guard(args.image.device_index);
  const cudaStream_t stream = as_cuda_stream(stream_handle);
  const int64_t batch = args.image.shape[0], channels = args.image.shape[1];
  const int64_t height = args.image.shape[2], width = args.image.shape[3];
  dispatch_floating(args.image.dtype, "image", [&](auto storage_tag) {
    using S = decltype(storage_tag);
    using C = compute_t<S>;
    WSSS_LAUNCH((affinity_kernel<C, S>), ceil_div(batch * height * width, kThreads), kThreads, 0, stream,
                args.image.as<const S>(), batch, channels, height, width, args.dilations, static_cast<C>(args.sigma),
                args.weights.as<C>());
    WSSS_CUDA_CHECK_LAUNCH();
  });
}

void propagate_cuda(const PropagateArgs& args, uintptr_t stream_handle) {
  CudaDeviceGuard guard(args.weights.device_index);
  const cudaStream_t stream = as_cuda_stream(stream_handle);
  const int64_t batch = args.mask.shape[0], channels = args.mask.shape[1];
  const int64_t height = args.mask.shape[2], width = args.mask.shape[3];
  const int64_t threads = batch * ((channels + kChannelsPerThread - 1) / kChannelsPerThread) * height * width;
  dispatch_floating(
      args.weights.dtype, "weights",
      [&](auto storage_tag) {
        using C = compute_t<decltype(storage_tag)>;
        auto kernel = args.transpose ? propagate_kernel<C, true> : propagate_kernel<C, false>;
        WSSS_LAUNCH(kernel, ceil_div(threads, kThreads), kThreads, 0, stream, args.weights.as<const C>(),
                    args.mask.as<const C>(), args.out.as<C>(), batch, channels, height, width, args.dilations);
        WSSS_CUDA_CHECK_LAUNCH();
      },
      /*allow_half=*/false);
}

}  // namespace wsss::pamr
