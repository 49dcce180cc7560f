// Dense CRF mean-field on the permutohedral lattice (Krähenbühl & Koltun 2011,
// lattice of Adams, Baek & Davis 2010): the shared math and the launchers.
//
// One lattice per Gaussian kernel for the whole batch. Every pixel's feature
// vector f (d = 2: x/sxy, y/sxy; d = 5: the same plus r, g, b over srgb) is
// lifted onto the plane sum = 0 of Z^(d+1) and falls in one simplex; its d+1
// corners ("entries", pixel-major: entry e is corner e % (d+1) of pixel
// e / (d+1)) carry the barycentric weights. A hash table
// keyed by (image, corner coordinates) merges equal corners into vertices.
// Filtering a P x L signal is then
//   splat   vertex v = sum over its entries e of w_e * signal[pixel(e)]
//   blur    d+1 passes, one per lattice direction: v += (left + right) / 2
//   slice   pixel p = alpha * sum over its corners r of w_r * vertex(p, r)
// Splatting is a gather over each vertex's entry list (CSR, in entry order),
// so no float atomics are needed and results do not depend on thread counts.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "common/array_view.h"
#include "common/dtype.h"
#include "common/hostdevice.h"
#include "common/math.h"

namespace wsss::dense_crf {

constexpr int kGaussianDims = 2;   // x, y
constexpr int kBilateralDims = 5;  // x, y, r, g, b

// The per-axis scale of the embedding, (d+1) sqrt(2/3) / sqrt((i+1)(i+2)),
// folded with the kernel widths: feature i of a pixel is its raw value
// (column, row or colour) divided by width[i], then times embed[i].
template <int D>
struct Embedding {
  float width[D];
  float embed[D];
};

template <int D>
inline Embedding<D> make_embedding(double sxy, double srgb) {
  Embedding<D> e{};
  const double inv_std_dev = std::sqrt(2.0 / 3.0) * (D + 1);
  for (int i = 0; i < D; ++i) {
    e.width[i] = static_cast<float>(i < 2 ? sxy : srgb);
    e.embed[i] = static_cast<float>(1.0 / std::sqrt(static_cast<double>((i + 1) * (i + 2))) * inv_std_dev);
  }
  return e;
}

// The raw features of pixel (x, y) of an image stored as 3 planes of n_pixels.
template <int D>
WSSS_HD void pixel_features(const uint8_t* rgb_planes, int64_t n_pixels, int64_t pixel, int64_t width,
                            const Embedding<D>& e, float* feature) {
  const float raw[5] = {static_cast<float>(pixel % width), static_cast<float>(pixel / width),
                        D > 2 ? static_cast<float>(rgb_planes[pixel]) : 0.f,
                        D > 2 ? static_cast<float>(rgb_planes[n_pixels + pixel]) : 0.f,
                        D > 2 ? static_cast<float>(rgb_planes[2 * n_pixels + pixel]) : 0.f};
  for (int i = 0; i < D; ++i) feature[i] = raw[i] / e.width[i];
}

// Places one feature vector in the lattice. Its simplex is stored packed as
// d int32 (the (d+1)-th coordinate is minus the sum of the others): each
// coordinate of the remainder-0 corner (a multiple of d+1) plus the rank of
// that coordinate (0..d). corner_key() unpacks a corner's coordinates; the
// barycentric weight of corner r goes to weights[r].
template <int D>
WSSS_HD void embed_point(const float* feature, const Embedding<D>& e, int32_t* simplex, float* weights) {
  // Elevate onto the plane: y = E f.
  float elevated[D + 1];
  float partial_sum = 0.f;
  for (int j = D; j > 0; --j) {
    const float cf = feature[j - 1] * e.embed[j - 1];
    elevated[j] = partial_sum - static_cast<float>(j) * cf;
    partial_sum += cf;
  }
  elevated[0] = partial_sum;

  // Nearest remainder-0 point: round every coordinate to a multiple of d+1.
  const float down = 1.0f / (D + 1);
  const float up = static_cast<float>(D + 1);
  int rem0[D + 1];
  int coordinate_sum = 0;
  for (int i = 0; i <= D; ++i) {
    const float v = down * elevated[i];
    const float above = ceilf(v) * up;
    const float below = floorf(v) * up;
    rem0[i] = static_cast<int>(above - elevated[i] < elevated[i] - below ? above : below);
    coordinate_sum += rem0[i];
  }
  coordinate_sum /= (D + 1);  // exact: each rem0 is a multiple of d+1

  // Rank of each coordinate's residual, then walk back onto the plane.
  int rank[D + 1];
  for (int i = 0; i <= D; ++i) rank[i] = 0;
  for (int i = 0; i < D; ++i) {
    const float di = elevated[i] - static_cast<float>(rem0[i]);
    for (int j = i + 1; j <= D; ++j) {
      if (di < elevated[j] - static_cast<float>(rem0[j]))
        ++rank[i];
      else
        ++rank[j];
    }
  }
  for (int i = 0; i <= D; ++i) {
    rank[i] += coordinate_sum;
    if (rank[i] < 0) {
      rank[i] += D + 1;
      rem0[i] += D + 1;
    } else if (rank[i] > D) {
      rank[i] -= D + 1;
      rem0[i] -= D + 1;
    }
  }

  // Barycentric coordinates (Adams et al., p. 10).
  float bary[D + 2];
  for (int i = 0; i <= D + 1; ++i) bary[i] = 0.f;
  for (int i = 0; i <= D; ++i) {
    const float v = (elevated[i] - static_cast<float>(rem0[i])) * down;
    bary[D - rank[i]] += v;
    bary[D - rank[i] + 1] -= v;
  }
  bary[0] += 1.f + bary[D + 1];

  for (int i = 0; i < D; ++i) simplex[i] = rem0[i] + rank[i];
  for (int r = 0; r <= D; ++r) weights[r] = bary[r];
}

// Coordinates of corner r of a packed simplex: the canonical simplex of the
// ranks, shifted to the remainder-0 corner.
template <int D>
WSSS_HD void corner_key(const int32_t* simplex, int r, int32_t* key) {
  for (int i = 0; i < D; ++i) {
    const int32_t rank = ((simplex[i] % (D + 1)) + (D + 1)) % (D + 1);
    const int32_t rem0 = simplex[i] - rank;
    key[i] = rem0 + (rank <= D - r ? r : r - (D + 1));
  }
}

// The coordinates of lattice entry e (pixel e / (d+1), corner e % (d+1)).
template <int D>
WSSS_HD void entry_key(const int32_t* simplex, int64_t e, int32_t* key) {
  corner_key<D>(simplex + (e / (D + 1)) * D, static_cast<int>(e % (D + 1)), key);
}

// dispatch_dims(lattice.dims, [&](auto d) { constexpr int D = decltype(d)::value; ... })
// runs the body with the lattice dimension as a compile-time constant.
template <class Body>
auto dispatch_dims(int dims, Body&& body) {
  if (dims == kGaussianDims) return body(std::integral_constant<int, kGaussianDims>{});
  return body(std::integral_constant<int, kBilateralDims>{});
}

// slice() scales by alpha = 1 / (1 + 2^-d): the lattice's blur sums to more
// than a unit Gaussian. (With symmetric normalisation it cancels out.)
template <int D>
WSSS_HD float slice_alpha() {
  return 1.0f / (1.0f + 1.0f / static_cast<float>(1 << D));
}

// ---------------------------------------------------------------------------
// The hash table: open addressing with linear probing over `capacity` (a
// power of two) int32 slots, each empty (-1) or holding the index of the
// first entry inserted with that key. Keys are (image, d coordinates).
// ---------------------------------------------------------------------------

template <int D>
WSSS_HD uint64_t hash_key(int64_t image, const int32_t* key) {
  uint64_t h = static_cast<uint64_t>(image) * 0x9E3779B97F4A7C15ull;
  for (int i = 0; i < D; ++i) h = (h + static_cast<uint32_t>(key[i])) * 2531011ull;
  // splitmix64 finaliser: spreads the multiplicative hash over the low bits.
  h ^= h >> 30;
  h *= 0xBF58476D1CE4E5B9ull;
  h ^= h >> 27;
  h *= 0x94D049BB133111EBull;
  h ^= h >> 31;
  return h;
}

template <int D>
WSSS_HD bool same_key(const int32_t* a, const int32_t* b) {
  for (int i = 0; i < D; ++i)
    if (a[i] != b[i]) return false;
  return true;
}

// Does entry e (of `image`) have coordinates `key`?
template <int D>
WSSS_HD bool entry_has_key(const int32_t* simplex, int64_t entries_per_image, int64_t e, int64_t image,
                           const int32_t* key) {
  // A range test, not e / entries_per_image: no 64-bit division per probe.
  if (e < image * entries_per_image || e >= (image + 1) * entries_per_image) return false;
  int32_t other[D];
  entry_key<D>(simplex, e, other);
  return same_key<D>(other, key);
}

// The entry holding `key` of `image`, or -1. entries_per_image = pixels * (d+1).
template <int D>
WSSS_HD int32_t find_entry(const int32_t* slots, uint64_t mask, const int32_t* simplex, int64_t entries_per_image,
                           int64_t image, const int32_t* key) {
  for (uint64_t h = hash_key<D>(image, key) & mask;; h = (h + 1) & mask) {
    const int32_t s = slots[h];
    if (s < 0) return -1;
    if (entry_has_key<D>(simplex, entries_per_image, s, image, key)) return s;
  }
}

// Neighbour keys of a vertex along lattice direction j (0..d): all
// coordinates -1 except coordinate j, which moves +d (and the mirror image).
template <int D>
WSSS_HD void neighbour_keys(const int32_t* key, int j, int32_t* minus, int32_t* plus) {
  for (int i = 0; i < D; ++i) {
    minus[i] = key[i] - 1;
    plus[i] = key[i] + 1;
  }
  if (j < D) {
    minus[j] = key[j] + D;
    plus[j] = key[j] - D;
  }
}

// ---------------------------------------------------------------------------
// Mean-field pieces. Signals are pixel-major rows of `width` floats: the L
// labels, then zero padding (the CPU pads rows to a multiple of 8 so that
// its inner loops are whole vectors).
// ---------------------------------------------------------------------------

// q = softmax(-unary + pairwise) over the first n_labels lanes of one row;
// `energy` holds -unary of this pixel's labels (contiguous), pairwise may be
// null (the t = 0 step). Padding lanes -> 0.
WSSS_HD void mean_field_softmax(const float* energy, const float* pairwise, float* q, int64_t n_labels,
                                int64_t width) {
  float max = -INFINITY;
  for (int64_t l = 0; l < n_labels; ++l) {
    const float x = pairwise ? energy[l] + pairwise[l] : energy[l];
    q[l] = x;
    max = x > max ? x : max;
  }
  float sum = 0.f;
  for (int64_t l = 0; l < n_labels; ++l) {
    q[l] = exp_polynomial(q[l] - max);
    sum += q[l];
  }
  const float inv_sum = 1.f / sum;
  for (int64_t l = 0; l < n_labels; ++l) q[l] *= inv_sum;
  for (int64_t l = n_labels; l < width; ++l) q[l] = 0.f;
}

// ---------------------------------------------------------------------------
// Buffers of one lattice. Python allocates them (sizes in ops/dense_crf.py);
// P = images * pixels, E = P * (d+1) entries, M vertices (known after build).
// ---------------------------------------------------------------------------
struct Lattice {
  int dims = 0;  // d: 2 or 5
  int64_t images = 0, height = 0, width = 0;
  // Built by build_vertices(), read by link(), then dropped:
  ArrayView simplex;        // int32 [P, d]       packed simplex of every pixel
  ArrayView entry_rep;      // int32 [E]          the entry that first inserted this key
  ArrayView slots;          // int32 [capacity]   hash table, capacity a power of two
  ArrayView vertex_entry;   // int32 [E]          first M: one entry of each vertex
  ArrayView counter;        // int32 [1]          vertex count (CUDA)
  ArrayView scratch;        // uint8 [scratch_bytes] CUDA scan and sort workspace
  // Kept for filtering:
  ArrayView weights;        // float32 [E]        barycentric weight of every entry
  ArrayView entry_vertex;   // int32 [E]          vertex of every entry
  ArrayView neighbours;     // int32 [d+1, M, 2]  blur neighbours, -1 where none
  ArrayView splat_start;    // int32 [M+1]        CSR offsets of each vertex's entries
  ArrayView splat_pixels;   // int32 [E]          pixels of the entries, grouped by vertex
  ArrayView splat_weights;  // float32 [E]        their weights times the pixel's norm
  ArrayView norm;           // float32 [P]        1/sqrt(K 1 + 1e-20)

  int64_t pixels() const { return height * width; }
  int64_t entries() const { return images * pixels() * (dims + 1); }
};

// Entry points: check every argument, then run on the arrays' device.
// build_vertices embeds every pixel and merges equal corners; returns M (on
// CUDA this synchronises the stream: M sizes the buffers that follow).
int64_t build_vertices(Lattice& lattice, const ArrayView& image, double sxy, double srgb, uintptr_t stream);
// Bytes of `scratch` link() needs for M vertices and E entries (0 on the CPU).
int64_t scratch_bytes(int64_t vertices, int64_t entries, bool cuda);
// Blur neighbours, splat lists and the symmetric normalisation. values_a and
// values_b are float32 workspaces of at least M elements.
void link(const Lattice& lattice, int64_t vertices, const ArrayView& values_a, const ArrayView& values_b,
          uintptr_t stream);
// out (+)= coefficient * Kn(q) for rows q and out [P, width]; values_a/b are
// float32 workspaces of >= M * width.
void filter(const Lattice& lattice, int64_t vertices, const ArrayView& q, const ArrayView& out, double coefficient,
            bool accumulate, const ArrayView& values_a, const ArrayView& values_b, uintptr_t stream);
// q = softmax(-unary + pairwise) per pixel, unary [B, L, H, W] any float
// dtype, q and pairwise rows [P, width >= L] (pairwise empty: softmax(-unary));
// q_out, if it has data, also receives q as [B, L, H, W].
void softmax(const ArrayView& unary, const ArrayView& pairwise, const ArrayView& q, const ArrayView& q_out,
             uintptr_t stream);

// ---------------------------------------------------------------------------
// The whole mean field image by image (CPU only): the CPU's path at every
// size. With at least as many images as threads each thread takes whole
// images; with fewer, all threads share each image (the two lattices built
// side by side, every filtering stage split over vertices or pixels). Each
// image runs the same build, link, splat, blur and slice code as above on a
// one-image lattice held in `workspace` (one row per thread, or row 0 for a
// shared image), with the slices and the softmax in one pass over the
// pixels; a call has one parallel region instead of one per stage, and
// results are bit for bit those of the batched path at any thread count.
// ---------------------------------------------------------------------------
constexpr int kMaxKernels = 2;

struct MeanFieldKernel {
  int dims = 0;  // 2 or 5
  double sxy = 0, srgb = 0, weight = 0;
};

struct MeanFieldArgs {
  ArrayView unary;      // [B, L, H, W] any float dtype
  ArrayView image;      // [B, 3, H, W] uint8
  ArrayView out;        // [B, L, H, W] float32: Q
  ArrayView workspace;  // uint8 [workers, >= mean_field_workspace_bytes(...)], one row per thread
  int n_iters = 0;
  int n_kernels = 0;
  MeanFieldKernel kernels[kMaxKernels];
  // Weight of a kernel that is exactly the identity (Kn q = q): added as
  // identity_weight * q to the pairwise term, no lattice built.
  double identity_weight = 0;
};

// Bytes of one worker's workspace row for images of `pixels` pixels and
// `n_labels` labels with lattices of the given dims.
int64_t mean_field_workspace_bytes(int64_t pixels, int64_t n_labels, const int* dims, int n_kernels);
// Checks, then runs (CPU arrays only).
void mean_field(const MeanFieldArgs& args);

// Backends (arguments already checked). Rows are `width` floats.
int64_t build_vertices_cpu(Lattice& lattice, const ArrayView& image, double sxy, double srgb);
void link_cpu(const Lattice& lattice, int64_t vertices, float* values_a, float* values_b);
void filter_cpu(const Lattice& lattice, int64_t vertices, const float* q, float* out, int64_t width,
                float coefficient, bool accumulate, float* values_a, float* values_b);
void softmax_cpu(const ArrayView& unary, const float* pairwise, float* q, int64_t width, float* q_out);
void mean_field_cpu(const MeanFieldArgs& args);
#if defined(WSSS_WITH_CUDA)
int64_t build_vertices_cuda(Lattice& lattice, const ArrayView& image, double sxy, double srgb, uintptr_t stream);
int64_t scratch_bytes_cuda(int64_t vertices, int64_t entries);
void link_cuda(const Lattice& lattice, int64_t vertices, float* values_a, float* values_b, uintptr_t stream);
void filter_cuda(const Lattice& lattice, int64_t vertices, const float* q, float* out, int64_t width,
                 float coefficient, bool accumulate, float* values_a, float* values_b, uintptr_t stream);
void softmax_cuda(const ArrayView& unary, const float* pairwise, float* q, int64_t width, float* q_out,
                  uintptr_t stream);
#endif

}  // namespace wsss::dense_crf
