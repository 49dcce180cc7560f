// Dense CRF on CUDA: the whole batch is one lattice, built on the GPU.
// Build: a thread per pixel embeds it, a thread per entry inserts its corner
// into the hash table with atomicCAS, representatives take vertex numbers
// from an atomic counter. Link: blur neighbours by hash lookups, splat lists
// by a count / scan / fill, then a segmented sort of every list so the
// splat sums run in entry order (results repeat run to run). Filtering: one
// thread per (vertex, lane) for splat and blur, per (pixel, lane) for slice,
// any label count.
#include <algorithm>
#include <type_traits>
#include <utility>

#include "common/cuda_utils.h"
#include "common/device_algorithms.h"
#include "dense_crf/dense_crf.h"

namespace wsss::dense_crf {
namespace {

constexpr int kThreads = 256;

template <int D>
__global__ void embed_kernel(const uint8_t* image, int64_t images, int64_t pixels, int64_t width,
                             Embedding<D> embedding, int32_t* simplex, float* weights) {
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= images * pixels) return;
  const int64_t b = p / pixels;
  float feature[D];
  pixel_features<D>(image + b * 3 * pixels, pixels, p - b * pixels, width, embedding, feature);
  embed_point<D>(feature, embedding, simplex + p * D, weights + p * (D + 1));
}

template <int D>
__global__ void insert_kernel(int32_t* slots, uint64_t mask, const int32_t* simplex, int64_t entries,
                              int64_t entries_per_image, int32_t* entry_rep) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= entries) return;
  const int64_t image = e / entries_per_image;
  int32_t key[D];
  entry_key<D>(simplex, e, key);
  for (uint64_t h = hash_key<D>(image, key) & mask;; h = (h + 1) & mask) {
    // The simplices were written by the previous kernel, so any occupant's
    // key is visible. Read before the CAS: most corners are already in.
    int32_t occupant = *reinterpret_cast<volatile int32_t*>(slots + h);
    if (occupant < 0) occupant = atomicCAS(slots + h, -1, static_cast<int32_t>(e));
    if (occupant < 0) {
      entry_rep[e] = static_cast<int32_t>(e);
      return;
    }
    if (entry_has_key<D>(simplex, entries_per_image, occupant, image, key)) {
      entry_rep[e] = occupant;
      return;
    }
  }
}

__global__ void number_vertices_kernel(const int32_t* entry_rep, int64_t entries, int32_t* counter,
                                       int32_t* entry_vertex, int32_t* vertex_entry) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= entries || entry_rep[e] != e) return;
  const int32_t v = atomicAdd(counter, 1);
  vertex_entry[v] = static_cast<int32_t>(e);
  entry_vertex[e] = v;
}

__global__ void resolve_kernel(const int32_t* entry_rep, int64_t entries, int32_t* entry_vertex) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= entries) return;
  const int32_t rep = entry_rep[e];
  if (rep != e) entry_vertex[e] = entry_vertex[rep];
}

template <int D>
__global__ void neighbours_kernel(const int32_t* slots, uint64_t mask, const int32_t* simplex, int64_t entries_per_image,
                                  const int32_t* vertex_entry, const int32_t* entry_vertex, int64_t vertices,
                                  int32_t* neighbours) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= vertices * (D + 1)) return;
  const int64_t v = t % vertices;
  const int j = static_cast<int>(t / vertices);
  const int32_t e = vertex_entry[v];
  const int64_t image = e / entries_per_image;
  int32_t key[D], minus[D], plus[D];
  entry_key<D>(simplex, e, key);
  neighbour_keys<D>(key, j, minus, plus);
  const int32_t a = find_entry<D>(slots, mask, simplex, entries_per_image, image, minus);
  const int32_t b = find_entry<D>(slots, mask, simplex, entries_per_image, image, plus);
  neighbours[2 * t] = a < 0 ? -1 : entry_vertex[a];
  neighbours[2 * t + 1] = b < 0 ? -1 : entry_vertex[b];
}

__global__ void count_kernel(const int32_t* entry_vertex, int64_t entries, int32_t* counts) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e < entries) atomicAdd(counts + entry_vertex[e], 1);
}

__global__ void fill_kernel(const int32_t* entry_vertex, int64_t entries, int32_t* cursor, int32_t* grouped) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e < entries) grouped[atomicAdd(cursor + entry_vertex[e], 1)] = static_cast<int32_t>(e);
}

__global__ void set_value_kernel(int32_t* target, int32_t value) { *target = value; }

__global__ void inverse_sqrt_kernel(float* norm, int64_t n) {
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p < n) norm[p] = rsqrtf(norm[p] + 1e-20f);
}

// The sorted lists hold entries: turn them into (pixel, barycentric weight).
template <int D>
__global__ void entries_to_pixels_kernel(const float* weights, int64_t entries, int32_t* pixels,
                                         float* splat_weights) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= entries) return;
  const int32_t e = pixels[i];
  pixels[i] = e / (D + 1);
  splat_weights[i] = weights[e];
}

__global__ void fold_norm_kernel(const int32_t* pixels, const float* norm, int64_t entries, float* splat_weights) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < entries) splat_weights[i] *= norm[pixels[i]];
}

// ---------------------------------------------------------------------------
// Filtering, on rows of `width` floats
// ---------------------------------------------------------------------------

__global__ void splat_kernel(const int32_t* start, const int32_t* pixels, const float* splat_weights, const float* q,
                             int64_t vertices, int64_t width, float* values) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= vertices * width) return;
  const int64_t v = t / width, l = t - v * width;
  float sum = 0.f;
  for (int32_t i = start[v]; i < start[v + 1]; ++i)
    sum += q ? splat_weights[i] * q[static_cast<int64_t>(pixels[i]) * width + l] : splat_weights[i];
  values[t] = sum;
}

__global__ void blur_kernel(const int32_t* neighbours, const float* in, int64_t vertices, int64_t width, float* out) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= vertices * width) return;
  const int64_t v = t / width, l = t - v * width;
  const int32_t minus = neighbours[2 * v], plus = neighbours[2 * v + 1];
  const float a = minus >= 0 ? in[minus * width + l] : 0.f;
  const float b = plus >= 0 ? in[plus * width + l] : 0.f;
  out[t] = in[t] + 0.5f * (a + b);
}

template <int D>
__global__ void slice_kernel(const int32_t* entry_vertex, const float* weights, const float* values,
                             const float* norm, int64_t total_pixels, int64_t width, float scale, bool accumulate,
                             float* out) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= total_pixels * width) return;
  const int64_t p = t / width, l = t - p * width;
  float sum = 0.f;
  for (int r = 0; r <= D; ++r) {
    const int64_t e = p * (D + 1) + r;
    sum += weights[e] * values[static_cast<int64_t>(entry_vertex[e]) * width + l];
  }
  const float result = (norm ? scale * norm[p] : scale) * sum;
  out[t] = accumulate ? out[t] + result : result;
}

// One thread per pixel; consecutive threads read consecutive unary values.
template <class U>
__global__ void softmax_kernel(const U* unary, const float* pairwise, float* q, int64_t rows, int64_t n_labels,
                               int64_t pixels, int64_t width, float* q_out) {
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= rows) return;
  const int64_t b = p / pixels, i = p - b * pixels;
  float* row = q + p * width;
  // -unary into q's own row first: the softmax then runs in place.
  for (int64_t l = 0; l < n_labels; ++l) row[l] = -load_as<float>(unary, (b * n_labels + l) * pixels + i);
  mean_field_softmax(row, pairwise ? pairwise + p * width : nullptr, row, n_labels, width);
  if (q_out)
    for (int64_t l = 0; l < n_labels; ++l) q_out[(b * n_labels + l) * pixels + i] = row[l];
}

template <int D>
void filter_impl(const Lattice& lat, int64_t vertices, const float* q, const float* norm, float* out, int64_t width,
                 float coefficient, bool accumulate, float* values_a, float* values_b, cudaStream_t stream) {
  const int64_t vertex_items = vertices * width;
  WSSS_LAUNCH(splat_kernel, ceil_div(vertex_items, kThreads), kThreads, 0, stream, lat.splat_start.as<int32_t>(),
              lat.splat_pixels.as<int32_t>(), lat.splat_weights.as<float>(), q, vertices, width, values_a);
  WSSS_CUDA_CHECK_LAUNCH();
  for (int j = 0; j <= D; ++j) {
    WSSS_LAUNCH(blur_kernel, ceil_div(vertex_items, kThreads), kThreads, 0, stream,
                lat.neighbours.as<int32_t>() + 2 * j * vertices, values_a, vertices, width, values_b);
    WSSS_CUDA_CHECK_LAUNCH();
    std::swap(values_a, values_b);
  }
  const int64_t total_pixels = lat.images * lat.pixels();
  WSSS_LAUNCH((slice_kernel<D>), ceil_div(total_pixels * width, kThreads), kThreads, 0, stream,
              lat.entry_vertex.as<int32_t>(), lat.weights.as<float>(), values_a, norm, total_pixels, width,
              coefficient * slice_alpha<D>(), accumulate, out);
  WSSS_CUDA_CHECK_LAUNCH();
}

size_t scan_bytes(int64_t vertices) {
  size_t bytes = 0;
  WSSS_CUDA_CHECK(device_exclusive_sum(nullptr, bytes, nullptr, nullptr, static_cast<int>(vertices)));
  return bytes;
}

size_t sort_bytes(int64_t vertices, int64_t entries) {
  size_t bytes = 0;
  WSSS_CUDA_CHECK(device_segmented_sort_keys(nullptr, bytes, nullptr, nullptr, static_cast<int>(entries),
                                             static_cast<int>(vertices), nullptr, nullptr));
  return bytes;
}

}  // namespace

int64_t build_vertices_cuda(Lattice& lat, const ArrayView& image, double sxy, double srgb, uintptr_t stream_handle) {
  CudaDeviceGuard guard(image.device_index);
  cudaStream_t stream = as_cuda_stream(stream_handle);
  const int64_t pixels = lat.pixels(), entries = lat.entries();
  const uint64_t capacity = static_cast<uint64_t>(lat.slots.shape[0]);
  int32_t* counter = lat.counter.as<int32_t>();
  WSSS_CUDA_CHECK(cudaMemsetAsync(lat.slots.data, 0xff, capacity * sizeof(int32_t), stream));  // all -1
  WSSS_CUDA_CHECK(cudaMemsetAsync(counter, 0, sizeof(int32_t), stream));
  dispatch_dims(lat.dims, [&](auto d) {
    constexpr int D = decltype(d)::value;
    WSSS_LAUNCH((embed_kernel<D>), ceil_div(lat.images * pixels, kThreads), kThreads, 0, stream, image.as<uint8_t>(),
                lat.images, pixels, lat.width, make_embedding<D>(sxy, srgb), lat.simplex.as<int32_t>(),
                lat.weights.as<float>());
    WSSS_CUDA_CHECK_LAUNCH();
    WSSS_LAUNCH((insert_kernel<D>), ceil_div(entries, kThreads), kThreads, 0, stream, lat.slots.as<int32_t>(),
                capacity - 1, lat.simplex.as<int32_t>(), entries, pixels * (D + 1), lat.entry_rep.as<int32_t>());
    WSSS_CUDA_CHECK_LAUNCH();
    return 0;
  });
  WSSS_LAUNCH(number_vertices_kernel, ceil_div(entries, kThreads), kThreads, 0, stream, lat.entry_rep.as<int32_t>(),
              entries, counter, lat.entry_vertex.as<int32_t>(), lat.vertex_entry.as<int32_t>());
  WSSS_CUDA_CHECK_LAUNCH();
  int32_t vertices = 0;
  WSSS_CUDA_CHECK(cudaMemcpyAsync(&vertices, counter, sizeof vertices, cudaMemcpyDeviceToHost, stream));
  WSSS_CUDA_CHECK(cudaStreamSynchronize(stream));  // M sizes the buffers Python allocates next
  return vertices;
}

int64_t scratch_bytes_cuda(int64_t vertices, int64_t entries) {
  return static_cast<int64_t>(std::max(scan_bytes(vertices), sort_bytes(vertices, entries)));
}

void link_cuda(const Lattice& lat, int64_t vertices, float* values_a, float* values_b, uintptr_t stream_handle) {
  CudaDeviceGuard guard(lat.weights.device_index);
  cudaStream_t stream = as_cuda_stream(stream_handle);
  const int64_t entries = lat.entries();
  int32_t* entry_rep = lat.entry_rep.as<int32_t>();
  int32_t* entry_vertex = lat.entry_vertex.as<int32_t>();
  int32_t* vertex_entry = lat.vertex_entry.as<int32_t>();
  int32_t* start = lat.splat_start.as<int32_t>();
  const uint64_t mask = static_cast<uint64_t>(lat.slots.shape[0]) - 1;
  const int entry_blocks = static_cast<int>(ceil_div(entries, kThreads));

  WSSS_LAUNCH(resolve_kernel, entry_blocks, kThreads, 0, stream, entry_rep, entries, entry_vertex);
  WSSS_CUDA_CHECK_LAUNCH();
  dispatch_dims(lat.dims, [&](auto d) {
    constexpr int D = decltype(d)::value;
    WSSS_LAUNCH((neighbours_kernel<D>), ceil_div(vertices * (D + 1), kThreads), kThreads, 0, stream,
                lat.slots.as<int32_t>(), mask, lat.simplex.as<int32_t>(), lat.pixels() * (D + 1), vertex_entry,
                entry_vertex, vertices, lat.neighbours.as<int32_t>());
    WSSS_CUDA_CHECK_LAUNCH();
    return 0;
  });

  // Splat lists. vertex_entry and entry_rep are free from here on: the first
  // holds counts then fill cursors, the second the unsorted lists.
  int32_t* counts = vertex_entry;
  WSSS_CUDA_CHECK(cudaMemsetAsync(counts, 0, vertices * sizeof(int32_t), stream));
  WSSS_LAUNCH(count_kernel, entry_blocks, kThreads, 0, stream, entry_vertex, entries, counts);
  WSSS_CUDA_CHECK_LAUNCH();
  size_t bytes = static_cast<size_t>(lat.scratch.numel());
  WSSS_CUDA_CHECK(device_exclusive_sum(lat.scratch.data, bytes, counts, start, static_cast<int>(vertices), stream));
  WSSS_LAUNCH(set_value_kernel, 1, 1, 0, stream, start + vertices, static_cast<int32_t>(entries));
  WSSS_CUDA_CHECK_LAUNCH();
  int32_t* cursor = counts;
  WSSS_CUDA_CHECK(cudaMemcpyAsync(cursor, start, vertices * sizeof(int32_t), cudaMemcpyDeviceToDevice, stream));
  WSSS_LAUNCH(fill_kernel, entry_blocks, kThreads, 0, stream, entry_vertex, entries, cursor, entry_rep);
  WSSS_CUDA_CHECK_LAUNCH();
  bytes = static_cast<size_t>(lat.scratch.numel());
  int32_t* pixels = lat.splat_pixels.as<int32_t>();
  float* splat_weights = lat.splat_weights.as<float>();
  WSSS_CUDA_CHECK(device_segmented_sort_keys(lat.scratch.data, bytes, entry_rep, pixels, static_cast<int>(entries),
                                             static_cast<int>(vertices), start, start + 1, stream));

  // Symmetric normalisation from the filtered ones, then folded into the
  // splat weights (the slice applies it per pixel).
  float* norm = lat.norm.as<float>();
  const int64_t total_pixels = lat.images * lat.pixels();
  dispatch_dims(lat.dims, [&](auto d) {
    constexpr int D = decltype(d)::value;
    WSSS_LAUNCH((entries_to_pixels_kernel<D>), entry_blocks, kThreads, 0, stream, lat.weights.as<float>(), entries,
                pixels, splat_weights);
    WSSS_CUDA_CHECK_LAUNCH();
    filter_impl<D>(lat, vertices, nullptr, nullptr, norm, 1, 1.f, false, values_a, values_b, stream);
    return 0;
  });
  WSSS_LAUNCH(inverse_sqrt_kernel, ceil_div(total_pixels, kThreads), kThreads, 0, stream, norm, total_pixels);
  WSSS_CUDA_CHECK_LAUNCH();
  WSSS_LAUNCH(fold_norm_kernel, entry_blocks, kThreads, 0, stream, pixels, norm, entries, splat_weights);
  WSSS_CUDA_CHECK_LAUNCH();
}

void filter_cuda(const Lattice& lat, int64_t vertices, const float* q, float* out, int64_t width,
                 float coefficient, bool accumulate, float* values_a, float* values_b, uintptr_t stream_handle) {
  CudaDeviceGuard guard(lat.weights.device_index);
  dispatch_dims(lat.dims, [&](auto d) {
    filter_impl<decltype(d)::value>(lat, vertices, q, lat.norm.as<float>(), out, width, coefficient, accumulate,
                                    values_a, values_b, as_cuda_stream(stream_handle));
    return 0;
  });
}

void softmax_cuda(const ArrayView& unary, const float* pairwise, float* q, int64_t width, float* q_out,
                  uintptr_t stream_handle) {
  CudaDeviceGuard guard(unary.device_index);
  const int64_t n_labels = unary.shape[1];
  const int64_t pixels = unary.shape[2] * unary.shape[3];
  const int64_t rows = unary.shape[0] * pixels;
  dispatch_floating(unary.dtype, "unary", [&](auto tag) {
    using U = decltype(tag);
    WSSS_LAUNCH((softmax_kernel<U>), ceil_div(rows, kThreads), kThreads, 0, as_cuda_stream(stream_handle),
                unary.as<U>(), pairwise, q, rows, n_labels, pixels, width, q_out);
    WSSS_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace wsss::dense_crf
