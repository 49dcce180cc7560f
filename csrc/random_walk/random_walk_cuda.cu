// Random walk on CUDA. A step runs one block per 32 x 8 tile of output
// pixels: the block stages kChannelsPerPass channels of the tile and its halo
// in shared memory, then every thread sums its taps from there (the 69 taps
// of radius 5 re-read each staged value up to 69 times). The weight gradient
// is one thread per (tap, pixel), coalesced along the pixels.
#include <cstdlib>

#include "common/cuda_utils.h"
#include "random_walk/random_walk.h"

namespace wsss::random_walk {
namespace {

constexpr int kTileX = 32;
constexpr int kTileY = 8;
constexpr int kChannelsPerPass = 4;
constexpr int kMaxSharedBytes = 48 * 1024;  // without opting in to more
constexpr int kThreads = 256;

template <class T>
__device__ T read_source(const T* tile, int tile_width, int tile_height, int halo, int ty, int tx, int dy, int dx,
                         const T* plane_ptr, int64_t height, int64_t width, int64_t sy, int64_t sx) {
  if (!inside(sy, sx, height, width)) return T(0);
  const int iy = ty + halo + dy, ix = tx + halo + dx;
  if (tile != nullptr && iy >= 0 && iy < tile_height && ix >= 0 && ix < tile_width) return tile[iy * tile_width + ix];
  return plane_ptr[sy * width + sx];
}

// Thread = one output pixel of the block's tile, kChannelsPerPass channels at a time.
template <class T, bool kTranspose>
__global__ void step_kernel(const T* weights, const int32_t* offsets, int taps, const T* x, T* y, int64_t channels,
                            int64_t height, int64_t width, int halo, bool use_tile) {
  WSSS_DYNAMIC_SHARED(unsigned char, shared_raw);
  T* shared = reinterpret_cast<T*>(shared_raw);
  const int tile_width = kTileX + 2 * halo, tile_height = kTileY + 2 * halo;
  const int tile_size = tile_width * tile_height;
  const int64_t b = blockIdx.z, plane = height * width;
  const int64_t x0 = static_cast<int64_t>(blockIdx.x) * kTileX, y0 = static_cast<int64_t>(blockIdx.y) * kTileY;
  const int tx = threadIdx.x, ty = threadIdx.y, thread = ty * kTileX + tx;
  const int64_t px = x0 + tx, py = y0 + ty;
  const bool active = px < width && py < height;
  const T* w = weights + b * taps * plane;

  for (int64_t c0 = 0; c0 < channels; c0 += kChannelsPerPass) {
    const int lanes = static_cast<int>(channels - c0 < kChannelsPerPass ? channels - c0 : kChannelsPerPass);
    const T* xc = x + (b * channels + c0) * plane;
    if (use_tile) {
      __syncthreads();  // the previous pass has finished reading the tile
      for (int i = thread; i < lanes * tile_size; i += kTileX * kTileY) {
        const int lane = i / tile_size, cell = i % tile_size;
        const int64_t sy = y0 - halo + cell / tile_width, sx = x0 - halo + cell % tile_width;
        shared[i] = inside(sy, sx, height, width) ? xc[lane * plane + sy * width + sx] : T(0);
      }
      __syncthreads();
    }
    if (!active) continue;
    T acc[kChannelsPerPass] = {};
    for (int t = 0; t < taps; ++t) {
      const int dy = kTranspose ? -__ldg(offsets + 2 * t) : __ldg(offsets + 2 * t);
      const int dx = kTranspose ? -__ldg(offsets + 2 * t + 1) : __ldg(offsets + 2 * t + 1);
      const int64_t sy = py + dy, sx = px + dx;
      if (!inside(sy, sx, height, width)) continue;
      // Forward: the weight of the output pixel; transpose: of the source pixel.
      const T weight = kTranspose ? w[t * plane + sy * width + sx] : w[t * plane + py * width + px];
#pragma unroll
      for (int lane = 0; lane < kChannelsPerPass; ++lane)
        if (lane < lanes)
          acc[lane] += weight * read_source(use_tile ? shared + lane * tile_size : nullptr, tile_width, tile_height,
                                            halo, ty, tx, dy, dx, xc + lane * plane, height, width, sy, sx);
    }
    T* out = y + (b * channels + c0) * plane + py * width + px;
#pragma unroll
    for (int lane = 0; lane < kChannelsPerPass; ++lane)
      if (lane < lanes) out[lane * plane] = acc[lane];
  }
}

template <class T>
__global__ void weight_grad_kernel(const T* grad_y, const T* x, const int32_t* offsets, T* grad_w, int64_t batch,
                                   int64_t taps, int64_t channels, int64_t height, int64_t width) {
  const int64_t plane = height * width;
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= batch * taps * plane) return;
  const int64_t pixel = index % plane, bt = index / plane, b = bt / taps, t = bt % taps;
  const int64_t py = pixel / width, px = pixel % width;
  const int64_t sy = py + offsets[2 * t], sx = px + offsets[2 * t + 1];
  if (!inside(sy, sx, height, width)) return;
  const T* g = grad_y + b * channels * plane + pixel;
  const T* source = x + b * channels * plane + sy * width + sx;
  T sum = 0;
  for (int64_t c = 0; c < channels; ++c) sum += g[c * plane] * source[c * plane];
  grad_w[index] += sum;
}

}  // namespace

void step_cuda(const StepArgs& args, uintptr_t stream_handle) {
  CudaDeviceGuard guard(args.weights.device_index);
  const cudaStream_t stream = as_cuda_stream(stream_handle);
  const int64_t batch = args.x.shape[0], channels = args.x.shape[1];
  const int64_t height = args.x.shape[2], width = args.x.shape[3];
  const int taps = static_cast<int>(args.weights.shape[1]);
  WSSS_CHECK(batch <= 65535, "at most 65535 images per call on CUDA, got ", batch);
  dispatch_floating(
      args.weights.dtype, "weights",
      [&](auto tag) {
        using T = compute_t<decltype(tag)>;
        const int halo = args.halo < 0 ? 0 : args.halo;
        const int64_t shared_bytes =
            static_cast<int64_t>(kChannelsPerPass) * (kTileX + 2 * halo) * (kTileY + 2 * halo) * sizeof(T);
        const bool use_tile = halo <= 64 && shared_bytes <= kMaxSharedBytes;
        const dim3 grid(ceil_div(width, kTileX), ceil_div(height, kTileY), static_cast<unsigned int>(batch));
        const dim3 block(kTileX, kTileY);
        auto kernel = args.transpose ? step_kernel<T, true> : step_kernel<T, false>;
        WSSS_LAUNCH(kernel, grid, block, use_tile ? shared_bytes : 0, stream, args.weights.as<const T>(),
                    args.offsets.as<const int32_t>(), taps, args.x.as<const T>(), args.y.as<T>(), channels, height,
                    width, use_tile ? halo : 0, use_tile);
        WSSS_CUDA_CHECK_LAUNCH();
      },
      /*allow_half=*/false);
}

void weight_grad_cuda(const WeightGradArgs& args, uintptr_t stream_handle) {
  CudaDeviceGuard guard(args.grad_weights.device_index);
  const cudaStream_t stream = as_cuda_stream(stream_handle);
  const int64_t batch = args.x.shape[0], channels = args.x.shape[1];
  const int64_t height = args.x.shape[2], width = args.x.shape[3], taps = args.grad_weights.shape[1];
  dispatch_floating(
      args.grad_weights.dtype, "grad_weights",
      [&](auto tag) {
        using T = compute_t<decltype(tag)>;
        WSSS_LAUNCH((weight_grad_kernel<T>), ceil_div(batch * taps * height * width, kThreads), kThreads, 0, stream,
                    args.grad_y.as<const T>(), args.x.as<const T>(), args.offsets.as<const int32_t>(),
                    args.grad_weights.as<T>(), batch, taps, channels, height, width);
        WSSS_CUDA_CHECK_LAUNCH();
      },
      /*allow_half=*/false);
}

}  // namespace wsss::random_walk
