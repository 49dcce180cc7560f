// Dense CRF on the CPU. The lattice of the whole batch is one set of
// vertices, so every stage is a flat OpenMP loop over pixels or vertices and
// small batches still use every core. The hash inserts race through atomic
// compare-and-swap; vertex numbering, splat lists and every float sum follow
// the entry order, so results do not depend on the thread count.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/parallel.h"
#include "dense_crf/dense_crf.h"

namespace wsss::dense_crf {
namespace {

// Below this many items a parallel region costs more than it saves.
constexpr int64_t kMinParallelItems = 1 << 12;
// Vertices or pixels per parallel work item: large enough to amortise the
// call into the ISA clone, small enough to balance uneven splat lists.
constexpr int64_t kBlock = 256;

static_assert(sizeof(std::atomic<int32_t>) == sizeof(int32_t), "hash slots are updated in place as atomics");

template <class Body>
void parallel_blocks(int64_t n, Body&& body) {
  const int64_t blocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(dynamic, 4) if (n > kMinParallelItems)
  for (int64_t b = 0; b < blocks; ++b) body(b * kBlock, std::min(n, (b + 1) * kBlock));
}

// The entry that holds e's key: e itself if it was first, else the first.
template <int D>
int32_t insert_entry(int32_t* slots, uint64_t mask, const int32_t* simplex, int64_t entries_per_image, int32_t e) {
  const int64_t image = e / entries_per_image;
  int32_t key[D];
  entry_key<D>(simplex, e, key);
  for (uint64_t h = hash_key<D>(image, key) & mask;; h = (h + 1) & mask) {
    auto& slot = reinterpret_cast<std::atomic<int32_t>&>(slots[h]);
    // Relaxed is enough: the simplices were written before this loop began.
    // Most corners are already in the table: read first, so that the CAS
    // (which takes the cache line exclusively) runs only on empty slots.
    int32_t occupant = slot.load(std::memory_order_relaxed);
    if (occupant < 0 && slot.compare_exchange_strong(occupant, e, std::memory_order_relaxed)) return e;
    if (entry_has_key<D>(simplex, entries_per_image, occupant, image, key)) return occupant;
  }
}

template <int D>
int64_t build_vertices_impl(Lattice& lat, const uint8_t* image, double sxy, double srgb) {
  const Embedding<D> embedding = make_embedding<D>(sxy, srgb);
  const int64_t pixels = lat.pixels();
  const int64_t total_pixels = lat.images * pixels;
  const int64_t entries = lat.entries();
  const int64_t per_image = pixels * (D + 1);
  int32_t* simplex = lat.simplex.as<int32_t>();
  float* weights = lat.weights.as<float>();
  int32_t* slots = lat.slots.as<int32_t>();
  int32_t* entry_rep = lat.entry_rep.as<int32_t>();
  int32_t* entry_vertex = lat.entry_vertex.as<int32_t>();
  int32_t* vertex_entry = lat.vertex_entry.as<int32_t>();
  const uint64_t mask = static_cast<uint64_t>(lat.slots.shape[0]) - 1;

  parallel_blocks(total_pixels, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t b = p / pixels;
      float feature[D];
      pixel_features<D>(image + b * 3 * pixels, pixels, p - b * pixels, lat.width, embedding, feature);
      embed_point<D>(feature, embedding, simplex + p * D, weights + p * (D + 1));
    }
  });
  std::fill(slots, slots + lat.slots.shape[0], -1);
  parallel_blocks(entries, [&](int64_t e0, int64_t e1) {
    for (int64_t e = e0; e < e1; ++e)
      entry_rep[e] = insert_entry<D>(slots, mask, simplex, per_image, static_cast<int32_t>(e));
  });
  // Number the vertices in entry order: one pass, deterministic.
  int32_t vertices = 0;
  for (int64_t e = 0; e < entries; ++e) {
    if (entry_rep[e] == e) {
      vertex_entry[vertices] = static_cast<int32_t>(e);
      entry_vertex[e] = vertices++;
    }
  }
  return vertices;
}

// ---------------------------------------------------------------------------
// Filtering stages on rows of `width` floats. Rows of a multiple of 8 (the
// padded layout ops/dense_crf.py allocates) run as whole 8-lane blocks.
// ---------------------------------------------------------------------------

constexpr int64_t kLanes = 8;

// dst[l] += w * src[l]
inline void axpy_row(float* dst, float w, const float* src, int64_t width) {
  if (width % kLanes == 0) {
    for (int64_t l = 0; l < width; l += kLanes)
#pragma omp simd
      for (int64_t k = 0; k < kLanes; ++k) dst[l + k] += w * src[l + k];
  } else {
    for (int64_t l = 0; l < width; ++l) dst[l] += w * src[l];
  }
}

// values[v] = sum over v's entries of w * q[pixel]; q null: a signal of ones.
WSSS_CPU_VECTORIZED void splat_range(const Lattice& lat, int64_t v0, int64_t v1, const float* q, float* values,
                                     int64_t width) {
  const int32_t* start = lat.splat_start.as<int32_t>();
  const int32_t* pixels = lat.splat_pixels.as<int32_t>();
  const float* weights = lat.splat_weights.as<float>();
  for (int64_t v = v0; v < v1; ++v) {
    float* dst = values + v * width;
    for (int64_t l = 0; l < width; ++l) dst[l] = 0.f;
    for (int32_t i = start[v]; i < start[v + 1]; ++i) {
      if (q == nullptr)
        dst[0] += weights[i];
      else
        axpy_row(dst, weights[i], q + static_cast<int64_t>(pixels[i]) * width, width);
    }
  }
}

// One blur pass along one direction: out = in + (in[minus] + in[plus]) / 2.
WSSS_CPU_VECTORIZED void blur_range(const int32_t* neighbours, int64_t v0, int64_t v1, const float* in, float* out,
                                    int64_t width) {
  for (int64_t v = v0; v < v1; ++v) {
    const int32_t minus = neighbours[2 * v], plus = neighbours[2 * v + 1];
    float* dst = out + v * width;
    const float* centre = in + v * width;
    for (int64_t l = 0; l < width; ++l) dst[l] = centre[l];
    if (minus >= 0) axpy_row(dst, 0.5f, in + static_cast<int64_t>(minus) * width, width);
    if (plus >= 0) axpy_row(dst, 0.5f, in + static_cast<int64_t>(plus) * width, width);
  }
}

// out[p] (+)= coefficient * alpha * norm[p] * sum_r w_r values[vertex(p, r)]
// (norm null: 1).
template <int D>
WSSS_CPU_VECTORIZED void slice_range(const Lattice& lat, int64_t p0, int64_t p1, const float* values,
                                     const float* norm, float coefficient, bool accumulate, float* out,
                                     int64_t width) {
  const int32_t* entry_vertex = lat.entry_vertex.as<int32_t>();
  const float* weights = lat.weights.as<float>();
  const float scale = coefficient * slice_alpha<D>();
  for (int64_t p = p0; p < p1; ++p) {
    float* dst = out + p * width;
    if (!accumulate)
      for (int64_t l = 0; l < width; ++l) dst[l] = 0.f;
    const float pixel_scale = norm ? scale * norm[p] : scale;
    for (int r = 0; r <= D; ++r) {
      const int64_t e = p * (D + 1) + r;
      axpy_row(dst, pixel_scale * weights[e], values + static_cast<int64_t>(entry_vertex[e]) * width, width);
    }
  }
}

// Splat, blur along every direction, slice; values_a/b are clobbered.
template <int D>
void filter_impl(const Lattice& lat, int64_t vertices, const float* q, const float* norm, float* out, int64_t width,
                 float coefficient, bool accumulate, float* values_a, float* values_b) {
  parallel_blocks(vertices, [&](int64_t v0, int64_t v1) { splat_range(lat, v0, v1, q, values_a, width); });
  const int32_t* neighbours = lat.neighbours.as<int32_t>();
  for (int j = 0; j <= D; ++j) {
    const int32_t* direction = neighbours + 2 * j * vertices;
    parallel_blocks(vertices, [&](int64_t v0, int64_t v1) { blur_range(direction, v0, v1, values_a, values_b, width); });
    std::swap(values_a, values_b);
  }
  parallel_blocks(lat.images * lat.pixels(), [&](int64_t p0, int64_t p1) {
    slice_range<D>(lat, p0, p1, values_a, norm, coefficient, accumulate, out, width);
  });
}

template <int D>
void link_impl(const Lattice& lat, int64_t vertices, float* values_a, float* values_b) {
  const int64_t entries = lat.entries();
  const int64_t per_image = lat.pixels() * (D + 1);
  const int32_t* simplex = lat.simplex.as<int32_t>();
  const int32_t* slots = lat.slots.as<int32_t>();
  const int32_t* entry_rep = lat.entry_rep.as<int32_t>();
  int32_t* entry_vertex = lat.entry_vertex.as<int32_t>();
  const int32_t* vertex_entry = lat.vertex_entry.as<int32_t>();
  const uint64_t mask = static_cast<uint64_t>(lat.slots.shape[0]) - 1;

  // Every entry takes its representative's vertex (representatives already have theirs).
  parallel_blocks(entries, [&](int64_t e0, int64_t e1) {
    for (int64_t e = e0; e < e1; ++e)
      if (entry_rep[e] != e) entry_vertex[e] = entry_vertex[entry_rep[e]];
  });

  // Blur neighbours: the vertices one lattice step away along each direction.
  int32_t* neighbours = lat.neighbours.as<int32_t>();
  parallel_blocks(vertices, [&](int64_t v0, int64_t v1) {
    int32_t key[D], minus[D], plus[D];
    for (int64_t v = v0; v < v1; ++v) {
      const int32_t e = vertex_entry[v];
      const int64_t image = e / per_image;
      entry_key<D>(simplex, e, key);
      for (int j = 0; j <= D; ++j) {
        neighbour_keys<D>(key, j, minus, plus);
        const int32_t a = find_entry<D>(slots, mask, simplex, per_image, image, minus);
        const int32_t b = find_entry<D>(slots, mask, simplex, per_image, image, plus);
        neighbours[2 * (j * vertices + v)] = a < 0 ? -1 : entry_vertex[a];
        neighbours[2 * (j * vertices + v) + 1] = b < 0 ? -1 : entry_vertex[b];
      }
    }
  });

  // Splat lists (CSR) by a counting sort in entry order.
  int32_t* start = lat.splat_start.as<int32_t>();
  int32_t* pixels = lat.splat_pixels.as<int32_t>();
  float* splat_weights = lat.splat_weights.as<float>();
  const float* weights = lat.weights.as<float>();
  std::fill(start, start + vertices + 1, 0);
  for (int64_t e = 0; e < entries; ++e) ++start[entry_vertex[e] + 1];
  for (int64_t v = 0; v < vertices; ++v) start[v + 1] += start[v];
  for (int64_t e = 0; e < entries; ++e) {
    const int32_t i = start[entry_vertex[e]]++;
    pixels[i] = static_cast<int32_t>(e / (D + 1));
    splat_weights[i] = weights[e];
  }
  // Each start[v] now holds the end of v's list: shift back.
  for (int64_t v = vertices; v > 0; --v) start[v] = start[v - 1];
  start[0] = 0;

  // Symmetric normalisation: norm = 1 / sqrt(K 1 + 1e-20), then folded into
  // the splat weights (the slice applies it per pixel).
  float* norm = lat.norm.as<float>();
  filter_impl<D>(lat, vertices, nullptr, nullptr, norm, 1, 1.f, false, values_a, values_b);
  parallel_blocks(lat.images * lat.pixels(), [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) norm[p] = 1.f / std::sqrt(norm[p] + 1e-20f);
  });
  parallel_blocks(entries, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) splat_weights[i] *= norm[pixels[i]];
  });
}

// Pixels [p0, p1) of one image. unary is label-major, so each block of
// kSoftmaxBlock pixels is first transposed into rows: L contiguous reads
// per block instead of one strided read per label and pixel.
constexpr int64_t kSoftmaxBlock = 16;

template <class U>
WSSS_CPU_VECTORIZED void softmax_range(const U* unary, int64_t n_labels, int64_t pixels, int64_t p0, int64_t p1,
                                       const float* pairwise, float* q, int64_t width, float* q_out, float* energy) {
  const int64_t b = p0 / pixels;
  const U* image_unary = unary + b * n_labels * pixels;
  float* image_out = q_out ? q_out + b * n_labels * pixels : nullptr;
  for (int64_t block = p0; block < p1; block += kSoftmaxBlock) {
    const int64_t count = std::min(kSoftmaxBlock, p1 - block);
    const int64_t i0 = block - b * pixels;
    for (int64_t l = 0; l < n_labels; ++l)
      for (int64_t k = 0; k < count; ++k) energy[k * n_labels + l] = -load_as<float>(image_unary, l * pixels + i0 + k);
    for (int64_t k = 0; k < count; ++k) {
      const int64_t p = block + k;
      mean_field_softmax(energy + k * n_labels, pairwise ? pairwise + p * width : nullptr, q + p * width, n_labels,
                         width);
    }
    if (image_out)
      for (int64_t l = 0; l < n_labels; ++l)
        for (int64_t k = 0; k < count; ++k) image_out[l * pixels + i0 + k] = q[(block + k) * width + l];
  }
}

}  // namespace

int64_t build_vertices_cpu(Lattice& lattice, const ArrayView& image, double sxy, double srgb) {
  return dispatch_dims(lattice.dims, [&](auto d) {
    return build_vertices_impl<decltype(d)::value>(lattice, image.as<uint8_t>(), sxy, srgb);
  });
}

void link_cpu(const Lattice& lattice, int64_t vertices, float* values_a, float* values_b) {
  dispatch_dims(lattice.dims, [&](auto d) { link_impl<decltype(d)::value>(lattice, vertices, values_a, values_b); });
}

void filter_cpu(const Lattice& lattice, int64_t vertices, const float* q, float* out, int64_t width,
                float coefficient, bool accumulate, float* values_a, float* values_b) {
  dispatch_dims(lattice.dims, [&](auto d) {
    filter_impl<decltype(d)::value>(lattice, vertices, q, lattice.norm.as<float>(), out, width, coefficient,
                                    accumulate, values_a, values_b);
  });
}

void softmax_cpu(const ArrayView& unary, const float* pairwise, float* q, int64_t width, float* q_out) {
  const int64_t n_labels = unary.shape[1];
  const int64_t pixels = unary.shape[2] * unary.shape[3];
  dispatch_floating(unary.dtype, "unary", [&](auto tag) {
    using U = decltype(tag);
    // Blocks never straddle two images: parallel over (image, pixel block).
    const int64_t blocks_per_image = (pixels + kBlock - 1) / kBlock;
    const int64_t blocks = unary.shape[0] * blocks_per_image;
#pragma omp parallel if (blocks * kBlock > kMinParallelItems)
    {
      std::vector<float> energy(static_cast<size_t>(kSoftmaxBlock * n_labels));
#pragma omp for schedule(static)
      for (int64_t block = 0; block < blocks; ++block) {
        const int64_t b = block / blocks_per_image, first = (block % blocks_per_image) * kBlock;
        const int64_t p0 = b * pixels + first, p1 = b * pixels + std::min(pixels, first + kBlock);
        softmax_range<U>(unary.as<U>(), n_labels, pixels, p0, p1, pairwise, q, width, q_out, energy.data());
      }
    }
  });
}

}  // namespace wsss::dense_crf
