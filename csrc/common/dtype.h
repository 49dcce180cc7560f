// Storage types and dtype dispatch. Half-precision inputs are read through
// load_as<compute_t>() and every kernel computes in fp32 (fp64 for fp64 input).
#pragma once

#include <cstdint>
#include <cstring>

#include "common/array_view.h"
#include "common/hostdevice.h"

namespace wsss {

// Plain 16-bit storage; no arithmetic on them, only conversion on load.
struct Half { uint16_t bits; };
struct BFloat16 { uint16_t bits; };

WSSS_HD float bits_to_float(uint32_t bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
#endif
}

// IEEE binary16 -> binary32, subnormals, infinities and NaN included.
WSSS_HD float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0x1f) return bits_to_float(sign | 0x7f800000u | (mantissa << 13));
  if (exponent != 0) return bits_to_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
  if (mantissa == 0) return bits_to_float(sign);
  // Subnormal half: value = mantissa * 2^-24, exact in fp32.
  const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
  return sign ? -magnitude : magnitude;
}

WSSS_HD float bfloat16_to_float(uint16_t b) { return bits_to_float(static_cast<uint32_t>(b) << 16); }

template <class Compute, class Storage>
WSSS_HD Compute load_as(const Storage* p, int64_t i) { return static_cast<Compute>(p[i]); }
template <>
WSSS_HD float load_as<float, Half>(const Half* p, int64_t i) { return half_to_float(p[i].bits); }
template <>
WSSS_HD float load_as<float, BFloat16>(const BFloat16* p, int64_t i) { return bfloat16_to_float(p[i].bits); }

// The type a kernel computes and accumulates in for a given storage type.
template <class Storage> struct ComputeType { using type = float; };
template <> struct ComputeType<double> { using type = double; };
template <class Storage> using compute_t = typename ComputeType<Storage>::type;

// dispatch_floating(view.dtype, "scores", [&](auto tag) { using T = decltype(tag); ... });
// calls the body with a value of the storage type matching the dtype.
template <class Body>
void dispatch_floating(DType dtype, const char* name, Body&& body, bool allow_half = true) {
  switch (dtype) {
    case DType::kFloat32: body(float{}); return;
    case DType::kFloat64: body(double{}); return;
    case DType::kFloat16:
      if (allow_half) { body(Half{}); return; }
      break;
    case DType::kBFloat16:
      if (allow_half) { body(BFloat16{}); return; }
      break;
    default: break;
  }
  WSSS_CHECK(false, name, ": unsupported dtype ", dtype_name(dtype),
             allow_half ? " (expected float16, bfloat16, float32 or float64)" : " (expected float32 or float64)");
}

template <class T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::kFloat32; }
template <> constexpr DType dtype_of<double>() { return DType::kFloat64; }

}  // namespace wsss
