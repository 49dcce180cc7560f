// Dense CRF entry points: the C++ safety net of argument checks (Python has
// already given friendlier messages), then the backend for the device.
#include "dense_crf/dense_crf.h"
#include "common/route.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace wsss::dense_crf {
namespace {

constexpr int64_t kMaxIndex = std::numeric_limits<int32_t>::max();

void check_buffer(const ArrayView& buffer, const char* name, DType dtype, const ArrayView& like, const char* like_name,
                  bool written) {
  check_same_device(buffer, name, like, like_name);
  check_dtype(buffer, {dtype}, name);
  check_contiguous(buffer, name);
  if (written) check_writable(buffer, name);
}

void check_min_size(const ArrayView& buffer, int64_t size, const char* name) {
  WSSS_CHECK(buffer.numel() >= size, name, " needs at least ", size, " elements, got ", buffer.describe());
}

// The buffers build_vertices() fills and link() reads, on the device of `like`.
void check_build_buffers(const Lattice& lat, const ArrayView& like, const char* like_name) {
  WSSS_CHECK(lat.dims == kGaussianDims || lat.dims == kBilateralDims, "lattice dims must be 2 or 5, got ", lat.dims);
  const int64_t e = lat.entries();
  WSSS_CHECK(e > 0, "the lattice needs at least one pixel");
  WSSS_CHECK(e < kMaxIndex, "too many pixels for one call: ", lat.images, " images of ", lat.height, "x", lat.width,
             " need ", e, " lattice entries (limit ", kMaxIndex, "); split the batch");
  check_buffer(lat.simplex, "simplex", DType::kInt32, like, like_name, true);
  check_shape(lat.simplex, {lat.images * lat.pixels(), lat.dims}, "simplex");
  check_buffer(lat.weights, "weights", DType::kFloat32, like, like_name, true);
  check_shape(lat.weights, {e}, "weights");
  for (const auto& [view, name] : {std::pair{&lat.entry_rep, "entry_rep"}, std::pair{&lat.entry_vertex, "entry_vertex"},
                                   std::pair{&lat.vertex_entry, "vertex_entry"}}) {
    check_buffer(*view, name, DType::kInt32, like, like_name, true);
    check_shape(*view, {e}, name);
  }
  check_buffer(lat.slots, "slots", DType::kInt32, like, like_name, true);
  check_ndim(lat.slots, 1, "slots");
  const int64_t capacity = lat.slots.shape[0];
  WSSS_CHECK(capacity > e && (capacity & (capacity - 1)) == 0,
             "slots must hold a power of two larger than the entry count ", e, ", got ", lat.slots.describe());
  check_buffer(lat.counter, "counter", DType::kInt32, like, like_name, true);
  check_shape(lat.counter, {1}, "counter");
}

void check_linked_buffers(const Lattice& lat, int64_t vertices) {
  const ArrayView& like = lat.weights;  // build-only buffers may be gone by now
  WSSS_CHECK(vertices > 0 && vertices <= lat.entries(), "vertices must be in [1, ", lat.entries(), "], got ",
             vertices);
  check_buffer(lat.neighbours, "neighbours", DType::kInt32, like, "weights", true);
  check_shape(lat.neighbours, {lat.dims + 1, vertices, 2}, "neighbours");
  check_buffer(lat.splat_start, "splat_start", DType::kInt32, like, "weights", true);
  check_shape(lat.splat_start, {vertices + 1}, "splat_start");
  check_buffer(lat.splat_pixels, "splat_pixels", DType::kInt32, like, "weights", true);
  check_shape(lat.splat_pixels, {lat.entries()}, "splat_pixels");
  check_buffer(lat.splat_weights, "splat_weights", DType::kFloat32, like, "weights", true);
  check_shape(lat.splat_weights, {lat.entries()}, "splat_weights");
  check_buffer(lat.entry_vertex, "entry_vertex", DType::kInt32, like, "weights", true);
  check_shape(lat.entry_vertex, {lat.entries()}, "entry_vertex");
  check_buffer(lat.norm, "norm", DType::kFloat32, like, "weights", true);
  check_shape(lat.norm, {lat.images * lat.pixels()}, "norm");
}

void check_values(const ArrayView& values, const char* name, int64_t size, const ArrayView& like) {
  check_buffer(values, name, DType::kFloat32, like, "weights", true);
  check_min_size(values, size, name);
}

// Every buffer of a lattice, for the overlap checks (absent ones are skipped).
std::vector<Named> lattice_buffers(const Lattice& lat) {
  return {{lat.simplex, "simplex"},           {lat.weights, "weights"},           {lat.entry_rep, "entry_rep"},
          {lat.entry_vertex, "entry_vertex"}, {lat.slots, "slots"},               {lat.vertex_entry, "vertex_entry"},
          {lat.counter, "counter"},           {lat.neighbours, "neighbours"},     {lat.splat_start, "splat_start"},
          {lat.splat_pixels, "splat_pixels"}, {lat.splat_weights, "splat_weights"}, {lat.norm, "norm"},
          {lat.scratch, "scratch"}};
}

std::vector<Named> with(std::vector<Named> named, std::initializer_list<Named> more) {
  named.insert(named.end(), more.begin(), more.end());
  return named;
}

// The lattice's coordinates are int32: a pixel's features (position / sxy,
// colour / srgb) lifted by the embedding must stay well inside that range, or
// the rounding to lattice points overflows (a tiny sxy on a large image).
void check_lattice_scale(int dims, double sxy, double srgb, int64_t height, int64_t width) {
  const double d = dims;
  // |elevated coordinate| <= (d + 1) * max feature * max embed, embed <= sqrt(2/3) (d + 1) / sqrt(2).
  const double lift = (d + 1) * (d + 1) * std::sqrt(2.0 / 3.0) / std::sqrt(2.0);
  const double position = static_cast<double>(std::max<int64_t>(height, width)) / sxy;
  const double colour = dims == kBilateralDims ? 255.0 / srgb : 0.0;
  const double reach = lift * std::max(position, colour);
  constexpr double kLimit = 1 << 29;  // headroom for the + d neighbour steps and sums of coordinates
  WSSS_CHECK(reach < kLimit, "sxy = ", sxy, dims == kBilateralDims ? concat(" and srgb = ", srgb) : std::string(),
             " are too small for a ", height, "x", width,
             " image: lattice coordinates would reach ", reach, ", past the int32 lattice (< 2**29); "
             "use larger kernel widths");
}

// filter() follows the lattice's index buffers to read and write values:
// on CPU arrays it first checks that each index is in range (a garbage
// lattice would read and write out of bounds). The CUDA path trusts the
// buffers link() wrote (a check would need a host synchronisation).
void check_lattice_indices(const Lattice& lat, int64_t vertices) {
  if (lat.weights.is_cuda()) return;
  const int64_t entries = lat.entries(), pixels = lat.images * lat.pixels();
  const int32_t* neighbours = lat.neighbours.as<const int32_t>();
  for (int64_t i = 0; i < lat.neighbours.numel(); ++i)
    WSSS_CHECK(neighbours[i] >= -1 && neighbours[i] < vertices, "neighbours holds ", neighbours[i], " at entry ", i,
               ": entries must be vertex indices in [0, ", vertices, ") or -1");
  const int32_t* start = lat.splat_start.as<const int32_t>();
  WSSS_CHECK(start[0] == 0 && start[vertices] == entries, "splat_start must run from 0 to ", entries, ", got ",
             start[0], " .. ", start[vertices]);
  for (int64_t v = 0; v < vertices; ++v)
    WSSS_CHECK(start[v] <= start[v + 1], "splat_start must be non-decreasing, got ", start[v], " then ",
               start[v + 1], " at vertex ", v);
  const int32_t* splat_pixels = lat.splat_pixels.as<const int32_t>();
  const int32_t* entry_vertex = lat.entry_vertex.as<const int32_t>();
  for (int64_t e = 0; e < entries; ++e) {
    WSSS_CHECK(splat_pixels[e] >= 0 && splat_pixels[e] < pixels, "splat_pixels holds ", splat_pixels[e],
               " at entry ", e, ": entries must be pixel indices in [0, ", pixels, ")");
    WSSS_CHECK(entry_vertex[e] >= 0 && entry_vertex[e] < vertices, "entry_vertex holds ", entry_vertex[e],
               " at entry ", e, ": entries must be vertex indices in [0, ", vertices, ")");
  }
}

}  // namespace

int64_t build_vertices(Lattice& lattice, const ArrayView& image, double sxy, double srgb, uintptr_t stream) {
  check_ndim(image, 4, "image");
  check_dtype(image, {DType::kUInt8}, "image");
  check_contiguous(image, "image");
  WSSS_CHECK(image.shape[1] == 3, "image must have 3 channels (RGB), got ", image.describe());
  lattice.images = image.shape[0];
  lattice.height = image.shape[2];
  lattice.width = image.shape[3];
  check_build_buffers(lattice, image, "image");
  WSSS_CHECK(std::isfinite(sxy) && sxy > 0, "sxy must be finite and > 0, got ", sxy);
  WSSS_CHECK(lattice.dims == kGaussianDims || (std::isfinite(srgb) && srgb > 0), "srgb must be finite and > 0, got ",
             srgb);
  check_lattice_scale(lattice.dims, sxy, srgb, lattice.height, lattice.width);
  check_disjoint(lattice_buffers(lattice), {{image, "image"}});
  // Returns a value, so routed by hand.
  if (runs_on_cuda(image)) {
#if defined(WSSS_WITH_CUDA)
    return build_vertices_cuda(lattice, image, sxy, srgb, stream);
#else
    throw_no_cuda("image");
#endif
  }
  (void)stream;
  return build_vertices_cpu(lattice, image, sxy, srgb);
}

int64_t scratch_bytes(int64_t vertices, int64_t entries, bool cuda) {
#if defined(WSSS_WITH_CUDA)
  if (cuda) return scratch_bytes_cuda(vertices, entries);
#endif
  (void)vertices;
  (void)entries;
  (void)cuda;
  return 0;
}

void link(const Lattice& lattice, int64_t vertices, const ArrayView& values_a, const ArrayView& values_b,
          uintptr_t stream) {
  check_build_buffers(lattice, lattice.weights, "weights");
  check_linked_buffers(lattice, vertices);
  check_buffer(lattice.scratch, "scratch", DType::kUInt8, lattice.weights, "weights", true);
  check_min_size(lattice.scratch, scratch_bytes(vertices, lattice.entries(), runs_on_cuda(lattice.weights)),
                 "scratch");
  check_values(values_a, "values_a", vertices, lattice.weights);
  check_values(values_b, "values_b", vertices, lattice.weights);
  check_disjoint(with(lattice_buffers(lattice), {{values_a, "values_a"}, {values_b, "values_b"}}), {});
  float *a = values_a.as<float>(), *b = values_b.as<float>();
  WSSS_ROUTE(lattice.weights, "weights", stream, link_cuda(lattice, vertices, a, b, stream),
             link_cpu(lattice, vertices, a, b));
}

void filter(const Lattice& lattice, int64_t vertices, const ArrayView& q, const ArrayView& out, double coefficient,
            bool accumulate, const ArrayView& values_a, const ArrayView& values_b, uintptr_t stream) {
  check_linked_buffers(lattice, vertices);
  check_ndim(q, 2, "q");
  const int64_t width = q.shape[1];
  WSSS_CHECK(width > 0, "q needs at least one label, got ", q.describe());
  check_buffer(q, "q", DType::kFloat32, lattice.weights, "weights", false);
  check_shape(q, {lattice.images * lattice.pixels(), width}, "q");
  check_buffer(out, "out", DType::kFloat32, lattice.weights, "weights", true);
  check_shape(out, {lattice.images * lattice.pixels(), width}, "out");
  check_values(values_a, "values_a", vertices * width, lattice.weights);
  check_values(values_b, "values_b", vertices * width, lattice.weights);
  WSSS_CHECK(std::isfinite(coefficient), "coefficient must be finite, got ", coefficient);
  check_disjoint({{out, "out"}, {values_a, "values_a"}, {values_b, "values_b"}},
                 with(lattice_buffers(lattice), {{q, "q"}}));
  check_lattice_indices(lattice, vertices);
  const float c = static_cast<float>(coefficient);
  const float* q_data = q.as<float>();
  float *out_data = out.as<float>(), *a = values_a.as<float>(), *b = values_b.as<float>();
  WSSS_ROUTE(q, "q", stream, filter_cuda(lattice, vertices, q_data, out_data, width, c, accumulate, a, b, stream),
             filter_cpu(lattice, vertices, q_data, out_data, width, c, accumulate, a, b));
}

void softmax(const ArrayView& unary, const ArrayView& pairwise, const ArrayView& q, const ArrayView& q_out,
             uintptr_t stream) {
  check_ndim(unary, 4, "unary");
  check_dtype(unary, {DType::kFloat16, DType::kBFloat16, DType::kFloat32, DType::kFloat64}, "unary");
  check_contiguous(unary, "unary");
  const int64_t n_labels = unary.shape[1];
  const int64_t rows = unary.shape[0] * unary.shape[2] * unary.shape[3];
  WSSS_CHECK(n_labels > 0 && rows > 0, "unary must not be empty, got ", unary.describe());
  WSSS_CHECK(rows < kMaxIndex, "unary has too many pixels for one call: ", unary.describe());
  check_buffer(q, "q", DType::kFloat32, unary, "unary", true);
  check_ndim(q, 2, "q");
  const int64_t width = q.shape[1];
  WSSS_CHECK(q.shape[0] == rows && width >= n_labels, "q must be [", rows, ", >= ", n_labels, "], got ",
             q.describe());
  if (pairwise.data != nullptr) {
    check_buffer(pairwise, "pairwise", DType::kFloat32, unary, "unary", false);
    check_shape(pairwise, {rows, width}, "pairwise");
  }
  if (q_out.data != nullptr) {
    check_buffer(q_out, "q_out", DType::kFloat32, unary, "unary", true);
    check_shape(q_out, {unary.shape[0], n_labels, unary.shape[2], unary.shape[3]}, "q_out");
  }
  check_disjoint({{q, "q"}, {q_out, "q_out"}}, {{unary, "unary"}, {pairwise, "pairwise"}});
  const float* pairwise_data = pairwise.data ? pairwise.as<float>() : nullptr;
  float* q_out_data = q_out.data ? q_out.as<float>() : nullptr;
  WSSS_ROUTE(unary, "unary", stream, softmax_cuda(unary, pairwise_data, q.as<float>(), width, q_out_data, stream),
             softmax_cpu(unary, pairwise_data, q.as<float>(), width, q_out_data));
}

void mean_field(const MeanFieldArgs& args) {
  const ArrayView& unary = args.unary;
  check_ndim(unary, 4, "unary");
  check_dtype(unary, {DType::kFloat16, DType::kBFloat16, DType::kFloat32, DType::kFloat64}, "unary");
  check_contiguous(unary, "unary");
  WSSS_CHECK(!unary.is_cuda(), "the image-by-image mean field runs on the CPU; got unary ", unary.describe());
  const int64_t batch = unary.shape[0], n_labels = unary.shape[1], height = unary.shape[2], width = unary.shape[3];
  WSSS_CHECK(batch > 0 && n_labels > 0 && height * width > 0, "unary must not be empty, got ", unary.describe());
  wsss::check_buffer(args.image, "image", DType::kUInt8, {batch, 3, height, width}, unary, "unary", false);
  wsss::check_buffer(args.out, "out", DType::kFloat32, {batch, n_labels, height, width}, unary, "unary", true);
  check_same_device(args.workspace, "workspace", unary, "unary");
  check_dtype(args.workspace, {DType::kUInt8}, "workspace");
  check_contiguous(args.workspace, "workspace");
  check_writable(args.workspace, "workspace");
  check_ndim(args.workspace, 2, "workspace");
  WSSS_CHECK(args.n_iters >= 0, "n_iters must be >= 0, got ", args.n_iters);
  WSSS_CHECK(args.n_kernels >= 0 && args.n_kernels <= kMaxKernels, "at most ", kMaxKernels, " kernels, got ",
             args.n_kernels);
  int dims[kMaxKernels] = {};
  for (int k = 0; k < args.n_kernels; ++k) {
    const MeanFieldKernel& kernel = args.kernels[k];
    WSSS_CHECK(kernel.dims == kGaussianDims || kernel.dims == kBilateralDims, "kernel dims must be 2 or 5, got ",
               kernel.dims);
    WSSS_CHECK(std::isfinite(kernel.sxy) && kernel.sxy > 0, "sxy must be finite and > 0, got ", kernel.sxy);
    WSSS_CHECK(kernel.dims == kGaussianDims || (std::isfinite(kernel.srgb) && kernel.srgb > 0),
               "srgb must be finite and > 0, got ", kernel.srgb);
    WSSS_CHECK(std::isfinite(kernel.weight), "kernel weight must be finite, got ", kernel.weight);
    check_lattice_scale(kernel.dims, kernel.sxy, kernel.srgb, height, width);
    dims[k] = kernel.dims;
  }
  WSSS_CHECK(std::isfinite(args.identity_weight), "identity_weight must be finite, got ", args.identity_weight);
  WSSS_CHECK(height * width * (kBilateralDims + 1) < kMaxIndex, "images of ", height, "x", width,
             " are too large for one lattice");
  const int64_t bytes = mean_field_workspace_bytes(height * width, n_labels, dims, args.n_kernels);
  WSSS_CHECK(args.workspace.shape[0] > 0 && args.workspace.shape[1] >= bytes, "workspace must be [workers, >= ",
             bytes, "], got ", args.workspace.describe());
  check_disjoint({{args.out, "out"}, {args.workspace, "workspace"}}, {{unary, "unary"}, {args.image, "image"}});
  mean_field_cpu(args);
}

}  // namespace wsss::dense_crf
