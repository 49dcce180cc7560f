// Dense CRF on the CPU, two ways with the same results bit for bit.
//
// The image-by-image mean field (mean_field_cpu, what ops/dense_crf.py runs):
// one parallel region a call; threads take whole images, or share each image
// when there are fewer images than threads. An image's lattices are built
// sequentially (vertices numbered as inserted, a hash table sized for the
// vertices), and each iteration is a splat and blur per lattice and one pass
// over the pixels for both slices and the softmax.
//
// The batched lattice (build_vertices / link / filter / softmax, the
// reference the tests hold the first to): the whole batch is one set of
// vertices, so every stage is a flat OpenMP loop over pixels or vertices.
// The hash inserts race through atomic compare-and-swap; vertex numbering,
// splat lists and every float sum follow the entry order, so results do
// not depend on the thread count.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/parallel.h"
#include "dense_crf/dense_crf.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

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

// The simplex and barycentric weights of pixels [p0, p1) of the lattice's
// images (stored one after the other): the part of a build that is
// independent pixel by pixel. Both CPU paths embed through it, so that they
// run the same instructions (the compiler may fuse multiplies and adds
// differently in another copy).
template <int D>
WSSS_CPU_VECTORIZED void embed_range(const Lattice& lat, const uint8_t* images, double sxy, double srgb, int64_t p0,
                                     int64_t p1) {
  const Embedding<D> embedding = make_embedding<D>(sxy, srgb);
  const int64_t pixels = lat.pixels();
  int32_t* simplex = lat.simplex.as<int32_t>();
  float* weights = lat.weights.as<float>();
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t b = p / pixels;
    float feature[D];
    pixel_features<D>(images + b * 3 * pixels, pixels, p - b * pixels, lat.width, embedding, feature);
    embed_point<D>(feature, embedding, simplex + p * D, weights + p * (D + 1));
  }
}

template <int D>
int64_t build_vertices_impl(Lattice& lat, const uint8_t* image, double sxy, double srgb) {
  const int64_t total_pixels = lat.images * lat.pixels();
  const int64_t entries = lat.entries();
  const int64_t per_image = lat.pixels() * (D + 1);
  int32_t* simplex = lat.simplex.as<int32_t>();
  int32_t* slots = lat.slots.as<int32_t>();
  int32_t* entry_rep = lat.entry_rep.as<int32_t>();
  int32_t* entry_vertex = lat.entry_vertex.as<int32_t>();
  int32_t* vertex_entry = lat.vertex_entry.as<int32_t>();
  const uint64_t mask = static_cast<uint64_t>(lat.slots.shape[0]) - 1;

  parallel_blocks(total_pixels, [&](int64_t p0, int64_t p1) { embed_range<D>(lat, image, sxy, srgb, p0, p1); });
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
// Row helpers are inlined into their vectorised (target_clones) callers,
// whose instruction set they then use; called, they would run the baseline
// one (and pass 8-float vectors through memory).
#define WSSS_CRF_INLINE inline __attribute__((always_inline))
#define WSSS_CRF_NOINLINE __attribute__((noinline))
typedef float Lanes __attribute__((vector_size(kLanes * sizeof(float))));
WSSS_CRF_INLINE Lanes load_lanes(const float* p) {
  Lanes v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
WSSS_CRF_INLINE void store_lanes(float* p, Lanes v) { __builtin_memcpy(p, &v, sizeof v); }
#else
#define WSSS_CRF_REGISTER_ROWS 0
#define WSSS_CRF_INLINE inline
#if defined(_MSC_VER)
#define WSSS_CRF_NOINLINE __declspec(noinline)
#else
#define WSSS_CRF_NOINLINE
#endif
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

#if WSSS_CRF_REGISTER_ROWS
// Entries ahead of the one being summed whose q rows splat_blocks prefetches:
// a vertex's pixels are scattered over the image (the bilateral lattice's
// vertices are colour clusters), so its rows come from L3 or memory.
constexpr int32_t kPrefetchAhead = 16;

// dst[0, 8 NB) = sum over entries [i0, i1) of weights[i] * q row pixels[i],
// lanes [0, 8 NB) from `offset`: NB independent sums in registers, one pass
// over the entries (one sum per pass made each entry wait for the previous
// one's add, NB times over). Each lane's terms are added in entry order.
// `last`: the last entry whose pixel may be read for a prefetch.
template <int NB>
WSSS_CRF_INLINE void splat_blocks(const int32_t* pixels, const float* weights, int32_t i0, int32_t i1, int32_t last,
                                  const float* q, int64_t width, int64_t offset, float* dst) {
  Lanes acc[NB] = {};
  for (int32_t i = i0; i < i1; ++i) {
    __builtin_prefetch(q + static_cast<int64_t>(pixels[std::min(i + kPrefetchAhead, last)]) * width + offset);
    const float* row = q + static_cast<int64_t>(pixels[i]) * width + offset;
    const float w = weights[i];
    for (int b = 0; b < NB; ++b) acc[b] += w * load_lanes(row + b * kLanes);
  }
  for (int b = 0; b < NB; ++b) store_lanes(dst + b * kLanes, acc[b]);
}
#endif

// values[v] = sum over v's entries of w * q[pixel]; q null: a signal of ones.
// Rows are summed in registers, up to 4 x 8 lanes per pass over the entries,
// and stored once: adding into the row in memory made every entry wait for
// the previous one's store.
WSSS_CPU_VECTORIZED void splat_range(const Lattice& lat, int64_t v0, int64_t v1, const float* q, float* values,
                                     int64_t width) {
  const int32_t* start = lat.splat_start.as<int32_t>();
  const int32_t* pixels = lat.splat_pixels.as<int32_t>();
  const float* weights = lat.splat_weights.as<float>();
  for (int64_t v = v0; v < v1; ++v) {
    float* dst = values + v * width;
    if (q == nullptr) {
      // In a register: adding into dst[0] in memory made each term wait for
      // the previous one's store (dst may alias the weights). Same order.
      float sum = 0.f;
      for (int32_t i = start[v]; i < start[v + 1]; ++i) sum += weights[i];
      for (int64_t l = 1; l < width; ++l) dst[l] = 0.f;
      dst[0] = sum;
#if WSSS_CRF_REGISTER_ROWS
    } else if (width % kLanes == 0) {
      const int32_t i0 = start[v], i1 = start[v + 1], last = start[v1] - 1;
      for (int64_t l = 0; l < width;) {
        switch (std::min<int64_t>(4, (width - l) / kLanes)) {
          case 4: splat_blocks<4>(pixels, weights, i0, i1, last, q, width, l, dst + l); l += 4 * kLanes; break;
          case 3: splat_blocks<3>(pixels, weights, i0, i1, last, q, width, l, dst + l); l += 3 * kLanes; break;
          case 2: splat_blocks<2>(pixels, weights, i0, i1, last, q, width, l, dst + l); l += 2 * kLanes; break;
          default: splat_blocks<1>(pixels, weights, i0, i1, last, q, width, l, dst + l); l += kLanes; break;
        }
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

// out[p - p0] (+)= coefficient * alpha * norm[p] * sum_r w_r values[vertex(p, r)]
// for pixels [p0, p1) (norm null: 1): `out` holds the rows from pixel p0 on.
template <int D>
WSSS_CPU_VECTORIZED void slice_range(const Lattice& lat, int64_t p0, int64_t p1, const float* values,
                                     const float* norm, float coefficient, bool accumulate, float* out,
                                     int64_t width) {
  const int32_t* entry_vertex = lat.entry_vertex.as<int32_t>();
  const float* weights = lat.weights.as<float>();
  const float scale = coefficient * slice_alpha<D>();
  for (int64_t p = p0; p < p1; ++p) {
    float* dst = out + (p - p0) * width;
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
    if (width == 1) {  // the normalisation's signal of ones: summed in a register, in the same order
      float sum = accumulate ? dst[0] : 0.f;
      for (int r = 0; r <= D; ++r) {
        const int64_t e = p * (D + 1) + r;
        sum += pixel_scale * weights[e] * values[entry_vertex[e]];
      }
      dst[0] = sum;
      continue;
    }
    if (!accumulate)
      for (int64_t l = 0; l < width; ++l) dst[l] = 0.f;
    for (int r = 0; r <= D; ++r) {
      const int64_t e = p * (D + 1) + r;
      axpy_row(dst, pixel_scale * weights[e], values + static_cast<int64_t>(entry_vertex[e]) * width, width);
    }
  }
}

// values[v] = sum over v's entries of w * norm * q[pixel] for all vertices:
// splat_range()'s sums, made in one pass over the pixels instead of one
// over each vertex's entries. Each q row is read once, in order, and added
// into the rows of its pixel's d+1 vertices (a few hundred KB to a few MB),
// where a gather read it d+1 times from wherever the vertices' pixels lie.
// A vertex gets its terms in entry order either way (a pixel's corners are
// distinct vertices), so the sums are the same, bit for bit.
template <int D>
WSSS_CPU_VECTORIZED void scatter_splat(const Lattice& lat, int64_t vertices, const float* q, float* values,
                                       int64_t width) {
  const int32_t* entry_vertex = lat.entry_vertex.as<int32_t>();
  const float* weights = lat.weights.as<float>();
  const float* norm = lat.norm.as<float>();
  std::fill(values, values + vertices * width, 0.f);
  const int64_t pixels = lat.images * lat.pixels();
  for (int64_t p = 0; p < pixels; ++p) {
    const float* row = q + p * width;
    for (int r = 0; r <= D; ++r) {
      const int64_t e = p * (D + 1) + r;
      const float w = weights[e] * norm[p];  // link_splats' splat weight
      float* dst = values + static_cast<int64_t>(entry_vertex[e]) * width;
#if WSSS_CRF_REGISTER_ROWS
      if (width % kLanes == 0) {
        for (int64_t l = 0; l < width; l += kLanes) store_lanes(dst + l, load_lanes(dst + l) + w * load_lanes(row + l));
        continue;
      }
#endif
      axpy_row(dst, w, row, width);
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
    slice_range<D>(lat, p0, p1, values_a, norm, coefficient, accumulate, out + p0 * width, width);
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

// The table starts this small and doubles whenever it is a quarter full: images
// have few vertices for their corners (2-15 %), and a table sized for every
// corner being distinct (slot_capacity) spreads the probes over megabytes,
// one cache miss each, where a table sized for the vertices stays in L1/L2.
constexpr uint32_t kFirstSlots = 1u << 12;

// Empties the first `capacity` slots and inserts vertices [0, vertices) again.
template <int D>
void rehash(int32_t* slots, uint32_t capacity, const int32_t* keys, int32_t vertices) {
  std::fill(slots, slots + capacity, -1);
  const uint32_t mask = capacity - 1;
  for (int32_t v = 0; v < vertices; ++v) {
    uint32_t h = image_key_hash<D>(keys + static_cast<int64_t>(v) * D) & mask;
    while (slots[h] >= 0) h = (h + 1) & mask;
    slots[h] = v;
  }
}

// corner_key() of corners 0..d of one packed simplex, unpacking it once.
template <int D>
inline void simplex_corner_keys(const int32_t* simplex, int32_t (*keys)[D]) {
  int32_t rank[D], rem0[D];
  for (int i = 0; i < D; ++i) {
    rank[i] = ((simplex[i] % (D + 1)) + (D + 1)) % (D + 1);
    rem0[i] = simplex[i] - rank[i];
  }
  for (int r = 0; r <= D; ++r)
    for (int i = 0; i < D; ++i) keys[r][i] = rem0[i] + (rank[i] <= D - r ? r : r - (D + 1));
}

// The rest of the build, after embed_range() over every pixel: vertices,
// blur neighbours, splat lists and normalisation. keys: int32 workspace of
// E * D (every entry could be its own vertex); the lattice's slots hold up
// to slot_capacity(E) entries, of which the build uses as many as the
// vertices need.
template <int D>
int64_t build_image_lattice(Lattice& lat, int32_t* keys, float* values_a, float* values_b) {
  const int64_t pixels = lat.pixels();
  int32_t* simplex = lat.simplex.as<int32_t>();
  int32_t* slots = lat.slots.as<int32_t>();
  int32_t* entry_vertex = lat.entry_vertex.as<int32_t>();
  int32_t* counts = lat.splat_start.as<int32_t>();  // counts[v + 1]: entries of vertex v
  const uint32_t max_capacity = static_cast<uint32_t>(lat.slots.shape[0]);
  uint32_t capacity = std::min(kFirstSlots, max_capacity);
  std::fill(slots, slots + capacity, -1);

  int32_t vertices = 0;
  for (int64_t p = 0; p < pixels; ++p) {
    // Neighbouring pixels often fall in the same simplex (a lattice cell
    // spans several pixels, and flat colour keeps the bilateral one too):
    // then its corners are the previous pixel's vertices, no lookups.
    if (p > 0 && same_key<D>(simplex + p * D, simplex + (p - 1) * D)) {
      for (int r = 0; r <= D; ++r) {
        const int32_t v = entry_vertex[(p - 1) * (D + 1) + r];
        entry_vertex[p * (D + 1) + r] = v;
        ++counts[v + 1];
      }
      continue;
    }
    int32_t corner_keys[D + 1][D];
    simplex_corner_keys<D>(simplex + p * D, corner_keys);
    for (int r = 0; r <= D; ++r) {
      const int32_t* key = corner_keys[r];
      const uint32_t mask = capacity - 1;
      uint32_t h = image_key_hash<D>(key) & mask;
      int32_t v;
      for (;; h = (h + 1) & mask) {
        v = slots[h];
        if (v < 0) {
          v = slots[h] = vertices++;
          std::copy(key, key + D, keys + static_cast<int64_t>(v) * D);
          counts[v + 1] = 0;
          if (4 * static_cast<uint32_t>(vertices) > capacity && capacity < max_capacity) {
            capacity *= 2;
            rehash<D>(slots, capacity, keys, vertices);
          }
          break;
        }
        if (same_key<D>(keys + static_cast<int64_t>(v) * D, key)) break;
      }
      entry_vertex[p * (D + 1) + r] = v;
      ++counts[v + 1];
    }
  }

  const uint32_t mask = capacity - 1;
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

// ---------------------------------------------------------------------------
// Softmax. Both CPU paths take q = softmax(x) of a row x = -unary + pairwise
// through softmax_block(), so that they give the same bits; x's padding lanes
// are -inf (their q: exp(-inf) = 0).
// ---------------------------------------------------------------------------

#if WSSS_CRF_REGISTER_ROWS
typedef int32_t LaneInts __attribute__((vector_size(kLanes * sizeof(int32_t))));
// 16 floats: the exps of softmax_block, over a block of rows as one array.
typedef float WideLanes __attribute__((vector_size(2 * kLanes * sizeof(float))));
typedef int32_t WideLaneInts __attribute__((vector_size(2 * kLanes * sizeof(int32_t))));

template <class V>
WSSS_CRF_INLINE V splat_lanes(float value) {
  return V{} + value;
}
WSSS_CRF_INLINE Lanes splat_lanes(float value) { return splat_lanes<Lanes>(value); }

// exp_polynomial() (common/math.h) lane by lane for x <= 0 (softmax's x -
// max), through its exp_reduced(): the same operations and results; where
// x <= 0 its upper clamp and overflow test never fire and are left out. GCC
// left the scalar function's loops over a row with scalar tails. V: Lanes or
// WideLanes, VI its ints.
template <class V, class VI>
WSSS_CRF_INLINE V exp_nonpositive(V x) {
  const V xc = x > splat_lanes<V>(-87.5f) ? x : splat_lanes<V>(-87.5f);
  V n;
  const V p = exp_reduced(xc, n);
  const VI scale_bits = (__builtin_convertvector(n, VI) + 127) << 23;
  V scale;
  __builtin_memcpy(&scale, &scale_bits, sizeof scale);
  return x < splat_lanes<V>(-87.33654f) ? V{} : p * scale;
}

// v's lanes in the order given (GCC's and clang's spellings differ).
#if defined(__clang__)
#define WSSS_CRF_SHUFFLE(v, ...) __builtin_shufflevector(v, v, __VA_ARGS__)
#else
#define WSSS_CRF_SHUFFLE(v, ...) __builtin_shuffle(v, LaneInts{__VA_ARGS__})
#endif

// Every lane of the result holds the max (sum) of v's 8 lanes, combined in a
// butterfly (lanes 4 apart, then 2, then 1): a fixed order, and three steps
// where a scalar walk over the lanes took seven dependent ones.
WSSS_CRF_INLINE Lanes max_across(Lanes v) {
  Lanes w = WSSS_CRF_SHUFFLE(v, 4, 5, 6, 7, 0, 1, 2, 3);
  v = v > w ? v : w;
  w = WSSS_CRF_SHUFFLE(v, 2, 3, 0, 1, 6, 7, 4, 5);
  v = v > w ? v : w;
  w = WSSS_CRF_SHUFFLE(v, 1, 0, 3, 2, 5, 4, 7, 6);
  return v > w ? v : w;
}
WSSS_CRF_INLINE Lanes sum_across(Lanes v) {
  v += WSSS_CRF_SHUFFLE(v, 4, 5, 6, 7, 0, 1, 2, 3);
  v += WSSS_CRF_SHUFFLE(v, 2, 3, 0, 1, 6, 7, 4, 5);
  return v + WSSS_CRF_SHUFFLE(v, 1, 0, 3, 2, 5, 4, 7, 6);
}
#endif

// q rows = softmax of x rows, `rows` rows of `width` floats (a multiple of 8)
// each, contiguous; x is clobbered. Three passes over the block: each row's
// max (8 lanes at a time, then across the lanes) taken off the row; the
// exps, 16 lanes at a time over the block as one array (no per-row tails,
// no chain from a row's max to its exps); each row's sum (8 lanes at a time
// in order, then across the lanes in a fixed order) and the division. A
// function of its own (not inlined), so that both CPU paths run the same
// instructions: inlined, the compiler may fuse multiplies and adds
// differently in each caller.
WSSS_CPU_VECTORIZED WSSS_CRF_NOINLINE void softmax_block(float* x, int64_t rows, int64_t width, float* q) {
#if WSSS_CRF_REGISTER_ROWS
  for (int64_t p = 0; p < rows; ++p) {
    float* row = x + p * width;
    Lanes max8 = load_lanes(row);
    for (int64_t l = kLanes; l < width; l += kLanes) {
      const Lanes v = load_lanes(row + l);
      max8 = max8 > v ? max8 : v;
    }
    max8 = max_across(max8);
    for (int64_t l = 0; l < width; l += kLanes) store_lanes(row + l, load_lanes(row + l) - max8);
  }
  const int64_t n = rows * width;
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    WideLanes v;
    __builtin_memcpy(&v, x + i, sizeof v);
    v = exp_nonpositive<WideLanes, WideLaneInts>(v);
    __builtin_memcpy(x + i, &v, sizeof v);
  }
  if (i < n) {  // 8 lanes left: through the same 16-lane code (an 8-lane one may round differently)
    WideLanes v = {};
    __builtin_memcpy(&v, x + i, kLanes * sizeof(float));
    v = exp_nonpositive<WideLanes, WideLaneInts>(v);
    __builtin_memcpy(x + i, &v, kLanes * sizeof(float));
  }
  for (int64_t p = 0; p < rows; ++p) {
    const float* row = x + p * width;
    Lanes sum8 = {};
    for (int64_t l = 0; l < width; l += kLanes) sum8 += load_lanes(row + l);
    const Lanes inv_sum = splat_lanes(1.f) / sum_across(sum8);
    for (int64_t l = 0; l < width; l += kLanes) store_lanes(q + p * width + l, load_lanes(row + l) * inv_sum);
  }
#else
  for (int64_t p = 0; p < rows; ++p) {
    const float* row = x + p * width;
    float* qp = q + p * width;
    float max = row[0];
    for (int64_t l = 1; l < width; ++l) max = row[l] > max ? row[l] : max;
    float sum8[kLanes] = {};
    for (int64_t l = 0; l < width; l += kLanes)
      for (int64_t k = 0; k < kLanes; ++k) {
        qp[l + k] = exp_polynomial(row[l + k] - max);
        sum8[k] += qp[l + k];
      }
    const float sum = ((sum8[0] + sum8[4]) + (sum8[2] + sum8[6])) + ((sum8[1] + sum8[5]) + (sum8[3] + sum8[7]));
    const float inv_sum = 1.f / sum;
    for (int64_t l = 0; l < width; ++l) qp[l] *= inv_sum;
  }
#endif
}

// Pixels of one image per block of the label-major <-> row transposes.
constexpr int64_t kTransposeBlock = 16;

// rows[p - p0] = -unary[:, p] for pixels [p0, p1) of one image (label-major
// unary of `pixels` pixels), padding lanes -inf: the energies as rows.
template <class U>
void energy_rows(const U* unary, int64_t n_labels, int64_t pixels, int64_t p0, int64_t p1, float* rows,
                 int64_t width) {
  for (int64_t first = p0; first < p1; first += kTransposeBlock) {
    const int64_t last = std::min(p1, first + kTransposeBlock);
    for (int64_t l = 0; l < n_labels; ++l)
      for (int64_t p = first; p < last; ++p) rows[(p - p0) * width + l] = -load_as<float>(unary, l * pixels + p);
    for (int64_t p = first; p < last; ++p)
      for (int64_t l = n_labels; l < width; ++l) rows[(p - p0) * width + l] = -INFINITY;
  }
}

// out[:, p] = rows[p] for pixels [p0, p1): rows back to label-major.
void label_major(const float* rows, int64_t n_labels, int64_t pixels, int64_t p0, int64_t p1, int64_t width,
                 float* out) {
  for (int64_t first = p0; first < p1; first += kTransposeBlock) {
    const int64_t last = std::min(p1, first + kTransposeBlock);
    for (int64_t l = 0; l < n_labels; ++l)
      for (int64_t p = first; p < last; ++p) out[l * pixels + p] = rows[p * width + l];
  }
}

// ---------------------------------------------------------------------------
// The image-by-image mean field. A call runs one parallel region: with at
// least as many images as threads each thread takes whole images; with
// fewer, the threads share each image (team mode): the two lattices are
// built side by side, and every filtering stage is split over vertices or
// pixels. Either way the same sums are made in the same order.
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
// null base it only adds up the bytes (mean_field_workspace_bytes). Buffers
// are sized for the worst case (every corner its own vertex) but only the
// pages the image needs are ever touched, so only those take memory.
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

// One worker's buffers: the rows of one image and its lattices, each lattice
// with its own build buffers and values (in team mode two threads build the
// two lattices at once, and the last stage reads both lattices' values).
struct ImageWorkspace {
  float *q = nullptr, *energy = nullptr;
  float* values[kMaxKernels][2] = {};
  int32_t* keys[kMaxKernels] = {};  // vertex keys while a lattice is built
  int64_t* vertices = nullptr;      // [kMaxKernels], shared by a team
  // [kMaxKernels]: 1 where lattice k holds the Gaussian (position-only)
  // lattice of this call's image size, which every image shares.
  int64_t* built = nullptr;
  Lattice lattices[kMaxKernels];
};

ImageWorkspace carve_workspace(uint8_t* base, int64_t height, int64_t width, int64_t n_labels, const int* dims,
                               int n_kernels, int64_t* bytes) {
  Carver carve(base);
  ImageWorkspace ws;
  const int64_t pixels = height * width, row = padded_width(n_labels);
  ws.q = carve.take<float>(pixels * row);
  ws.energy = carve.take<float>(pixels * row);
  ws.vertices = carve.take<int64_t>(kMaxKernels);
  ws.built = carve.take<int64_t>(kMaxKernels);
  for (int k = 0; k < n_kernels; ++k) {
    const int d = dims[k];
    const int64_t entries = pixels * (d + 1);
    // link() filters a signal of ones through values before the rows do.
    ws.values[k][0] = carve.take<float>(entries * row);
    ws.values[k][1] = carve.take<float>(entries * row);
    ws.keys[k] = carve.take<int32_t>(entries * d);
    Lattice& lat = ws.lattices[k];
    lat.dims = d;
    lat.images = 1;
    lat.height = height;
    lat.width = width;
    lat.simplex = cpu_view(carve.take<int32_t>(pixels * d), DType::kInt32, {pixels, d});
    lat.slots = cpu_view(carve.take<int32_t>(slot_capacity(entries)), DType::kInt32, {slot_capacity(entries)});
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

// team_for() over the items of several lattices at once: blocks of `block`
// of lattice 0's counts[0] items, then of lattice 1's, ... (inactive ones
// skipped); body(k, i0, i1) for items [i0, i1) of lattice k.
template <class Body>
void lattices_for(bool team, const int64_t* counts, const bool* active, int n, int64_t block, Body&& body) {
  int64_t blocks[kMaxKernels] = {}, total = 0;
  for (int k = 0; k < n; ++k) total += blocks[k] = active[k] ? (counts[k] + block - 1) / block : 0;
  team_for(team, total, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      int k = 0;
      int64_t local = b;
      while (local >= blocks[k]) local -= blocks[k++];
      body(k, local * block, std::min(counts[k], (local + 1) * block));
    }
  });
}

// Pixels per work item of the per-pixel stages, vertices per work item of
// splats and blurs (a vertex's splat list runs to thousands of entries on
// flat regions: smaller items keep the threads even).
constexpr int64_t kPixelBlock = 1024;
constexpr int64_t kSplatBlock = 64;
constexpr int64_t kBlurBlock = 1024;

// update_range() for at most kUpdateRows pixels.
WSSS_CRF_INLINE void update_rows(const ImageWorkspace& ws, int n_kernels, const float* const* blurred,
                                 const float* weights, float identity, int64_t p0, int64_t p1, int64_t width,
                                 float* x) {
  for (int k = 0; k < n_kernels; ++k) {
    const Lattice& lat = ws.lattices[k];
    dispatch_dims(lat.dims, [&](auto d) {
      constexpr int D = decltype(d)::value;
      slice_range<D>(lat, p0, p1, blurred[k], lat.norm.as<float>(), weights[k], k > 0, x, width);
      return 0;
    });
  }
  for (int64_t p = p0; p < p1; ++p) {
    float* xp = x + (p - p0) * width;
    float* qp = ws.q + p * width;
    const float* ep = ws.energy + p * width;
    if (n_kernels == 0) {
      for (int64_t l = 0; l < width; ++l) xp[l] = ep[l] + identity * qp[l];
    } else if (identity != 0.f) {
      // A fused multiply-add, as torch's add_(q, alpha=identity) on the batched path.
      for (int64_t l = 0; l < width; ++l) xp[l] = ep[l] + std::fma(identity, qp[l], xp[l]);
    } else {
      for (int64_t l = 0; l < width; ++l) xp[l] = ep[l] + xp[l];
    }
  }
  softmax_block(x, p1 - p0, width, ws.q + p0 * width);
}

// Rows of update_range's scratch: slices and softmax meet in L1.
constexpr int64_t kUpdateRows = 128;

// q[p] = softmax(energy[p] + sum_k weight_k Kn_k(q)[p] + identity q[p]) for
// pixels [p0, p1): the slices of every kernel (from its blurred values),
// the identity term and the softmax in one pass over the pixels, through
// `x`, kUpdateRows rows of scratch. The same sums in the same order as
// filter_impl's slices into `pairwise` and softmax_cpu().
WSSS_CPU_VECTORIZED void update_range(const ImageWorkspace& ws, int n_kernels, const float* const* blurred,
                                      const float* weights, float identity, int64_t p0, int64_t p1, int64_t width,
                                      float* x) {
  for (int64_t first = p0; first < p1; first += kUpdateRows)
    update_rows(ws, n_kernels, blurred, weights, identity, first, std::min(p1, first + kUpdateRows), width, x);
}

// q = softmax(-unary) for pixels [p0, p1) of one image, keeping the energies
// as rows; x: kUpdateRows rows of scratch.
template <class U>
WSSS_CPU_VECTORIZED void start_range(const U* unary, int64_t n_labels, int64_t pixels, int64_t p0, int64_t p1,
                                     float* energy, float* q, int64_t width, float* x) {
  energy_rows<U>(unary, n_labels, pixels, p0, p1, energy + p0 * width, width);
  for (int64_t first = p0; first < p1; first += kUpdateRows) {
    const int64_t rows = std::min(p1 - first, kUpdateRows);
    std::copy(energy + first * width, energy + (first + rows) * width, x);
    softmax_block(x, rows, width, q + first * width);
  }
}

// Image b from start to end: on the calling thread, or (team) shared with
// the other threads of the enclosing region, each holding the same `ws`.
template <class U>
void mean_field_image(const MeanFieldArgs& args, int64_t b, const ImageWorkspace& ws, bool team, float* x) {
  const int64_t n_labels = args.unary.shape[1], height = args.unary.shape[2], width = args.unary.shape[3];
  const int64_t pixels = height * width, row = padded_width(n_labels);
  const U* unary = args.unary.as<U>() + b * n_labels * pixels;
  const uint8_t* image = args.image.as<uint8_t>() + b * 3 * pixels;
  float* out = args.out.as<float>() + b * n_labels * pixels;

  // The lattices: every pixel embedded, then the rest of each build
  // (sequential), one lattice per thread in team mode. A Gaussian lattice
  // depends on pixel positions only: one built for an earlier image of the
  // call (same size) in this workspace is reused as it is.
  bool build[kMaxKernels] = {};
  for (int k = 0; k < args.n_kernels; ++k) build[k] = !(ws.lattices[k].dims == kGaussianDims && ws.built[k]);
  team_for(team, pixels, kPixelBlock, [&](int64_t p0, int64_t p1) {
    for (int k = 0; k < args.n_kernels; ++k) {
      if (!build[k]) continue;
      const MeanFieldKernel& kernel = args.kernels[k];
      dispatch_dims(kernel.dims, [&](auto d) {
        embed_range<decltype(d)::value>(ws.lattices[k], image, kernel.sxy, kernel.srgb, p0, p1);
        return 0;
      });
    }
  });
  // One stage for the rest of the builds and q = softmax(-unary) (the
  // energies kept as rows for the updates), in blocks of pixels: in a team
  // the thread that builds the smaller lattice goes on to the softmax while
  // the bilateral one is still being built (it is taken first).
  int order[kMaxKernels] = {0, 1};
  if (args.n_kernels == 2 && ws.lattices[0].dims < ws.lattices[1].dims) std::swap(order[0], order[1]);
  const int64_t start_blocks = (pixels + kPixelBlock - 1) / kPixelBlock;
  team_for(team, args.n_kernels + start_blocks, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      if (i < args.n_kernels) {
        const int k = order[i];
        if (!build[k]) continue;
        ws.built[k] = ws.lattices[k].dims == kGaussianDims;
        Lattice lat = ws.lattices[k];
        ws.vertices[k] = dispatch_dims(lat.dims, [&](auto d) {
          return build_image_lattice<decltype(d)::value>(lat, ws.keys[k], ws.values[k][0], ws.values[k][1]);
        });
      } else {
        const int64_t p0 = (i - args.n_kernels) * kPixelBlock;
        start_range<U>(unary, n_labels, pixels, p0, std::min(pixels, p0 + kPixelBlock), ws.energy, ws.q, row, x);
      }
    }
  });

  const float identity = static_cast<float>(args.identity_weight);
  float weights[kMaxKernels];
  for (int k = 0; k < args.n_kernels; ++k) weights[k] = static_cast<float>(args.kernels[k].weight);
  for (int iteration = 0; iteration < args.n_iters; ++iteration) {
    // Splat q on every lattice, blur it, then update q from the blurred
    // values. The splat is a scatter over the pixels on one thread, a
    // gather over the vertices shared by a team (a lattice's scatter cannot
    // be split; one lattice per thread left the Gaussian one's thread idle
    // half the time): the same sums either way.
    // Both lattices' splats are one stage, and so is each blur pass that
    // both have (fewer barriers for a team, each ending when its last item does).
    const bool all[kMaxKernels] = {true, true};
    if (team) {
      lattices_for(team, ws.vertices, all, args.n_kernels, kSplatBlock, [&](int k, int64_t v0, int64_t v1) {
        splat_range(ws.lattices[k], v0, v1, ws.q, ws.values[k][0], row);
      });
    } else {
      for (int k = 0; k < args.n_kernels; ++k) {
        dispatch_dims(ws.lattices[k].dims, [&](auto d) {
          scatter_splat<decltype(d)::value>(ws.lattices[k], ws.vertices[k], ws.q, ws.values[k][0], row);
          return 0;
        });
      }
    }
    // The blur passes go back and forth between each lattice's two buffers.
    float* front[kMaxKernels] = {ws.values[0][0], ws.values[1][0]};
    float* back[kMaxKernels] = {ws.values[0][1], ws.values[1][1]};
    int passes = 0;
    for (int k = 0; k < args.n_kernels; ++k) passes = std::max(passes, ws.lattices[k].dims + 1);
    for (int j = 0; j < passes; ++j) {
      bool active[kMaxKernels] = {};
      for (int k = 0; k < args.n_kernels; ++k) active[k] = j <= ws.lattices[k].dims;
      lattices_for(team, ws.vertices, active, args.n_kernels, kBlurBlock, [&](int k, int64_t v0, int64_t v1) {
        const int32_t* direction = ws.lattices[k].neighbours.as<int32_t>() + 2 * j * ws.vertices[k];
        blur_range(direction, v0, v1, front[k], back[k], row);
      });
      for (int k = 0; k < args.n_kernels; ++k)
        if (active[k]) std::swap(front[k], back[k]);
    }
    const float* blurred[kMaxKernels] = {front[0], front[1]};
    team_for(team, pixels, kPixelBlock, [&](int64_t p0, int64_t p1) {
      update_range(ws, args.n_kernels, blurred, weights, identity, p0, p1, row, x);
    });
  }
  team_for(team, pixels, kPixelBlock,
           [&](int64_t p0, int64_t p1) { label_major(ws.q, n_labels, pixels, p0, p1, row, out); });
}

// Asks the kernel to back the 2 MiB pages inside [data, data + bytes) with
// huge pages when first touched (transparent huge pages in "madvise" mode,
// the common default). The workspace and output of a call are fresh
// allocations, and touching them 4 KiB page by page cost more than a
// quarter of a VOC image's mean field (a fault per page, about 2 us each on a
// virtual machine); a 2 MiB fault is one per 512 pages. Advice only: a
// kernel without THP ignores it.
void advise_huge_pages(void* data, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{1} << 21;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + static_cast<uintptr_t>(bytes)) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
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
  const int64_t row = padded_width(args.unary.shape[1]);
  advise_huge_pages(base, workers * row_bytes);
  advise_huge_pages(args.out.data, args.out.numel() * static_cast<int64_t>(sizeof(float)));
  for (int64_t w = 0; w < workers; ++w) {  // no lattice built yet in any row
    const ImageWorkspace ws = carve_workspace(base + w * row_bytes, args.unary.shape[2], args.unary.shape[3],
                                              args.unary.shape[1], dims, args.n_kernels, nullptr);
    std::fill(ws.built, ws.built + kMaxKernels, int64_t{0});
  }
  dispatch_floating(args.unary.dtype, "unary", [&](auto tag) {
    using U = decltype(tag);
    const int threads = cpu_threads();
    // Fewer images than threads: every thread works on each image in turn
    // (workspace row 0); else each thread owns workspace row thread_index()
    // and takes whole images.
    const bool team = batch < threads && threads > 1;
    const int region = team ? threads : static_cast<int>(std::min<int64_t>({workers, batch, threads}));
#pragma omp parallel num_threads(region) if (region > 1)
    {
      std::vector<float> x(static_cast<size_t>(kUpdateRows * row));  // update_range's scratch rows
      const ImageWorkspace ws = carve_workspace(base + (team ? 0 : thread_index()) * row_bytes, args.unary.shape[2],
                                                args.unary.shape[3], args.unary.shape[1], dims, args.n_kernels,
                                                nullptr);
      if (team) {
        for (int64_t b = 0; b < batch; ++b) mean_field_image<U>(args, b, ws, true, x.data());
      } else {
#pragma omp for schedule(dynamic, 1)
        for (int64_t b = 0; b < batch; ++b) mean_field_image<U>(args, b, ws, false, x.data());
      }
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

namespace {

// q rows = softmax(-unary + pairwise) for pixels [p0, p1) of one image;
// `x`: kTransposeBlock rows of scratch. Rows of a multiple of 8 take
// softmax_block(), as the image-by-image path does.
template <class U>
WSSS_CPU_VECTORIZED void softmax_rows(const U* unary, int64_t n_labels, int64_t pixels, int64_t p0, int64_t p1,
                                      const float* pairwise, float* q, int64_t width, float* x) {
  const int64_t b = p0 / pixels;
  const U* image_unary = unary + b * n_labels * pixels;
  for (int64_t first = p0; first < p1; first += kTransposeBlock) {
    const int64_t last = std::min(p1, first + kTransposeBlock);
    energy_rows<U>(image_unary, n_labels, pixels, first - b * pixels, last - b * pixels, x, width);
    if (width % kLanes == 0) {
      if (pairwise)
        for (int64_t i = 0; i < (last - first) * width; ++i) x[i] = x[i] + pairwise[first * width + i];
      softmax_block(x, last - first, width, q + first * width);
    } else {
      for (int64_t p = first; p < last; ++p)
        mean_field_softmax(x + (p - first) * width, pairwise ? pairwise + p * width : nullptr, q + p * width,
                           n_labels, width);
    }
  }
}

}  // namespace

void softmax_cpu(const ArrayView& unary, const float* pairwise, float* q, int64_t width, float* q_out) {
  const int64_t batch = unary.shape[0], n_labels = unary.shape[1];
  const int64_t pixels = unary.shape[2] * unary.shape[3];
  dispatch_floating(unary.dtype, "unary", [&](auto tag) {
    using U = decltype(tag);
    // Blocks never straddle two images: parallel over (image, pixel block).
    const int64_t blocks_per_image = (pixels + kBlock - 1) / kBlock;
    const int64_t blocks = batch * blocks_per_image;
#pragma omp parallel num_threads(cpu_threads()) if (blocks * kBlock > kMinParallelItems)
    {
      std::vector<float> x(static_cast<size_t>(kTransposeBlock * width));
#pragma omp for schedule(dynamic, 1)
      for (int64_t block = 0; block < blocks; ++block) {
        const int64_t b = block / blocks_per_image, first = (block % blocks_per_image) * kBlock;
        const int64_t p0 = b * pixels + first, p1 = b * pixels + std::min(pixels, first + kBlock);
        softmax_rows<U>(unary.as<U>(), n_labels, pixels, p0, p1, pairwise, q, width, x.data());
        if (q_out)
          label_major(q + b * pixels * width, n_labels, pixels, first, std::min(pixels, first + kBlock), width,
                      q_out + b * n_labels * pixels);
      }
    }
  });
}

}  // namespace wsss::dense_crf
