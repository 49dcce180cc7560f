// The one pybind11 module, wsss_ext._C. Arrays arrive as any Python object
// that exposes its memory (torch tensor, __cuda_array_interface__ as cupy
// has, __array_interface__ as numpy has) and become ArrayViews here; the
// kernels below never see Python. No torch header is included.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "common/array_view.h"
#include "common/cuda_device.h"
#include "common/finite.h"
#include "common/idle_cpus.h"
#include "common/parallel.h"
#include "common/philox.h"
#include "correlation/correlation.h"
#include "dense_crf/dense_crf.h"
#include "fickle/fickle.h"
#include "pamr/pamr.h"
#include "propagation/propagation.h"
#include "random_walk/random_walk.h"
#include "sinkhorn/sinkhorn.h"
#if defined(WSSS_CUDA_EMULATED)
#include "common/cuda_emulation.h"
#include "common/emulation_selftest.h"
#endif

namespace py = pybind11;
using wsss::ArrayView;
using wsss::DeviceType;
using wsss::DType;

namespace {

// The most iterations or steps one call runs (Sinkhorn, PAMR, the walk): the Python layer's MAX_ITERATIONS.
constexpr int64_t kMaxIterations = 100000;

[[noreturn]] void type_error(const std::string& message) { throw py::type_error(message); }

DType dtype_from_torch(const std::string& name, const char* arg) {
  if (name == "torch.float32") return DType::kFloat32;
  if (name == "torch.float64") return DType::kFloat64;
  if (name == "torch.float16") return DType::kFloat16;
  if (name == "torch.bfloat16") return DType::kBFloat16;
  if (name == "torch.int32") return DType::kInt32;
  if (name == "torch.int64") return DType::kInt64;
  if (name == "torch.uint8") return DType::kUInt8;
  if (name == "torch.bool") return DType::kBool;
  type_error(std::string(arg) + ": unsupported dtype " + name);
}

// Array-interface type strings: "<f4", "|u1", ...
DType dtype_from_typestr(const std::string& typestr, const char* arg) {
  if (typestr.size() >= 3 && typestr[0] != '>') {
    const std::string kind = typestr.substr(1);
    if (kind == "f4") return DType::kFloat32;
    if (kind == "f8") return DType::kFloat64;
    if (kind == "f2") return DType::kFloat16;
    if (kind == "i4") return DType::kInt32;
    if (kind == "i8") return DType::kInt64;
    if (kind == "u1") return DType::kUInt8;
    if (kind == "b1") return DType::kBool;
  }
  type_error(std::string(arg) + ": unsupported array type string '" + typestr + "'");
}

// The general path for a torch tensor: every property read by name and
// formatted as torch prints it, so that anything unusual (a sparse layout, an
// 'mps' or 'meta' tensor, a dtype the kernels do not take) gets its message.
ArrayView view_from_torch_slow(py::handle tensor, const char* arg) {
  const std::string layout = py::str(tensor.attr("layout"));
  if (layout != "torch.strided")
    type_error(std::string(arg) + ": expected a dense (strided) tensor, got layout " + layout);
  ArrayView view;
  view.dtype = dtype_from_torch(py::str(tensor.attr("dtype")), arg);
  const py::object device = tensor.attr("device");
  const std::string device_type = py::str(device.attr("type"));
  if (device_type == "cuda") {
    view.device = DeviceType::kCUDA;
    view.device_index = device.attr("index").cast<int>();
  } else if (device_type != "cpu") {
    throw std::invalid_argument(std::string(arg) + ": tensors on '" + device_type + "' are not supported (cpu or cuda)");
  }
  view.data = reinterpret_cast<void*>(tensor.attr("data_ptr")().cast<uintptr_t>());
  view.shape = tensor.attr("shape").cast<std::vector<int64_t>>();
  view.strides = tensor.attr("stride")().cast<std::vector<int64_t>>();
  wsss::check_view(view, arg);
  return view;
}

// torch's dtype and layout objects are singletons, so the common case (a
// strided CPU or CUDA tensor of a supported dtype) compares pointers instead
// of formatting strings: that took about 2.4 us a tensor, the largest part of
// a small op's call (benchmarks/bench_dispatch.py). Built once, from the
// first torch tensor seen, under the GIL; never freed (it must outlive every
// call, including those made while the interpreter shuts down).
struct TorchObjects {
  PyTypeObject* tensor_type = nullptr;
  PyObject* strided = nullptr;
  std::vector<std::pair<PyObject*, DType>> dtypes;
  PyObject *layout_name, *dtype_name, *is_cuda_name, *is_cpu_name, *get_device_name, *data_ptr_name, *shape_name,
      *stride_name;
};

const TorchObjects* torch_objects_cache = nullptr;

const TorchObjects* torch_objects() {
  if (torch_objects_cache != nullptr) return torch_objects_cache;
  const py::module_ torch = py::module_::import("torch");
  auto* objects = new TorchObjects;
  objects->tensor_type = reinterpret_cast<PyTypeObject*>(py::object(torch.attr("Tensor")).release().ptr());
  objects->strided = py::object(torch.attr("strided")).release().ptr();
  for (const auto& [name, dtype] : std::initializer_list<std::pair<const char*, DType>>{
           {"float32", DType::kFloat32}, {"float64", DType::kFloat64}, {"float16", DType::kFloat16},
           {"bfloat16", DType::kBFloat16}, {"int32", DType::kInt32}, {"int64", DType::kInt64},
           {"uint8", DType::kUInt8}, {"bool", DType::kBool}})
    objects->dtypes.emplace_back(py::object(torch.attr(name)).release().ptr(), dtype);
  for (auto [slot, name] : std::initializer_list<std::pair<PyObject**, const char*>>{
           {&objects->layout_name, "layout"}, {&objects->dtype_name, "dtype"}, {&objects->is_cuda_name, "is_cuda"},
           {&objects->is_cpu_name, "is_cpu"}, {&objects->get_device_name, "get_device"},
           {&objects->data_ptr_name, "data_ptr"}, {&objects->shape_name, "shape"}, {&objects->stride_name, "stride"}})
    *slot = PyUnicode_InternFromString(name);
  torch_objects_cache = objects;
  return objects;
}

// A tuple of Python ints (torch.Size, stride()) -> int64s; false if it is not one.
bool int64_tuple(PyObject* tuple, std::vector<int64_t>& out) {
  if (tuple == nullptr || !PyTuple_Check(tuple)) return false;
  const Py_ssize_t size = PyTuple_GET_SIZE(tuple);
  out.resize(static_cast<size_t>(size));
  for (Py_ssize_t i = 0; i < size; ++i) {
    int overflow = 0;
    out[static_cast<size_t>(i)] = PyLong_AsLongLongAndOverflow(PyTuple_GET_ITEM(tuple, i), &overflow);
    if (overflow != 0 || PyErr_Occurred()) {
      PyErr_Clear();
      return false;
    }
  }
  return true;
}

ArrayView view_from_torch(py::handle tensor, const char* arg) {
  const TorchObjects& t = *torch_objects();
  const auto get = [&](PyObject* name) { return py::reinterpret_steal<py::object>(PyObject_GetAttr(tensor.ptr(), name)); };
  const auto call = [&](PyObject* name) {
    return py::reinterpret_steal<py::object>(PyObject_CallMethodNoArgs(tensor.ptr(), name));
  };
  ArrayView view;
  const py::object layout = get(t.layout_name), dtype = get(t.dtype_name);
  bool known_dtype = false;
  for (const auto& [object, code] : t.dtypes)
    if (dtype.ptr() == object) {
      view.dtype = code;
      known_dtype = true;
    }
  const py::object is_cuda = get(t.is_cuda_name), is_cpu = get(t.is_cpu_name);
  if (PyErr_Occurred() || layout.ptr() != t.strided || !known_dtype || (is_cuda.ptr() != Py_True && is_cpu.ptr() != Py_True)) {
    PyErr_Clear();
    return view_from_torch_slow(tensor, arg);  // an error to report, or an unusual tensor
  }
  if (is_cuda.ptr() == Py_True) {
    view.device = DeviceType::kCUDA;
    view.device_index = call(t.get_device_name).cast<int>();
  }
  const py::object data_ptr = call(t.data_ptr_name), shape = get(t.shape_name), strides = call(t.stride_name);
  if (data_ptr.ptr() == nullptr || !int64_tuple(shape.ptr(), view.shape) || !int64_tuple(strides.ptr(), view.strides)) {
    PyErr_Clear();
    return view_from_torch_slow(tensor, arg);
  }
  view.data = reinterpret_cast<void*>(data_ptr.cast<uintptr_t>());
  wsss::check_view(view, arg);
  return view;
}

// The sizes or strides of an array interface: a sequence of integers that fit int64.
std::vector<int64_t> int64_list(py::handle values, const char* arg, const char* what) {
  try {
    return values.cast<std::vector<int64_t>>();
  } catch (const py::cast_error&) {
    type_error(std::string(arg) + ": the array interface's " + what + " must be a tuple of integers within int64, got " +
               std::string(py::repr(values)));
  }
}

ArrayView view_from_interface(const py::dict& interface, DeviceType device, const char* arg) {
  for (const char* key : {"typestr", "data", "shape"})
    if (!interface.contains(key))
      type_error(std::string(arg) + ": the array interface has no '" + key + "' entry");
  ArrayView view;
  view.device = device;
  view.dtype = dtype_from_typestr(py::str(interface["typestr"]), arg);
  const py::object data = interface["data"];
  if (!py::isinstance<py::tuple>(data) || py::len(data) != 2)
    type_error(std::string(arg) + ": the array interface's 'data' must be a (pointer, read-only) tuple, got " +
               std::string(py::repr(data)));
  const py::tuple pointer = data.cast<py::tuple>();
  try {
    view.data = reinterpret_cast<void*>(pointer[0].cast<uintptr_t>());
  } catch (const py::cast_error&) {
    type_error(std::string(arg) + ": the array interface's data pointer must be a non-negative integer, got " +
               std::string(py::repr(pointer[0])));
  }
  view.readonly = py::bool_(pointer[1]);
  view.shape = int64_list(interface["shape"], arg, "shape");
  const int64_t itemsize = wsss::dtype_size(view.dtype);
  if (!interface.contains("strides") || interface["strides"].is_none()) {
    // Row-major strides, saturated at int64's max (check_view then reports the size).
    view.strides.assign(view.shape.size(), 1);
    constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
    for (int d = static_cast<int>(view.shape.size()) - 2; d >= 0; --d) {
      const int64_t size = view.shape[d + 1] > 0 ? view.shape[d + 1] : 1;
      view.strides[d] = view.strides[d + 1] > kMax / size ? kMax : view.strides[d + 1] * size;
    }
  } else {
    for (int64_t byte_stride : int64_list(interface["strides"], arg, "strides")) {
      if (byte_stride % itemsize != 0)
        throw std::invalid_argument(std::string(arg) + ": strides must be multiples of the item size");
      view.strides.push_back(byte_stride / itemsize);
    }
  }
  wsss::check_view(view, arg);
  if (device == DeviceType::kCUDA && view.data != nullptr)
    view.device_index = wsss::cuda_pointer_device(reinterpret_cast<uintptr_t>(view.data));
  return view;
}

// Any array-like object -> ArrayView, naming the argument in every error.
ArrayView to_view(py::handle obj, const char* arg) {
  if (torch_objects_cache != nullptr && PyObject_TypeCheck(obj.ptr(), torch_objects_cache->tensor_type))
    return view_from_torch(obj, arg);
  if (py::isinstance<ArrayView>(obj)) return obj.cast<ArrayView>();
  const std::string module = py::str(py::type::handle_of(obj).attr("__module__"));
  if (module.rfind("torch", 0) == 0 && py::hasattr(obj, "data_ptr")) return view_from_torch(obj, arg);
  if (py::hasattr(obj, "__cuda_array_interface__"))
    return view_from_interface(obj.attr("__cuda_array_interface__"), DeviceType::kCUDA, arg);
  if (py::hasattr(obj, "__array_interface__"))
    return view_from_interface(obj.attr("__array_interface__"), DeviceType::kCPU, arg);
  type_error(std::string(arg) + ": expected a torch tensor, numpy array or cupy array, got " +
             std::string(py::str(py::type::handle_of(obj).attr("__name__"))));
}

// Scalar arguments arrive as Python objects and are converted here, so that a
// wrong type or an out-of-range value (2**31 for an int, 2**70, a str) is a
// TypeError / ValueError naming the argument, not pybind's "incompatible
// function arguments" listing the whole signature.
std::string type_name(py::handle value) { return py::str(py::type::handle_of(value).attr("__name__")); }

bool is_integer(py::handle value) {
  return !py::isinstance<py::bool_>(value) && (py::isinstance<py::int_>(value) || py::hasattr(value, "__index__")) &&
         !py::isinstance<py::float_>(value);
}

int64_t int_arg(py::handle value, const char* name, int64_t lo = std::numeric_limits<int64_t>::min(),
                int64_t hi = std::numeric_limits<int64_t>::max()) {
  if (!is_integer(value)) type_error(std::string(name) + " must be an int, got " + type_name(value));
  const py::int_ number = py::reinterpret_steal<py::int_>(PyNumber_Index(value.ptr()));
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(number.ptr(), &overflow);
  if (overflow != 0 || v < lo || v > hi)
    throw std::invalid_argument(wsss::concat(name, " must be in [", lo, ", ", hi, "], got ",
                                             std::string(py::str(number))));
  return v;
}

uint64_t uint64_arg(py::handle value, const char* name) {
  if (!is_integer(value)) type_error(std::string(name) + " must be an int, got " + type_name(value));
  const py::int_ number = py::reinterpret_steal<py::int_>(PyNumber_Index(value.ptr()));
  const unsigned long long v = PyLong_AsUnsignedLongLong(number.ptr());
  if (PyErr_Occurred()) {
    PyErr_Clear();
    throw std::invalid_argument(wsss::concat(name, " must be in [0, 2**64), got ", std::string(py::str(number))));
  }
  return v;
}

int int32_arg(py::handle value, const char* name) {
  return static_cast<int>(int_arg(value, name, std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max()));
}

uintptr_t stream_arg(py::handle value) { return static_cast<uintptr_t>(uint64_arg(value, "stream")); }

double real_arg(py::handle value, const char* name) {
  if (py::isinstance<py::bool_>(value) || !(py::isinstance<py::float_>(value) || is_integer(value) ||
                                            py::hasattr(value, "__float__")))
    type_error(std::string(name) + " must be a real number, got " + type_name(value));
  const double v = PyFloat_AsDouble(value.ptr());
  if (PyErr_Occurred()) {
    PyErr_Clear();
    throw std::invalid_argument(std::string(name) + " does not fit a float64: " + std::string(py::repr(value)));
  }
  return v;
}

bool bool_arg(py::handle value, const char* name) {
  if (!py::isinstance<py::bool_>(value) && type_name(value) != "bool_")
    type_error(std::string(name) + " must be a bool, got " + type_name(value));
  return py::cast<bool>(value);
}

std::vector<int64_t> int_list_arg(py::handle value, const char* name) {
  if (py::isinstance<py::str>(value) || !py::isinstance<py::sequence>(value))
    type_error(std::string(name) + " must be a sequence of ints, got " + type_name(value));
  std::vector<int64_t> out;
  for (py::handle item : value.cast<py::sequence>()) out.push_back(int_arg(item, name));
  return out;
}

std::string str_arg(py::handle value, const char* name) {
  if (!py::isinstance<py::str>(value)) type_error(std::string(name) + " must be a str, got " + type_name(value));
  return value.cast<std::string>();
}

// A lattice travels from Python as a dict of its buffers (ops/dense_crf.py
// owns them) plus its geometry; missing or None buffers stay empty views.
wsss::dense_crf::Lattice lattice_from_dict(const py::dict& buffers) {
  using wsss::dense_crf::Lattice;
  Lattice lattice;
  lattice.dims = buffers["dims"].cast<int>();
  lattice.images = buffers["images"].cast<int64_t>();
  lattice.height = buffers["height"].cast<int64_t>();
  lattice.width = buffers["width"].cast<int64_t>();
  static const std::pair<const char*, ArrayView Lattice::*> kFields[] = {
      {"simplex", &Lattice::simplex},
      {"weights", &Lattice::weights},
      {"entry_rep", &Lattice::entry_rep},
      {"entry_vertex", &Lattice::entry_vertex},
      {"slots", &Lattice::slots},
      {"vertex_entry", &Lattice::vertex_entry},
      {"counter", &Lattice::counter},
      {"neighbours", &Lattice::neighbours},
      {"splat_start", &Lattice::splat_start},
      {"splat_pixels", &Lattice::splat_pixels},
      {"splat_weights", &Lattice::splat_weights},
      {"norm", &Lattice::norm},
      {"scratch", &Lattice::scratch},
  };
  for (const auto& [name, field] : kFields)
    if (buffers.contains(name) && !buffers[name].is_none()) lattice.*field = to_view(buffers[name], name);
  return lattice;
}

// None -> an empty view (data null), for optional outputs.
ArrayView optional_view(py::handle obj, const char* arg) { return obj.is_none() ? ArrayView{} : to_view(obj, arg); }

// (kernel, patch, stride, padding, dilation, dilation_patch), each as (h, w).
wsss::correlation::Geometry geometry_from(py::handle value) {
  if (py::isinstance<py::str>(value) || !py::isinstance<py::sequence>(value) || py::len(value) != 6)
    type_error("sizes must be 6 (h, w) pairs: kernel, patch, stride, padding, dilation, dilation_patch");
  static const char* kNames[6] = {"kernel_size", "patch_size", "stride", "padding", "dilation", "dilation_patch"};
  std::array<std::array<int, 2>, 6> sizes{};
  const py::sequence pairs = value.cast<py::sequence>();
  for (int i = 0; i < 6; ++i) {
    const std::vector<int64_t> pair = int_list_arg(pairs[i], kNames[i]);
    if (pair.size() != 2) type_error(std::string(kNames[i]) + " must be an (h, w) pair");
    for (int j = 0; j < 2; ++j) sizes[i][j] = int32_arg(py::int_(pair[j]), kNames[i]);
  }
  wsss::correlation::Geometry g;
  g.kernel_h = sizes[0][0];
  g.kernel_w = sizes[0][1];
  g.patch_h = sizes[1][0];
  g.patch_w = sizes[1][1];
  g.stride_h = sizes[2][0];
  g.stride_w = sizes[2][1];
  g.pad_h = sizes[3][0];
  g.pad_w = sizes[3][1];
  g.dilation_h = sizes[4][0];
  g.dilation_w = sizes[4][1];
  g.dilation_patch_h = sizes[5][0];
  g.dilation_patch_w = sizes[5][1];
  return g;
}

wsss::propagation::Problem problem_from(py::handle radius, py::handle inv_temperature, py::handle topk,
                                        py::handle border_value) {
  using wsss::propagation::Border;
  wsss::propagation::Problem problem;
  problem.radius = int32_arg(radius, "radius");
  problem.inv_temperature = real_arg(inv_temperature, "inv_temperature");
  problem.topk = int32_arg(topk, "topk");
  const std::string border = str_arg(border_value, "border");
  WSSS_CHECK(border == "zero" || border == "exclude", "border must be 'zero' or 'exclude', got '", border, "'");
  problem.border = border == "zero" ? Border::kZero : Border::kExclude;
  return problem;
}

py::dict build_info() {
  py::dict info;
  info["version"] = WSSS_VERSION;
  info["cuda"] = wsss::cuda_compiled();
  info["cuda_runtime_version"] = wsss::cuda_runtime_version();
#if defined(WSSS_CUDA_ARCHS)
  info["cuda_architectures"] = std::string(WSSS_CUDA_ARCHS);
#else
  info["cuda_architectures"] = std::string();
#endif
  info["cuda_device_count"] = wsss::cuda_device_count();
#if defined(WSSS_CUDA_EMULATED)
  info["cuda_emulated"] = true;
#else
  info["cuda_emulated"] = false;
#endif
#if defined(WSSS_SANITIZE)
  info["sanitize"] = std::string(WSSS_SANITIZE);
#else
  info["sanitize"] = std::string();
#endif
#if defined(WSSS_WITH_OPENMP)
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
  info["omp_max_threads"] = wsss::cpu_max_threads();
#if defined(__VERSION__)
  info["compiler"] = std::string(__VERSION__);
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "wsss_ext compiled kernels. Every function takes arrays (torch, numpy or cupy), writes its outputs "
            "into arrays the caller allocated, and returns nothing. wsss_ext.ops is the friendly front end.";

  py::class_<ArrayView>(m, "ArrayView", "A borrowed view of an array's memory, as the kernels see it.")
      .def(py::init([](py::handle obj) { return to_view(obj, "array"); }), py::arg("array"))
      .def_property_readonly("dtype", [](const ArrayView& v) { return wsss::dtype_name(v.dtype); })
      .def_property_readonly("device", [](const ArrayView& v) { return v.is_cuda() ? "cuda" : "cpu"; })
      .def_property_readonly("device_index", [](const ArrayView& v) { return v.device_index; })
      .def_property_readonly("shape", [](const ArrayView& v) { return v.shape; })
      .def_property_readonly("strides", [](const ArrayView& v) { return v.strides; })
      .def_property_readonly("readonly", [](const ArrayView& v) { return v.readonly; })
      .def_property_readonly("data", [](const ArrayView& v) { return reinterpret_cast<uintptr_t>(v.data); })
      .def_property_readonly("is_contiguous", &ArrayView::is_contiguous)
      .def("__repr__", [](const ArrayView& v) { return "ArrayView(" + v.describe() + ")"; });

  m.def("build_info", &build_info, "What this build of the extension contains.");

  // The CUDA emulation switch (wsss_ext.testing.emulate_cuda() drives it).
  m.def(
      "cuda_emulation_enabled",
      []() {
#if defined(WSSS_CUDA_EMULATED)
        return wsss::cuda_emulation_enabled();
#else
        return false;
#endif
      },
      "Whether CPU arrays run the CUDA launchers (always False outside the emulation build).");
#if defined(WSSS_CUDA_EMULATED)
  m.def(
      "set_cuda_emulation",
      [](bool enabled, int fault) {
        WSSS_CHECK(fault == 0 || fault == 1, "fault must be 0 (none) or 1 (shuffle_wrong_lane), got ", fault);
        wsss::emu::set_fault(static_cast<wsss::emu::Fault>(fault));
        wsss::set_cuda_emulation(enabled);
      },
      py::arg("enabled"), py::arg("fault") = 0,
      "Route CPU arrays to the CUDA launchers (and set the runtime's injected fault: 0 none, 1 wrong shuffle lane).");
  namespace selftest = wsss::emulation_selftest;
  m.def(
      "emulation_block_sum",
      [](py::handle values, py::handle out, bool planted) {
        selftest::block_sum(to_view(values, "values"), to_view(out, "out"), planted);
      },
      py::arg("values"), py::arg("out"), py::arg("planted_off_by_one") = false);
  m.def(
      "emulation_barrier_after_exits",
      [](py::handle values, py::handle out) {
        selftest::barrier_after_exits(to_view(values, "values"), to_view(out, "out"));
      },
      py::arg("values"), py::arg("out"));
  m.def(
      "emulation_warp_op",
      [](py::handle values, py::handle exits, py::handle out, const std::string& op, int operand, int width) {
        selftest::warp_op(to_view(values, "values"), to_view(exits, "exits"), to_view(out, "out"), op, operand, width);
      },
      py::arg("values"), py::arg("exits"), py::arg("out"), py::arg("op"), py::arg("operand"), py::arg("width"));
  m.def(
      "emulation_indices",
      [](py::handle out, std::array<unsigned int, 3> grid, std::array<unsigned int, 3> block) {
        selftest::indices(to_view(out, "out"), grid[0], grid[1], grid[2], block[0], block[1], block[2]);
      },
      py::arg("out"), py::arg("grid"), py::arg("block"));
  m.def(
      "emulation_atomics",
      [](py::handle ints, py::handle floats, py::handle u64, int blocks, int threads) {
        selftest::atomics(to_view(ints, "ints"), to_view(floats, "floats"), to_view(u64, "u64"), blocks, threads);
      },
      py::arg("ints"), py::arg("floats"), py::arg("u64"), py::arg("blocks"), py::arg("threads"));
  m.def(
      "emulation_launch",
      [](std::array<unsigned int, 3> grid, std::array<unsigned int, 3> block, int64_t dynamic_bytes,
         bool static_shared) {
        selftest::launch(grid[0], grid[1], grid[2], block[0], block[1], block[2], dynamic_bytes, static_shared);
      },
      py::arg("grid"), py::arg("block"), py::arg("dynamic_shared_bytes") = 0, py::arg("static_shared") = false);
  m.def("emulation_deadlock", &selftest::deadlock);
  m.def("emulation_launch_count", &wsss::emu::launch_count, "Kernel launches the emulated runtime has seen.");
#endif

  m.def(
      "philox4x32_10",
      [](py::handle counter_value, py::handle key_value) {
        std::array<uint32_t, 4> counter{};
        std::array<uint32_t, 2> key{};
        const std::vector<int64_t> c = int_list_arg(counter_value, "counter"), k = int_list_arg(key_value, "key");
        WSSS_CHECK(c.size() == 4 && k.size() == 2, "counter must hold 4 words and key 2, got ", c.size(), " and ",
                   k.size());
        for (int i = 0; i < 4; ++i) counter[i] = static_cast<uint32_t>(int_arg(py::int_(c[i]), "counter", 0, UINT32_MAX));
        for (int i = 0; i < 2; ++i) key[i] = static_cast<uint32_t>(int_arg(py::int_(k[i]), "key", 0, UINT32_MAX));
        const wsss::Philox4x32 out =
            wsss::philox4x32_10(wsss::Philox4x32{{counter[0], counter[1], counter[2], counter[3]}}, key[0], key[1]);
        return std::array<uint32_t, 4>{out.v[0], out.v[1], out.v[2], out.v[3]};
      },
      py::arg("counter"), py::arg("key"),
      "The counter-based generator every random kernel draws from: four 32-bit words for (counter, key).");

  m.def(
      "all_finite",
      [](py::handle values) {
        const ArrayView view = to_view(values, "values");
        py::gil_scoped_release no_gil;
        return wsss::all_finite_cpu(view);
      },
      py::arg("values"),
      "Whether every element of a CPU array is finite (no NaN, no inf); integer arrays always are. Any strides.");

  m.def(
      "max_abs",
      [](py::handle values) {
        const ArrayView view = to_view(values, "values");
        py::gil_scoped_release no_gil;
        return wsss::max_abs_cpu(view);
      },
      py::arg("values"),
      "The largest |element| of a float32 / float64 CPU array (0 if empty), or inf if it holds a NaN or inf. Any "
      "strides.");

  m.def(
      "sinkhorn_num_chunks",
      [](py::handle n_samples, py::handle cuda) {
        return wsss::sinkhorn::num_chunks(int_arg(n_samples, "n_samples", 0), bool_arg(cuda, "cuda"));
      },
      py::arg("n_samples"), py::arg("cuda"),
        "Rows of the [2, chunks, K] workspace sinkhorn_step needs.");

  m.def(
      "sinkhorn_step",
      [](py::handle scores, py::handle f, py::handle g, py::handle partials, py::handle col_max,
         py::handle col_sumexp, py::handle inv_eps, py::handle log_n, py::handle update_g, py::handle stream) {
        const wsss::sinkhorn::StepArgs args{to_view(scores, "scores"),        to_view(f, "f"),
                                            to_view(g, "g"),                  to_view(partials, "partials"),
                                            to_view(col_max, "col_max"),      to_view(col_sumexp, "col_sumexp"),
                                            real_arg(inv_eps, "inv_eps"),     real_arg(log_n, "log_n"),
                                            bool_arg(update_g, "update_g")};
        const uintptr_t s = stream_arg(stream);
        py::gil_scoped_release no_gil;
        wsss::sinkhorn::step(args, s);
      },
      py::arg("scores"), py::arg("f"), py::arg("g"), py::arg("partials"), py::arg("col_max"), py::arg("col_sumexp"),
      py::arg("inv_eps"), py::arg("log_n"), py::arg("update_g"), py::arg("stream") = 0,
      "Log-domain Sinkhorn step on scores [N, K]: if update_g, g[i] = -log_n - LSE_k(scores/eps + f); then "
      "col_max, col_sumexp = the column log-sum-exp statistics of scores/eps + g.");

  m.def(
      "sinkhorn_solve_workspace",
      [](py::handle n_samples, py::handle k_count) {
        return wsss::sinkhorn::solve_workspace_elements(int_arg(n_samples, "n_samples", 0, int64_t(1) << 40),
                                                        int_arg(k_count, "k_count", 0, int64_t(1) << 40));
      },
      py::arg("n_samples"), py::arg("k_count"), "Elements of the 1-D workspace sinkhorn_solve needs.");

  m.def(
      "sinkhorn_solve",
      [](py::handle scores, py::handle codes, py::handle workspace, py::handle inv_eps, py::handle n_iters) {
        const wsss::sinkhorn::SolveArgs args{to_view(scores, "scores"), to_view(codes, "codes"),
                                             to_view(workspace, "workspace"), real_arg(inv_eps, "inv_eps"),
                                             int_arg(n_iters, "n_iters", 0, kMaxIterations)};
        py::gil_scoped_release no_gil;
        return wsss::sinkhorn::solve(args);
      },
      py::arg("scores"), py::arg("codes"), py::arg("workspace"), py::arg("inv_eps"), py::arg("n_iters"),
      "The fixed-iteration Sinkhorn solve of one process on the CPU, in one call: codes[i, k] as sinkhorn_codes "
      "gives after n_iters steps. Returns whether the first column statistics (the codes if n_iters = 0) are "
      "finite.");

  m.def(
      "sinkhorn_codes",
      [](py::handle scores, py::handle f, py::handle codes, py::handle inv_eps, py::handle stream) {
        const wsss::sinkhorn::CodesArgs args{to_view(scores, "scores"), to_view(f, "f"), to_view(codes, "codes"),
                                             real_arg(inv_eps, "inv_eps")};
        const uintptr_t s = stream_arg(stream);
        py::gil_scoped_release no_gil;
        wsss::sinkhorn::codes(args, s);
      },
      py::arg("scores"), py::arg("f"), py::arg("codes"), py::arg("inv_eps"), py::arg("stream") = 0,
      "codes[i, k] = softmax_k(scores[i, k] / eps + f[k]).");

  m.def(
      "dense_crf_build_vertices",
      [](py::dict lattice, py::handle image, py::handle sxy, py::handle srgb, py::handle stream) {
        auto lat = lattice_from_dict(lattice);
        const ArrayView image_view = to_view(image, "image");
        const double sxy_value = real_arg(sxy, "sxy"), srgb_value = real_arg(srgb, "srgb");
        const uintptr_t s = stream_arg(stream);
        py::gil_scoped_release no_gil;
        return wsss::dense_crf::build_vertices(lat, image_view, sxy_value, srgb_value, s);
      },
      py::arg("lattice"), py::arg("image"), py::arg("sxy"), py::arg("srgb"), py::arg("stream") = 0,
      "Embeds every pixel of image [B, 3, H, W] uint8 in the lattice (dims 2: x, y over sxy; 5: also r, g, b "
      "over srgb), merges equal corners and returns the vertex count M (synchronises the stream on CUDA).");

  m.def(
      "dense_crf_scratch_bytes",
      [](py::handle vertices, py::handle entries, py::handle cuda) {
        return wsss::dense_crf::scratch_bytes(int_arg(vertices, "vertices", 0), int_arg(entries, "entries", 0),
                                              bool_arg(cuda, "cuda"));
      },
      py::arg("vertices"), py::arg("entries"),
        py::arg("cuda"), "Bytes of the lattice's `scratch` buffer dense_crf_link needs.");

  m.def(
      "dense_crf_link",
      [](py::dict lattice, py::handle vertices, py::handle values_a, py::handle values_b, py::handle stream) {
        const auto lat = lattice_from_dict(lattice);
        const ArrayView a = to_view(values_a, "values_a"), b = to_view(values_b, "values_b");
        const int64_t m = int_arg(vertices, "vertices");
        const uintptr_t s = stream_arg(stream);
        py::gil_scoped_release no_gil;
        wsss::dense_crf::link(lat, m, a, b, s);
      },
      py::arg("lattice"), py::arg("vertices"), py::arg("values_a"), py::arg("values_b"), py::arg("stream") = 0,
      "Blur neighbours, splat lists and the symmetric normalisation of a built lattice.");

  m.def(
      "dense_crf_filter",
      [](py::dict lattice, py::handle vertices, py::handle q, py::handle out, py::handle coefficient,
         py::handle accumulate, py::handle values_a, py::handle values_b, py::handle stream) {
        const auto lat = lattice_from_dict(lattice);
        const ArrayView q_view = to_view(q, "q"), out_view = to_view(out, "out");
        const ArrayView a = to_view(values_a, "values_a"), b = to_view(values_b, "values_b");
        const int64_t m = int_arg(vertices, "vertices");
        const double c = real_arg(coefficient, "coefficient");
        const bool add = bool_arg(accumulate, "accumulate");
        const uintptr_t s = stream_arg(stream);
        py::gil_scoped_release no_gil;
        wsss::dense_crf::filter(lat, m, q_view, out_view, c, add, a, b, s);
      },
      py::arg("lattice"), py::arg("vertices"), py::arg("q"), py::arg("out"), py::arg("coefficient"),
      py::arg("accumulate"), py::arg("values_a"), py::arg("values_b"), py::arg("stream") = 0,
      "out (+)= coefficient * D^-1/2 K D^-1/2 q, q and out pixel-major rows [B*H*W, width] float32.");

  m.def(
      "dense_crf_softmax",
      [](py::handle unary, py::handle pairwise, py::handle q, py::handle q_out, py::handle stream) {
        const ArrayView u = to_view(unary, "unary"), pw = optional_view(pairwise, "pairwise");
        const ArrayView q_view = to_view(q, "q"), out = optional_view(q_out, "q_out");
        const uintptr_t s = stream_arg(stream);
        py::gil_scoped_release no_gil;
        wsss::dense_crf::softmax(u, pw, q_view, out, s);
      },
      py::arg("unary"), py::arg("pairwise"), py::arg("q"), py::arg("q_out"), py::arg("stream") = 0,
      "q = softmax(-unary + pairwise) per pixel (pairwise None: softmax(-unary)); unary [B, L, H, W]; q and "
      "pairwise pixel-major rows [B*H*W, width >= L], lanes past L zeroed; q_out, if given, receives q as "
      "[B, L, H, W].");

  m.def(
      "dense_crf_workspace_bytes",
      [](py::handle pixels_value, py::handle n_labels_value, py::handle dims_value) {
        const int64_t pixels = int_arg(pixels_value, "pixels", 0), n_labels = int_arg(n_labels_value, "n_labels", 0);
        std::vector<int> dims;
        for (int64_t d : int_list_arg(dims_value, "dims")) dims.push_back(static_cast<int>(int_arg(py::int_(d), "dims", 0, 8)));
        WSSS_CHECK(dims.size() <= static_cast<size_t>(wsss::dense_crf::kMaxKernels), "at most ",
                   wsss::dense_crf::kMaxKernels, " kernels, got ", dims.size());
        return wsss::dense_crf::mean_field_workspace_bytes(pixels, n_labels, dims.data(),
                                                           static_cast<int>(dims.size()));
      },
      py::arg("pixels"), py::arg("n_labels"), py::arg("dims"),
      "Bytes of one worker's row of the dense_crf_mean_field workspace.");

  m.def(
      "dense_crf_mean_field",
      [](py::handle unary, py::handle image, py::handle out, py::handle workspace, py::handle n_iters,
         py::handle kernels, py::handle identity_weight) {
        using wsss::dense_crf::kMaxKernels;
        if (py::isinstance<py::str>(kernels) || !py::isinstance<py::sequence>(kernels))
          type_error("kernels must be a sequence of (dims, sxy, srgb, weight) tuples, got " + type_name(kernels));
        const py::sequence kernel_list = kernels.cast<py::sequence>();
        WSSS_CHECK(py::len(kernel_list) <= static_cast<size_t>(kMaxKernels), "at most ", kMaxKernels,
                   " kernels, got ", py::len(kernel_list));
        wsss::dense_crf::MeanFieldArgs args;
        args.unary = to_view(unary, "unary");
        args.image = to_view(image, "image");
        args.out = to_view(out, "out");
        args.workspace = to_view(workspace, "workspace");
        args.n_iters = int32_arg(n_iters, "n_iters");
        args.n_kernels = static_cast<int>(py::len(kernel_list));
        for (int k = 0; k < args.n_kernels; ++k) {
          const py::handle item = kernel_list[k];
          if (!py::isinstance<py::sequence>(item) || py::len(item) != 4)
            type_error("kernels[] must be (dims, sxy, srgb, weight) tuples");
          const py::sequence fields = item.cast<py::sequence>();
          auto& kernel = args.kernels[k];
          kernel.dims = int32_arg(fields[0], "kernels[].dims");
          kernel.sxy = real_arg(fields[1], "kernels[].sxy");
          kernel.srgb = real_arg(fields[2], "kernels[].srgb");
          kernel.weight = real_arg(fields[3], "kernels[].weight");
        }
        args.identity_weight = real_arg(identity_weight, "identity_weight");
        py::gil_scoped_release no_gil;
        wsss::dense_crf::mean_field(args);
      },
      py::arg("unary"), py::arg("image"), py::arg("out"), py::arg("workspace"), py::arg("n_iters"),
      py::arg("kernels"), py::arg("identity_weight"),
      "The whole mean field on the CPU, each thread taking whole images: unary [B, L, H, W], image [B, 3, H, W] "
      "uint8, out [B, L, H, W] float32, workspace uint8 [workers, dense_crf_workspace_bytes(H*W, L, dims)]; "
      "kernels [(dims, sxy, srgb, weight)]; identity_weight * Q is added to the pairwise term.");

  m.def("cpu_max_threads", &wsss::cpu_max_threads, "OpenMP's default thread count (1 without OpenMP).");
  m.def("set_cpu_threads", &wsss::set_cpu_threads, py::arg("threads"),
        "Threads the calling thread's next CPU kernels may use (0: OpenMP's default); ops pass "
        "torch.get_num_threads().");
  m.def("cpu_threads", &wsss::cpu_threads,
        "Threads the calling thread's CPU kernels use: the count last set, else OpenMP's default.");
  m.def("idle_cpus", &wsss::idle_cpus,
        "CPUs other processes leave idle now (re-read at most every 20 ms): the cap on torch's threads inside an op.");

  m.def(
      "pamr_affinity",
      [](py::handle image, py::handle weights, py::handle dilations, py::handle sigma, py::handle stream) {
        const wsss::pamr::AffinityArgs args{to_view(image, "image"), to_view(weights, "weights"),
                                            wsss::pamr::make_dilations(int_list_arg(dilations, "dilations")),
                                            real_arg(sigma, "sigma")};
        const uintptr_t s = stream_arg(stream);
        py::gil_scoped_release no_gil;
        wsss::pamr::affinity(args, s);
      },
      py::arg("image"), py::arg("weights"), py::arg("dilations"), py::arg("sigma"), py::arg("stream") = 0,
      "PAMR affinities of image [B, Ci, H, W] to the 8 neighbours of every dilation (replicate padding), "
      "softmax-normalised over all taps, into weights [B, 8 * len(dilations), H, W] (float32; float64 for "
      "float64 images).");

  m.def(
      "pamr_propagate",
      [](py::handle weights, py::handle mask, py::handle out, py::handle dilations, py::handle transpose,
         py::handle stream, py::handle steps) {
        const wsss::pamr::PropagateArgs args{to_view(weights, "weights"), to_view(mask, "mask"), to_view(out, "out"),
                                             wsss::pamr::make_dilations(int_list_arg(dilations, "dilations")),
                                             bool_arg(transpose, "transpose"), int_arg(steps, "steps", 1, kMaxIterations)};
        const uintptr_t s = stream_arg(stream);
        py::gil_scoped_release no_gil;
        wsss::pamr::propagate(args, s);
      },
      py::arg("weights"), py::arg("mask"), py::arg("out"), py::arg("dilations"), py::arg("transpose") = false,
      py::arg("stream") = 0, py::arg("steps") = 1,
      "`steps` PAMR steps, each out[b, c, i] = sum_k weights[b, k, i] * mask[b, c, tap k of i] (transpose: the "
      "adjoint, the step's backward); mask and out [B, C, H, W] of the weights' dtype. steps > 1 on the CPU only "
      "(CUDA: one step per call).");

  m.def(
      "random_walk_step",
      [](py::handle weights, py::handle offsets, py::handle x, py::handle y, py::handle transpose, py::handle halo,
         py::handle stream, py::handle steps) {
        const wsss::random_walk::StepArgs args{to_view(weights, "weights"),
                                               to_view(offsets, "offsets"),
                                               to_view(x, "x"),
                                               to_view(y, "y"),
                                               bool_arg(transpose, "transpose"),
                                               int32_arg(halo, "halo"),
                                               int_arg(steps, "steps", 1, kMaxIterations)};
        const uintptr_t s = stream_arg(stream);
        py::gil_scoped_release no_gil;
        wsss::random_walk::step(args, s);
      },
      py::arg("weights"), py::arg("offsets"), py::arg("x"), py::arg("y"), py::arg("transpose") = false,
      py::arg("halo") = 0, py::arg("stream") = 0, py::arg("steps") = 1,
      "`steps` random-walk steps (more than 1 on the CPU only), each y[b, c, p] = sum_t weights[b, t, p] * x[b, c, p + offsets[t]] over the taps inside "
      "the map (transpose: the adjoint, the step's backward). weights [B, T, H, W], offsets [T, 2] int32 (dy, dx), "
      "x and y [B, C, H, W] of the weights' dtype; halo = max |offset| (a shared-memory tile size on CUDA).");

  m.def(
      "random_walk_weights",
      [](py::handle affinity, py::handle offsets, py::handle weights, py::handle beta) {
        const wsss::random_walk::WeightsArgs args{to_view(affinity, "affinity"), to_view(offsets, "offsets"),
                                                  to_view(weights, "weights"), real_arg(beta, "beta")};
        py::gil_scoped_release no_gil;
        return static_cast<int>(wsss::random_walk::transition_weights(args));
      },
      py::arg("affinity"), py::arg("offsets"), py::arg("weights"), py::arg("beta"),
      "The walk's transition weights from affinity [B, T, H, W] (CPU, float32 / float64) into weights of the same "
      "shape: w = a^beta / sum over the in-map taps, 0 outside the map, 1 on the centre where the sum is 0. Returns "
      "0, or 1 if the affinities hold a NaN or inf, 2 if a negative value (the weights are written regardless).");

  m.def(
      "random_walk_weight_grad",
      [](py::handle grad_y, py::handle x, py::handle offsets, py::handle grad_weights, py::handle stream) {
        const wsss::random_walk::WeightGradArgs args{to_view(grad_y, "grad_y"), to_view(x, "x"),
                                                     to_view(offsets, "offsets"), to_view(grad_weights, "grad_weights")};
        const uintptr_t s = stream_arg(stream);
        py::gil_scoped_release no_gil;
        wsss::random_walk::weight_grad(args, s);
      },
      py::arg("grad_y"), py::arg("x"), py::arg("offsets"), py::arg("grad_weights"), py::arg("stream") = 0,
      "grad_weights[b, t, p] += sum_c grad_y[b, c, p] * x[b, c, p + offsets[t]]: the weight gradient of one step.");

  m.def(
      "fickle_mask_bits",
      [](py::handle bits, py::handle seed, py::handle kernel_size, py::handle drop_threshold, py::handle first_row,
         py::handle stream) {
        const wsss::fickle::BitsArgs args{
            to_view(bits, "bits"),
            {uint64_arg(seed, "seed"), int32_arg(kernel_size, "kernel_size"),
             static_cast<uint32_t>(int_arg(drop_threshold, "drop_threshold", 0, UINT32_MAX)), 1.0f},
            int_arg(first_row, "first_row")};
        const uintptr_t s = stream_arg(stream);
        py::gil_scoped_release no_gil;
        wsss::fickle::mask_bits(args, s);
      },
      py::arg("bits"), py::arg("seed"), py::arg("kernel_size"), py::arg("drop_threshold"), py::arg("first_row") = 0,
      py::arg("stream") = 0,
      "FickleNet's keep decisions: bits [R, C, H, W] int32 for rows first_row .. first_row + R, bit t set if tap "
      "t of the unit is kept (the centre always). Tap t of unit (r, c, i, j) is kept if word t % 4 of Philox4x32-10 at counter (r, c, i * W + j, "
      "t // 4) under key (seed low, high 32 bits) has its top 24 bits >= drop_threshold (ceil(p * 2**24)).");

  m.def(
      "fickle_masked_tap",
      [](py::handle input, py::handle output, py::handle bits, py::handle kernel_size, py::handle keep_scale,
         py::handle tap, py::handle transpose, py::handle stream, py::handle tap_count) {
        const wsss::fickle::TapArgs args{to_view(input, "input"),
                                         to_view(output, "output"),
                                         to_view(bits, "bits"),
                                         int32_arg(kernel_size, "kernel_size"),
                                         static_cast<float>(real_arg(keep_scale, "keep_scale")),
                                         int32_arg(tap, "tap"),
                                         bool_arg(transpose, "transpose"),
                                         int32_arg(tap_count, "tap_count")};
        const uintptr_t s = stream_arg(stream);
        py::gil_scoped_release no_gil;
        wsss::fickle::masked_tap(args, s);
      },
      py::arg("input"), py::arg("output"), py::arg("bits"), py::arg("kernel_size"), py::arg("keep_scale"),
      py::arg("tap"), py::arg("transpose") = false, py::arg("stream") = 0, py::arg("tap_count") = 1,
      "FickleNet's kept units of taps tap .. tap + tap_count - 1. Forward: output [R, C n, H, W] (n = tap_count), "
      "channel c n + k = keep * x shifted by tap (tap + k), input x [B, C, H, W], row r from image r % B. "
      "Transpose: output grad_x [B, C, H, W] += the adjoint applied to input grad [R, C n, H, W]. Kept off-centre "
      "units are multiplied by keep_scale.");

  m.def(
      "fickle_mask_counts",
      [](py::handle bits, py::handle counts, py::handle kernel_size, py::handle keep_scale, py::handle stream) {
        const wsss::fickle::CountArgs args{to_view(bits, "bits"), to_view(counts, "counts"),
                                           int32_arg(kernel_size, "kernel_size"),
                                           static_cast<float>(real_arg(keep_scale, "keep_scale"))};
        const uintptr_t s = stream_arg(stream);
        py::gil_scoped_release no_gil;
        wsss::fickle::mask_counts(args, s);
      },
      py::arg("bits"), py::arg("counts"), py::arg("kernel_size"), py::arg("keep_scale"), py::arg("stream") = 0,
      "counts [R, C, k*k]: per row, channel and tap, the sum of the tap's multipliers over the positions whose "
      "tap lies inside the map.");

  m.def(
      "correlation_forward",
      [](py::handle in1, py::handle in2, py::handle out, py::handle sizes, py::handle stream) {
        const wsss::correlation::ForwardArgs args{to_view(in1, "in1"), to_view(in2, "in2"), to_view(out, "out"),
                                                  geometry_from(sizes)};
        const uintptr_t s = stream_arg(stream);
        py::gil_scoped_release no_gil;
        wsss::correlation::forward(args, s);
      },
      py::arg("in1"), py::arg("in2"), py::arg("out"), py::arg("sizes"), py::arg("stream") = 0,
      "spatial-correlation-sampler's correlation of channels-last in1, in2 [B, H, W, C] into out [B, pH, pW, oH, "
      "oW]; sizes = ((kH, kW), (patchH, patchW), stride, padding, dilation, dilation_patch), each (h, w).");

  m.def(
      "correlation_backward",
      [](py::handle in1, py::handle in2, py::handle grad, py::handle grad_in1, py::handle grad_in2,
         py::handle sizes, py::handle stream) {
        const wsss::correlation::BackwardArgs args{to_view(in1, "in1"),         to_view(in2, "in2"),
                                                   to_view(grad, "grad"),       optional_view(grad_in1, "grad_in1"),
                                                   optional_view(grad_in2, "grad_in2"), geometry_from(sizes)};
        const uintptr_t s = stream_arg(stream);
        py::gil_scoped_release no_gil;
        wsss::correlation::backward(args, s);
      },
      py::arg("in1"), py::arg("in2"), py::arg("grad"), py::arg("grad_in1"), py::arg("grad_in2"), py::arg("sizes"),
      py::arg("stream") = 0,
      "Gradients of correlation_forward: grad [B, pH, pW, oH, oW] -> grad_in1, grad_in2 [B, H, W, C] (None: not "
      "computed).");

  m.def(
      "propagation_forward",
      [](py::handle query, py::handle keys, py::handle values, py::handle out, py::handle stats, py::handle topk_index,
         py::handle radius, py::handle inv_temperature, py::handle topk, py::handle border, py::handle stream) {
        const wsss::propagation::ForwardArgs args{to_view(query, "query"),   to_view(keys, "keys"),
                                                  to_view(values, "values"), to_view(out, "out"),
                                                  to_view(stats, "stats"),   optional_view(topk_index, "topk_index"),
                                                  problem_from(radius, inv_temperature, topk, border)};
        const uintptr_t s = stream_arg(stream);
        py::gil_scoped_release no_gil;
        wsss::propagation::forward(args, s);
      },
      py::arg("query"), py::arg("keys"), py::arg("values"), py::arg("out"), py::arg("stats"), py::arg("topk_index"),
      py::arg("radius"), py::arg("inv_temperature"), py::arg("topk"), py::arg("border") = "zero",
      py::arg("stream") = 0,
      "Label propagation: out [B, H, W, L] = softmax over the R x (2 radius + 1)^2 candidates (or their top-k) of "
      "query . key * inv_temperature, applied to the values. Channels-last query [B, H, W, C], keys [B, R, H, W, "
      "C], values [B, R, H, W, L]; border 'zero' (MAST: out-of-frame taps count with score 0 and value 0) or "
      "'exclude' (CorrFlow: they leave the softmax). Writes stats [B, H, W, 2] (max dot, log sum) and topk_index "
      "[B, H, W, topk] int32 (-1 past the candidates an excluded border leaves) for the backward.");

  m.def(
      "propagation_backward",
      [](py::handle query, py::handle keys, py::handle values, py::handle grad_out, py::handle stats, py::handle delta,
         py::handle topk_index, py::handle grad_query, py::handle grad_keys, py::handle grad_values,
         py::handle radius, py::handle inv_temperature, py::handle topk, py::handle border, py::handle stream) {
        const wsss::propagation::BackwardArgs args{
            to_view(query, "query"),           to_view(keys, "keys"),
            to_view(values, "values"),         to_view(grad_out, "grad_out"),
            to_view(stats, "stats"),           to_view(delta, "delta"),
            optional_view(topk_index, "topk_index"), to_view(grad_query, "grad_query"),
            to_view(grad_keys, "grad_keys"),   to_view(grad_values, "grad_values"),
            problem_from(radius, inv_temperature, topk, border)};
        const uintptr_t s = stream_arg(stream);
        py::gil_scoped_release no_gil;
        wsss::propagation::backward(args, s);
      },
      py::arg("query"), py::arg("keys"), py::arg("values"), py::arg("grad_out"), py::arg("stats"), py::arg("delta"),
      py::arg("topk_index"), py::arg("grad_query"), py::arg("grad_keys"), py::arg("grad_values"), py::arg("radius"),
      py::arg("inv_temperature"), py::arg("topk"), py::arg("border") = "zero", py::arg("stream") = 0,
      "Gradients of propagation_forward; delta [B, H, W] = sum_l grad_out * out.");
}
