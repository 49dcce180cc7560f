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

// Small loops, and every loop of the image-by-image path (already inside its
// threads' region), run straight through: no team, no schedule, no barrier.
template <class Body>
void parallel_blocks(int64_t n, Body&& body) {
  if (n <= kMinParallelItems || in_parallel_region()) {
    if (n > 0) body(0, n);
    return;
  }
  const int64_t blocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel for num_threads(cpu_threads()) schedule(dynamic, 4)
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

// Sums of rows held in registers, 8 lanes at a time: adding into a row in
// memory makes each term wait for the previous one's store. GCC / clang
// vector types (the loops below did not vectorise with an array
// accumulator); other compilers take the plain loops.
#if defined(__GNUC__)
#define WSSS_CRF_REGISTER_ROWS 1
typedef float Lanes __attribute__((vector_size(kLanes * sizeof(float))));
inline Lanes load_lanes(const float* p) {
  Lanes v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
inline void store_lanes(float* p, Lanes v) { __builtin_memcpy(p, &v, sizeof v); }
#else
#define WSSS_CRF_REGISTER_ROWS 0
#endif

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
// Whole rows are summed 8 lanes at a time in a register, entry after entry,
// and stored once: adding into the row in memory made every entry wait for
// the previous one's store (the same sums, in the same order).
WSSS_CPU_VECTORIZED void splat_range(const Lattice& lat, int64_t v0, int64_t v1, const float* q, float* values,
                                     int64_t width) {
  const int32_t* start = lat.splat_start.as<int32_t>();
  const int32_t* pixels = lat.splat_pixels.as<int32_t>();
  const float* weights = lat.splat_weights.as<float>();
  for (int64_t v = v0; v < v1; ++v) {
    float* dst = values + v * width;
    if (q == nullptr) {
      for (int64_t l = 0; l < width; ++l) dst[l] = 0.f;
      for (int32_t i = start[v]; i < start[v + 1]; ++i) dst[0] += weights[i];
#if WSSS_CRF_REGISTER_ROWS
    } else if (width % kLanes == 0) {
      for (int64_t l = 0; l < width; l += kLanes) {
        Lanes acc = {};
        for (int32_t i = start[v]; i < start[v + 1]; ++i)
          acc += weights[i] * load_lanes(q + static_cast<int64_t>(pixels[i]) * width + l);
        store_lanes(dst + l, acc);
      }
#endif
    } else {
      for (int64_t l = 0; l < width; ++l) dst[l] = 0.f;
      for (int32_t i = start[v]; i < start[v + 1]; ++i)
        axpy_row(dst, weights[i], q + static_cast<int64_t>(pixels[i]) * width, width);
    }
  }
}

// One blur pass along one direction: out = in + (in[minus] + in[plus]) / 2.
// A missing neighbour (-1) reads the centre row with weight 0 instead: no
// branch to mispredict on sparse lattices, and the same sums (the rows are
// finite, so centre + 0 * centre is centre exactly).
WSSS_CPU_VECTORIZED void blur_range(const int32_t* neighbours, int64_t v0, int64_t v1, const float* in, float* out,
                                    int64_t width) {
  for (int64_t v = v0; v < v1; ++v) {
    const int32_t minus = neighbours[2 * v], plus = neighbours[2 * v + 1];
    float* dst = out + v * width;
    const float* centre = in + v * width;
    const float* a = minus >= 0 ? in + static_cast<int64_t>(minus) * width : centre;
    const float* b = plus >= 0 ? in + static_cast<int64_t>(plus) * width : centre;
    const float wa = minus >= 0 ? 0.5f : 0.f, wb = plus >= 0 ? 0.5f : 0.f;
#pragma omp simd
    for (int64_t l = 0; l < width; ++l) dst[l] = (centre[l] + wa * a[l]) + wb * b[l];
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
    const float pixel_scale = norm ? scale * norm[p] : scale;
#if WSSS_CRF_REGISTER_ROWS
    if (width % kLanes == 0) {  // in registers, as splat_range
      const float* rows[D + 1];
      float w[D + 1];
      for (int r = 0; r <= D; ++r) {
        const int64_t e = p * (D + 1) + r;
        rows[r] = values + static_cast<int64_t>(entry_vertex[e]) * width;
        w[r] = pixel_scale * weights[e];
      }
      for (int64_t l = 0; l < width; l += kLanes) {
        Lanes acc = accumulate ? load_lanes(dst + l) : Lanes{};
        for (int r = 0; r <= D; ++r) acc += w[r] * load_lanes(rows[r] + l);
        store_lanes(dst + l, acc);
      }
      continue;
    }
#endif
    if (!accumulate)
      for (int64_t l = 0; l < width; ++l) dst[l] = 0.f;
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

// Splat lists (CSR, by a counting sort in entry order) and the symmetric
// normalisation. `counted`: splat_start[v + 1] already holds the entry count
// of vertex v (the image-by-image build counts as it inserts).
template <int D>
void link_splats(const Lattice& lat, int64_t vertices, bool counted, float* values_a, float* values_b) {
  const int64_t entries = lat.entries();
  const int32_t* entry_vertex = lat.entry_vertex.as<int32_t>();
  int32_t* start = lat.splat_start.as<int32_t>();
  int32_t* pixels = lat.splat_pixels.as<int32_t>();
  float* splat_weights = lat.splat_weights.as<float>();
  const float* weights = lat.weights.as<float>();
  if (!counted) {
    std::fill(start, start + vertices + 1, 0);
    for (int64_t e = 0; e < entries; ++e) ++start[entry_vertex[e] + 1];
  }
  start[0] = 0;
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

  link_splats<D>(lat, vertices, false, values_a, values_b);
}

// ---------------------------------------------------------------------------
// One image's lattice on the calling thread (the image-by-image path). The
// same vertices, numbering, neighbours and splat lists as build_vertices +
// link on a one-image batch (vertices are numbered by their first entry
// either way), with the work of the parallel build left out: entries are
// inserted in order, so each gets its vertex on insertion (no representative
// pass, no renumbering); the table keeps vertex indices and the vertices'
// keys sit in one array, so a probe compares d int32 there instead of
// unpacking an entry's simplex; and each blur edge is looked up once, from
// its minus end, which also fills in the other end's minus neighbour.
// ---------------------------------------------------------------------------

// A cheap hash of one image's key: keys differ in a few low bits.
template <int D>
inline uint32_t image_key_hash(const int32_t* key) {
  uint64_t h = 0;
  for (int i = 0; i < D; ++i) h = (h + static_cast<uint32_t>(key[i])) * 0x9E3779B97F4A7C15ull;
  return static_cast<uint32_t>(h >> 32);
}

// The vertex of `key`, or -1; `keys` holds the vertices' keys, D each.
template <int D>
inline int32_t find_vertex(const int32_t* slots, uint32_t mask, const int32_t* keys, const int32_t* key) {
  for (uint32_t h = image_key_hash<D>(key) & mask;; h = (h + 1) & mask) {
    const int32_t v = slots[h];
    if (v < 0 || same_key<D>(keys + static_cast<int64_t>(v) * D, key)) return v;
  }
}

// keys: int32 workspace of E * D (every entry could be its own vertex).
template <int D>
int64_t build_image_lattice(Lattice& lat, const uint8_t* image, double sxy, double srgb, int32_t* keys,
                            float* values_a, float* values_b) {
  const Embedding<D> embedding = make_embedding<D>(sxy, srgb);
  const int64_t pixels = lat.pixels();
  int32_t* simplex = lat.simplex.as<int32_t>();
  float* weights = lat.weights.as<float>();
  int32_t* slots = lat.slots.as<int32_t>();
  int32_t* entry_vertex = lat.entry_vertex.as<int32_t>();
  int32_t* counts = lat.splat_start.as<int32_t>();  // counts[v + 1]: entries of vertex v
  const uint32_t mask = static_cast<uint32_t>(lat.slots.shape[0] - 1);
  std::fill(slots, slots + lat.slots.shape[0], -1);

  int32_t vertices = 0;
  for (int64_t p = 0; p < pixels; ++p) {
    float feature[D];
    pixel_features<D>(image, pixels, p, lat.width, embedding, feature);
    embed_point<D>(feature, embedding, simplex + p * D, weights + p * (D + 1));
    for (int r = 0; r <= D; ++r) {
      int32_t key[D];
      corner_key<D>(simplex + p * D, r, key);
      uint32_t h = image_key_hash<D>(key) & mask;
      int32_t v;
      for (;; h = (h + 1) & mask) {
        v = slots[h];
        if (v < 0) {
          v = slots[h] = vertices++;
          std::copy(key, key + D, keys + static_cast<int64_t>(v) * D);
          counts[v + 1] = 0;
          break;
        }
        if (same_key<D>(keys + static_cast<int64_t>(v) * D, key)) break;
      }
      entry_vertex[p * (D + 1) + r] = v;
      ++counts[v + 1];
    }
  }

  int32_t* neighbours = lat.neighbours.as<int32_t>();
  std::fill(neighbours, neighbours + 2 * (D + 1) * static_cast<int64_t>(vertices), -1);
  for (int32_t v = 0; v < vertices; ++v) {
    int32_t minus[D], plus[D];
    for (int j = 0; j <= D; ++j) {
      neighbour_keys<D>(keys + static_cast<int64_t>(v) * D, j, minus, plus);
      const int32_t b = find_vertex<D>(slots, mask, keys, plus);
      if (b < 0) continue;
      neighbours[2 * (j * static_cast<int64_t>(vertices) + v) + 1] = b;
      neighbours[2 * (j * static_cast<int64_t>(vertices) + b)] = v;  // v is b's minus neighbour
    }
  }
  link_splats<D>(lat, vertices, true, values_a, values_b);
  return vertices;
}

// Pixels [p0, p1) of one image, kSoftmaxBlock at a time. unary is
// label-major, so a block's energies are L contiguous reads; the block is
// held label-major (lanes = pixels) so that the max, the exps and the sum run
// across pixels as whole vectors, label after label: the same operations in
// the same order as mean_field_softmax(), pixel by pixel. The pairwise rows
// are read, and q written, row by row.
constexpr int64_t kSoftmaxBlock = 16;

// block: n_labels x kSoftmaxBlock floats of scratch.
template <class U>
WSSS_CPU_VECTORIZED void softmax_range(const U* unary, int64_t n_labels, int64_t pixels, int64_t p0, int64_t p1,
                                       const float* pairwise, float* q, int64_t width, float* q_out, float* block) {
  constexpr int64_t K = kSoftmaxBlock;
  const int64_t b = p0 / pixels;
  const U* image_unary = unary + b * n_labels * pixels;
  float* image_out = q_out ? q_out + b * n_labels * pixels : nullptr;
  for (int64_t first = p0; first < p1; first += K) {
    const int64_t count = std::min(K, p1 - first);
    const int64_t i0 = first - b * pixels;
    for (int64_t l = 0; l < n_labels; ++l) {
      float* x = block + l * K;
      for (int64_t k = 0; k < count; ++k) x[k] = -load_as<float>(image_unary, l * pixels + i0 + k);
      for (int64_t k = count; k < K; ++k) x[k] = 0.f;  // lanes past the image: computed, not stored
    }
    if (pairwise && count == K) {
      // Label by label across the block's rows: a strided (gathered) read
      // but whole-vector adds, instead of one scalar add per element.
      const float* rows = pairwise + first * width;
      for (int64_t l = 0; l < n_labels; ++l)
#pragma omp simd
        for (int64_t k = 0; k < K; ++k) block[l * K + k] += rows[k * width + l];
    } else if (pairwise) {
      for (int64_t k = 0; k < count; ++k) {
        const float* row = pairwise + (first + k) * width;
        for (int64_t l = 0; l < n_labels; ++l) block[l * K + k] += row[l];
      }
    }
    float max[K], sum[K];
    for (int64_t k = 0; k < K; ++k) max[k] = -INFINITY;
    for (int64_t l = 0; l < n_labels; ++l)
#pragma omp simd
      for (int64_t k = 0; k < K; ++k) max[k] = block[l * K + k] > max[k] ? block[l * K + k] : max[k];
    for (int64_t k = 0; k < K; ++k) sum[k] = 0.f;
    for (int64_t l = 0; l < n_labels; ++l)
#pragma omp simd
      for (int64_t k = 0; k < K; ++k) {
        block[l * K + k] = exp_polynomial(block[l * K + k] - max[k]);
        sum[k] += block[l * K + k];
      }
#pragma omp simd
    for (int64_t k = 0; k < K; ++k) sum[k] = 1.f / sum[k];
    for (int64_t l = 0; l < n_labels; ++l)
#pragma omp simd
      for (int64_t k = 0; k < K; ++k) block[l * K + k] *= sum[k];
    if (count == K) {
      float* rows = q + first * width;  // the same transpose, as whole-vector (scattered) stores
      for (int64_t l = 0; l < n_labels; ++l)
#pragma omp simd
        for (int64_t k = 0; k < K; ++k) rows[k * width + l] = block[l * K + k];
      for (int64_t k = 0; k < K; ++k)
        for (int64_t l = n_labels; l < width; ++l) rows[k * width + l] = 0.f;
    } else {
      for (int64_t k = 0; k < count; ++k) {
        float* row = q + (first + k) * width;
        for (int64_t l = 0; l < n_labels; ++l) row[l] = block[l * K + k];
        for (int64_t l = n_labels; l < width; ++l) row[l] = 0.f;
      }
    }
    if (image_out)
      for (int64_t l = 0; l < n_labels; ++l)
        for (int64_t k = 0; k < count; ++k) image_out[l * pixels + i0 + k] = block[l * K + k];
  }
}

// ---------------------------------------------------------------------------
// The image-by-image mean field.
// ---------------------------------------------------------------------------

// Rows padded to whole 8-float vectors, as ops/dense_crf.py pads them.
inline int64_t padded_width(int64_t n_labels) { return (n_labels + kLanes - 1) / kLanes * kLanes; }

// The hash table of E entries: a power of two above 4E/3, as ops/dense_crf.py sizes it.
inline int64_t slot_capacity(int64_t entries) {
  int64_t capacity = 1;
  while (capacity <= 4 * entries / 3) capacity <<= 1;
  return capacity;
}

// Hands out 64-byte aligned pieces of one worker's workspace row; with a
// null base it only adds up the bytes (mean_field_workspace_bytes).
class Carver {
 public:
  explicit Carver(uint8_t* base) : base_(base) {}
  template <class T>
  T* take(int64_t count) {
    offset_ = (offset_ + 63) / 64 * 64;
    T* piece = base_ ? reinterpret_cast<T*>(base_ + offset_) : nullptr;
    offset_ += count * static_cast<int64_t>(sizeof(T));
    return piece;
  }
  int64_t bytes() const { return offset_; }

 private:
  uint8_t* base_;
  int64_t offset_ = 0;
};

ArrayView cpu_view(void* data, DType dtype, std::vector<int64_t> shape) {
  ArrayView view;
  view.data = data;
  view.dtype = dtype;
  view.shape = std::move(shape);
  return view;
}

// One worker's buffers: the rows of one image and its lattices. The hash
// table and other build-only buffers are shared by the kernels (each is
// linked before the next is built); vertex counts are bounded by the entry
// counts, so every buffer is sized for the worst case once.
struct ImageWorkspace {
  float *q = nullptr, *pairwise = nullptr, *values_a = nullptr, *values_b = nullptr, *energy = nullptr;
  int32_t* keys = nullptr;  // vertex keys while a lattice is built
  Lattice lattices[kMaxKernels];
};

ImageWorkspace carve_workspace(uint8_t* base, int64_t height, int64_t width, int64_t n_labels, const int* dims,
                               int n_kernels, int64_t* bytes) {
  Carver carve(base);
  ImageWorkspace ws;
  const int64_t pixels = height * width, row = padded_width(n_labels);
  int max_dims = 0;
  for (int k = 0; k < n_kernels; ++k) max_dims = std::max(max_dims, dims[k]);
  const int64_t max_entries = pixels * (max_dims + 1);
  ws.q = carve.take<float>(pixels * row);
  ws.pairwise = carve.take<float>(pixels * row);
  ws.energy = carve.take<float>(kSoftmaxBlock * n_labels);
  // link() filters a signal of ones through values_a/b before the rows do.
  ws.values_a = carve.take<float>(max_entries * row);
  ws.values_b = carve.take<float>(max_entries * row);
  int32_t* simplex = carve.take<int32_t>(pixels * std::max(max_dims, 1));
  ws.keys = carve.take<int32_t>(max_entries * std::max(max_dims, 1));
  const int64_t capacity = slot_capacity(max_entries);
  int32_t* slots = carve.take<int32_t>(capacity);
  for (int k = 0; k < n_kernels; ++k) {
    const int d = dims[k];
    const int64_t entries = pixels * (d + 1);
    Lattice& lat = ws.lattices[k];
    lat.dims = d;
    lat.images = 1;
    lat.height = height;
    lat.width = width;
    lat.simplex = cpu_view(simplex, DType::kInt32, {pixels, d});
    lat.slots = cpu_view(slots, DType::kInt32, {slot_capacity(entries)});
    lat.weights = cpu_view(carve.take<float>(entries), DType::kFloat32, {entries});
    lat.entry_vertex = cpu_view(carve.take<int32_t>(entries), DType::kInt32, {entries});
    lat.neighbours = cpu_view(carve.take<int32_t>((d + 1) * entries * 2), DType::kInt32, {(d + 1) * entries * 2});
    lat.splat_start = cpu_view(carve.take<int32_t>(entries + 1), DType::kInt32, {entries + 1});
    lat.splat_pixels = cpu_view(carve.take<int32_t>(entries), DType::kInt32, {entries});
    lat.splat_weights = cpu_view(carve.take<float>(entries), DType::kFloat32, {entries});
    lat.norm = cpu_view(carve.take<float>(pixels), DType::kFloat32, {pixels});
  }
  if (bytes) *bytes = carve.bytes();
  return ws;
}

// Image b from start to end, on the calling thread.
template <class U>
void mean_field_image(const MeanFieldArgs& args, int64_t b, ImageWorkspace& ws) {
  const int64_t n_labels = args.unary.shape[1], height = args.unary.shape[2], width = args.unary.shape[3];
  const int64_t pixels = height * width, row = padded_width(n_labels);
  const U* unary = args.unary.as<U>() + b * n_labels * pixels;
  const uint8_t* image = args.image.as<uint8_t>() + b * 3 * pixels;
  float* out = args.out.as<float>() + b * n_labels * pixels;

  int64_t vertices[kMaxKernels] = {};
  for (int k = 0; k < args.n_kernels; ++k) {
    Lattice& lat = ws.lattices[k];
    const MeanFieldKernel& kernel = args.kernels[k];
    dispatch_dims(lat.dims, [&](auto d) {
      constexpr int D = decltype(d)::value;
      vertices[k] = build_image_lattice<D>(lat, image, kernel.sxy, kernel.srgb, ws.keys, ws.values_a, ws.values_b);
      return 0;
    });
  }

  const float identity = static_cast<float>(args.identity_weight);
  softmax_range<U>(unary, n_labels, pixels, 0, pixels, nullptr, ws.q, row, args.n_iters == 0 ? out : nullptr,
                   ws.energy);
  for (int iteration = 0; iteration < args.n_iters; ++iteration) {
    for (int k = 0; k < args.n_kernels; ++k) {
      const Lattice& lat = ws.lattices[k];
      const float weight = static_cast<float>(args.kernels[k].weight);
      dispatch_dims(lat.dims, [&](auto d) {
        filter_impl<decltype(d)::value>(lat, vertices[k], ws.q, lat.norm.as<float>(), ws.pairwise, row, weight,
                                        k > 0, ws.values_a, ws.values_b);
        return 0;
      });
    }
    if (identity != 0.f || args.n_kernels == 0) {
      const bool accumulate = args.n_kernels > 0;
      for (int64_t i = 0; i < pixels * row; ++i)
        ws.pairwise[i] = accumulate ? ws.pairwise[i] + identity * ws.q[i] : identity * ws.q[i];
    }
    const bool last = iteration == args.n_iters - 1;
    softmax_range<U>(unary, n_labels, pixels, 0, pixels, ws.pairwise, ws.q, row, last ? out : nullptr, ws.energy);
  }
}

}  // namespace

int64_t mean_field_workspace_bytes(int64_t pixels, int64_t n_labels, const int* dims, int n_kernels) {
  int64_t bytes = 0;
  carve_workspace(nullptr, pixels, 1, n_labels, dims, n_kernels, &bytes);
  return bytes;
}

void mean_field_cpu(const MeanFieldArgs& args) {
  const int64_t batch = args.unary.shape[0];
  const int64_t workers = args.workspace.shape[0], row_bytes = args.workspace.shape[1];
  int dims[kMaxKernels] = {};
  for (int k = 0; k < args.n_kernels; ++k) dims[k] = args.kernels[k].dims;
  uint8_t* base = args.workspace.as<uint8_t>();
  dispatch_floating(args.unary.dtype, "unary", [&](auto tag) {
    using U = decltype(tag);
    // One region for the whole call; each thread owns workspace row
    // thread_index() and takes whole images.
    const int threads = static_cast<int>(std::min<int64_t>({workers, batch, cpu_threads()}));
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
      ImageWorkspace ws = carve_workspace(base + thread_index() * row_bytes, args.unary.shape[2],
                                          args.unary.shape[3], args.unary.shape[1], dims, args.n_kernels, nullptr);
#pragma omp for schedule(dynamic, 1)
      for (int64_t b = 0; b < batch; ++b) mean_field_image<U>(args, b, ws);
    }
  });
}

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
#pragma omp parallel num_threads(cpu_threads()) if (blocks * kBlock > kMinParallelItems)
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
