#include "common/array_view.h"

#include <sstream>

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
  int64_t expected = 1;
  for (int d = ndim() - 1; d >= 0; --d) {
    if (shape[d] != 1 && strides[d] != expected) return false;
    expected *= shape[d];
  }
  return true;
}

std::string ArrayView::describe() const {
  std::ostringstream out;
  out << dtype_name(dtype) << "[";
  for (int d = 0; d < ndim(); ++d) out << (d ? ", " : "") << shape[d];
  out << "] on " << (is_cuda() ? "cuda:" + std::to_string(device_index) : std::string("cpu"));
  return out.str();
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
