#include "common/array_view.h"

#include <limits>
#include <sstream>
#include <utility>

namespace wsss {

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
    case DType::kFloat32: return "float32";
    case DType::kFloat64: return "float64";
    case DType::kInt32: return "int32";
    case DType::kInt64: return "int64";
    case DType::kUInt8: return "uint8";
    case DType::kBool: return "bool";
  }
  return "unknown";
}

int64_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kFloat16:
    case DType::kBFloat16: return 2;
    case DType::kFloat32:
    case DType::kInt32: return 4;
    case DType::kFloat64:
    case DType::kInt64: return 8;
    case DType::kUInt8:
    case DType::kBool: return 1;
  }
  return 0;
}

int64_t ArrayView::numel() const {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

bool ArrayView::is_contiguous() const {
  if (numel() == 0) return true;
  int64_t expected = 1;
  for (int d = ndim() - 1; d >= 0; --d) {
    if (shape[d] != 1 && strides[d] != expected) return false;
    expected *= shape[d];
  }
  return true;
}

namespace {

// [first, last] byte addresses the view can touch; only for numel() > 0.
std::pair<uintptr_t, uintptr_t> byte_extent(const ArrayView& v) {
  const int64_t item = dtype_size(v.dtype);
  int64_t low = 0, high = 0;  // element offsets of the extreme elements (check_view bounded them)
  for (int d = 0; d < v.ndim(); ++d) {
    const int64_t reach = (v.shape[d] - 1) * v.strides[d];
    (reach < 0 ? low : high) += reach;
  }
  const uintptr_t base = reinterpret_cast<uintptr_t>(v.data);
  return {base + static_cast<uintptr_t>(low * item), base + static_cast<uintptr_t>(high * item + item - 1)};
}

}  // namespace

bool ArrayView::overlaps(const ArrayView& other) const {
  if (data == nullptr || other.data == nullptr || numel() == 0 || other.numel() == 0) return false;
  if (device != other.device || device_index != other.device_index) return false;
  const auto [a0, a1] = byte_extent(*this);
  const auto [b0, b1] = byte_extent(other);
  return a0 <= b1 && b0 <= a1;
}

std::string ArrayView::describe() const {
  std::ostringstream out;
  out << dtype_name(dtype) << "[";
  for (int d = 0; d < ndim(); ++d) out << (d ? ", " : "") << shape[d];
  out << "] on " << (is_cuda() ? "cuda:" + std::to_string(device_index) : std::string("cpu"));
  return out.str();
}

void check_view(const ArrayView& v, const char* name) {
#if defined(WSSS_CUDA_EMULATED)
  // Its "CUDA" kernels run on host memory: a device pointer would crash them.
  WSSS_CHECK(!v.is_cuda(), name, ": a CUDA array, but this is the CUDA emulation build of wsss_ext (a test build): ",
             "its CUDA kernels run on CPU tensors under wsss_ext.testing.emulate_cuda(); reinstall without ",
             "WSSS_EXT_CUDA_EMULATE for GPUs");
#endif
  WSSS_CHECK(v.strides.size() == v.shape.size(), name, ": ", v.shape.size(), " sizes but ", v.strides.size(),
             " strides");
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  const int64_t item = dtype_size(v.dtype);
  int64_t elements = 1, reach = 0;
  bool empty = false;
  for (int d = 0; d < v.ndim(); ++d) {
    WSSS_CHECK(v.shape[d] >= 0, name, ": sizes must be >= 0, got ", v.shape[d], " in dimension ", d);
    empty = empty || v.shape[d] == 0;
  }
  if (empty) return;  // no memory is addressed
  for (int d = 0; d < v.ndim(); ++d) {
    WSSS_CHECK(elements <= kMax / v.shape[d], name, ": its sizes multiply past 2**63 elements");
    elements *= v.shape[d];
    const int64_t stride = v.strides[d] < 0 ? -v.strides[d] : v.strides[d];
    WSSS_CHECK(v.strides[d] != std::numeric_limits<int64_t>::min() &&
                   (v.shape[d] == 1 || stride <= (kMax / item - reach) / (v.shape[d] - 1)),
               name, ": its strides reach past 2**63 bytes");
    reach += (v.shape[d] - 1) * stride;
  }
  WSSS_CHECK(elements <= kMax / item, name, ": ", elements, " elements of ", item, " bytes exceed 2**63 bytes");
  WSSS_CHECK(v.data != nullptr, name, ": the data pointer is NULL but the array has ", elements, " elements");
}

void check_disjoint(const std::vector<Named>& written, const std::vector<Named>& read) {
  for (auto out = written.begin(); out != written.end(); ++out) {
    for (auto other = out + 1; other != written.end(); ++other)
      WSSS_CHECK(!out->view->overlaps(*other->view), out->name, " and ", other->name,
                 " share memory: outputs must not overlap each other");
    for (const Named& in : read)
      WSSS_CHECK(!out->view->overlaps(*in.view), out->name, " shares memory with ", in.name,
                 ": an output must not overlap the kernel's inputs (pass a separate buffer)");
  }
}

void check_ndim(const ArrayView& v, int ndim, const char* name) {
  WSSS_CHECK(v.ndim() == ndim, name, " must be ", ndim, "-D, got ", v.describe());
}

void check_dtype(const ArrayView& v, std::initializer_list<DType> allowed, const char* name) {
  for (DType d : allowed)
    if (v.dtype == d) return;
  std::string names;
  for (DType d : allowed) names += std::string(names.empty() ? "" : ", ") + dtype_name(d);
  WSSS_CHECK(false, name, " must have dtype ", names, ", got ", v.describe());
}

void check_contiguous(const ArrayView& v, const char* name) {
  WSSS_CHECK(v.is_contiguous(), name, " must be contiguous (row-major), got ", v.describe());
}

void check_writable(const ArrayView& v, const char* name) {
  WSSS_CHECK(!v.readonly, name, " is written to but its memory is read-only");
}

void check_shape(const ArrayView& v, std::initializer_list<int64_t> shape, const char* name) {
  bool same = v.ndim() == static_cast<int>(shape.size());
  int d = 0;
  for (int64_t s : shape) same = same && v.shape[d++] == s;
  std::ostringstream want;
  d = 0;
  for (int64_t s : shape) want << (d++ ? ", " : "") << s;
  WSSS_CHECK(same, name, " must have shape [", want.str(), "], got ", v.describe());
}

void check_same_device(const ArrayView& a, const char* a_name, const ArrayView& b, const char* b_name) {
  WSSS_CHECK(a.device == b.device && a.device_index == b.device_index, a_name, " and ", b_name,
             " must be on the same device, got ", a.describe(), " and ", b.describe());
}

void check_buffer(const ArrayView& buffer, const char* name, DType dtype, std::initializer_list<int64_t> shape,
                  const ArrayView& like, const char* like_name, bool written) {
  check_same_device(buffer, name, like, like_name);
  check_dtype(buffer, {dtype}, name);
  check_shape(buffer, shape, name);
  check_contiguous(buffer, name);
  if (written) check_writable(buffer, name);
}

void throw_no_cuda(const char* name) {
  throw std::invalid_argument(concat(name, " is a CUDA array but wsss_ext was built without CUDA"));
}

}  // namespace wsss
