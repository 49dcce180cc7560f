// Scalar math shared by the kernels, host and device.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "common/hostdevice.h"

namespace wsss {

// The core of exp_polynomial for a clamped xc in [-87.5, 88.5]: n =
// round(xc / ln2) and the degree-6 polynomial p ~ exp(xc - n ln2), so that
// exp(xc) ~ p 2^n. Generic over float and GCC vector types of float (the
// dense CRF's lanes), which then run the same operations as the scalar code.
// Always inlined on the host: called from an ISA clone, a function of its own
// would run baseline code and pass its vectors through memory.
#if !defined(__CUDACC__) && defined(__GNUC__)
#define WSSS_EXP_REDUCED inline __attribute__((always_inline))
#else
#define WSSS_EXP_REDUCED WSSS_HD
#endif
template <class V>
WSSS_EXP_REDUCED V exp_reduced(V xc, V& n) {
  // round-to-nearest through the 1.5 * 2^23 trick: no floorf libcall.
  n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  V r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  V p = V{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  return p * r * r + r + 1.0f;
}

// exp(x) in fp32, written so that compilers vectorise it (no libm call, no
// branch): Cephes-style range reduction x = n ln2 + r, a degree-6 polynomial
// for exp(r), and 2^n built from its bits. Relative error about 1e-7.
WSSS_HD float exp_polynomial(float x) {
#if defined(__CUDA_ARCH__)
  return expf(x);
#else
  // Clamp with selects that also replace NaN (no float-to-int UB below); the
  // result's NaN comes back through exp_or_nan's (x - x).
  float xc = x > -87.5f ? x : -87.5f;
  xc = xc < 88.5f ? xc : 88.5f;
  float n;
  const float p = exp_reduced(xc, n);
  const uint32_t scale_bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &scale_bits, sizeof scale);
  const float y = p * scale;
  const float overflowed = x > 88.72283f ? std::numeric_limits<float>::infinity() : y;
  return x < -87.33654f ? 0.0f : overflowed;
#endif
}

WSSS_HD double exp_polynomial(double x) { return exp(x); }

// exp(x) for finite x and NaN for NaN or +-inf. Kernels apply it to data-
// derived values so that a non-finite input poisons the result (and is then
// reported) instead of silently contributing exp(-inf) = 0 to a sum. Relies
// on IEEE semantics: never build with -ffast-math.
template <class T>
WSSS_HD T exp_or_nan(T x) { return exp_polynomial(x) + (x - x); }

// A running log-sum-exp: sum of exp(value - max). The empty state is
// (max = -inf, sum = 0); log-sum-exp = max + log(sum).
template <class T>
WSSS_HD void logsumexp_push(T& max, T& sum, T x) {
  if (x > max) {
    sum = sum * exp_polynomial(max - x) + T(1);
    max = x;
  } else {
    sum += exp_or_nan(x - max);
  }
}

template <class T>
WSSS_HD void logsumexp_merge(T& max, T& sum, T other_max, T other_sum) {
  if (other_sum == T(0)) return;  // empty partner; NaN sums fall through and propagate
  if (other_max > max) {
    sum = sum * exp_polynomial(max - other_max) + other_sum;
    max = other_max;
  } else {
    sum += other_sum * exp_polynomial(other_max - max);
  }
}

template <class T>
WSSS_HD T negative_infinity() { return -std::numeric_limits<T>::infinity(); }

}  // namespace wsss
