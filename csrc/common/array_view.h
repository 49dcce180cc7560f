// A borrowed, typed, strided view of memory owned by someone else (a torch
// tensor, a numpy or cupy array). The C++ side never allocates outputs or
// workspace: Python does, and hands views of them down.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "common/errors.h"

namespace wsss {

enum class DType : int32_t {
  kFloat16 = 0,
  kBFloat16,
  kFloat32,
  kFloat64,
  kInt32,
  kInt64,
  kUInt8,
  kBool,
};

enum class DeviceType : int32_t { kCPU = 0, kCUDA = 1 };

const char* dtype_name(DType dtype);
int64_t dtype_size(DType dtype);

struct ArrayView {
  void* data = nullptr;
  DType dtype = DType::kFloat32;
  DeviceType device = DeviceType::kCPU;
  int device_index = -1;  // CUDA ordinal; -1 on the CPU
  bool readonly = false;
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;  // in elements, not bytes

  int ndim() const { return static_cast<int>(shape.size()); }
  int64_t numel() const;
  // Row-major (dimensions of size 1 may have any stride). A view without
  // elements is contiguous whatever its strides: it addresses no memory.
  bool is_contiguous() const;
  // Whether the memory this view can address shares a byte with other's
  // (false if either is empty or they are on different devices).
  bool overlaps(const ArrayView& other) const;
  bool is_cuda() const { return device == DeviceType::kCUDA; }
  std::string describe() const;  // "float32[4, 3] on cpu"

  template <class T>
  T* as() const { return static_cast<T*>(data); }
};

// Checks the bindings run on every view they build from a Python object:
// non-negative sizes whose element and byte counts fit int64, and a data
// pointer that is not NULL when there are elements to read.
void check_view(const ArrayView& v, const char* name);

// Checks every kernel runs on its arguments before touching memory. They
// throw std::invalid_argument naming the argument.
void check_ndim(const ArrayView& v, int ndim, const char* name);
void check_dtype(const ArrayView& v, std::initializer_list<DType> allowed, const char* name);
void check_contiguous(const ArrayView& v, const char* name);
void check_writable(const ArrayView& v, const char* name);
void check_shape(const ArrayView& v, std::initializer_list<int64_t> shape, const char* name);
void check_same_device(const ArrayView& a, const char* a_name, const ArrayView& b, const char* b_name);
// A buffer beside a kernel's main input `like`: on its device, of the given
// dtype and shape, contiguous, and writable if the kernel writes it.
void check_buffer(const ArrayView& buffer, const char* name, DType dtype, std::initializer_list<int64_t> shape,
                  const ArrayView& like, const char* like_name, bool written);
// A buffer and its name, for check_disjoint.
struct Named {
  Named(const ArrayView& v, const char* n) : view(&v), name(n) {}
  const ArrayView* view;
  const char* name;
};
// No buffer a kernel writes may share memory with another of its buffers
// (read or written): kernels read inputs while writing outputs, so any
// overlap, exact or partial, would give wrong results. Views without data
// (absent optional buffers) are skipped.
void check_disjoint(const std::vector<Named>& written, const std::vector<Named>& read);
// For the CPU-only build, when `name` is a CUDA array.
[[noreturn]] void throw_no_cuda(const char* name);

}  // namespace wsss
