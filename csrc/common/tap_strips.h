// The register-blocked gather shared by the CPU stencil kernels (PAMR's steps,
// the random walk): out[c, x] = sum_k w_k[x] * s_k[c, x] for a block of
// channels over one output row, where every tap k is a weight row w_k and a
// shifted source row s_k, both already resolved to pointers (the callers pad
// their maps so that a tap never needs clamping or bounds checks).
//
// A 64-byte strip of the row (one AVX-512 register of float, of double) is
// summed for up to kMaxStripBlock channels over a group of taps in registers:
// each weight vector is loaded once for the block, and the output strip is
// read and written once per group instead of once per tap.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>

#include "common/parallel.h"

namespace wsss {

template <class C>
constexpr int kStripLanes = 64 / static_cast<int>(sizeof(C));

// 12 strips of sums plus a weight strip fit the 32 AVX-512 registers with
// room to spare; max_strip_block() below is the block for the CPU at hand.
constexpr int kMaxStripBlock = 12;

inline int64_t round_up(int64_t value, int64_t multiple) { return (value + multiple - 1) / multiple * multiple; }

// At least value, an odd multiple of unit. Planes an odd number of cache
// lines apart do not all map to one L1 set, as power-of-two sizes would.
inline int64_t odd_multiple(int64_t value, int64_t unit) { return round_up(value, 2 * unit) + unit; }

// Strip [x0, x0 + kStripLanes) for kBlock channels over taps [0, taps):
// tap_weights[k] and tap_sources[k] point at column 0 of the tap's weight row
// and of its source row for the block's first channel; the channels are
// channel_stride apart in the sources and in out. Sums start from zero
// (first) or from out.
template <class C, int kBlock>
WSSS_CPU_VECTORIZED void gather_strip(const C* const* tap_weights, const C* const* tap_sources, int taps, int64_t x0,
                                      int64_t channel_stride, bool first, C* out) {
  constexpr int L = kStripLanes<C>;
  C acc[kBlock][L];
  for (int c = 0; c < kBlock; ++c)
#pragma omp simd
    for (int l = 0; l < L; ++l) acc[c][l] = first ? C(0) : out[c * channel_stride + x0 + l];
  for (int k = 0; k < taps; ++k) {
    const C* w = tap_weights[k] + x0;
    const C* s = tap_sources[k] + x0;
    for (int c = 0; c < kBlock; ++c)
#pragma omp simd
      for (int l = 0; l < L; ++l) acc[c][l] += w[l] * s[c * channel_stride + l];
  }
  for (int c = 0; c < kBlock; ++c)
#pragma omp simd
    for (int l = 0; l < L; ++l) out[c * channel_stride + x0 + l] = acc[c][l];
}

template <class C, int kBlock>
void gather_strips(const C* const* tap_weights, const C* const* tap_sources, int taps, int tap_group, int64_t strips,
                   int64_t channel_stride, C* out_row) {
  for (int k0 = 0; k0 < taps; k0 += tap_group)
    for (int64_t x0 = 0; x0 < strips * kStripLanes<C>; x0 += kStripLanes<C>)
      gather_strip<C, kBlock>(tap_weights + k0, tap_sources + k0, std::min(tap_group, taps - k0), x0, channel_stride,
                              k0 == 0, out_row);
}

// `strips` whole strips of one output row for `block` (1 .. kMaxStripBlock)
// channels, the taps summed in registers tap_group at a time: a group as
// small as keeps the source lines a strip reads in L1 until the next strip
// reads them again.
template <class C>
void gather_row_strips(int block, const C* const* tap_weights, const C* const* tap_sources, int taps, int tap_group,
                       int64_t strips, int64_t channel_stride, C* out_row) {
  switch (block) {
#define WSSS_STRIP_BLOCK(n) \
  case n:                   \
    return gather_strips<C, n>(tap_weights, tap_sources, taps, tap_group, strips, channel_stride, out_row);
    WSSS_STRIP_BLOCK(1) WSSS_STRIP_BLOCK(2) WSSS_STRIP_BLOCK(3) WSSS_STRIP_BLOCK(4)
    WSSS_STRIP_BLOCK(5) WSSS_STRIP_BLOCK(6) WSSS_STRIP_BLOCK(7) WSSS_STRIP_BLOCK(8)
    WSSS_STRIP_BLOCK(9) WSSS_STRIP_BLOCK(10) WSSS_STRIP_BLOCK(11) WSSS_STRIP_BLOCK(12)
#undef WSSS_STRIP_BLOCK
  }
}

// A zero-filled scratch array on 64-byte boundaries, so that strips that
// start on a multiple of kStripLanes are whole cache lines (std::vector only
// promises 16 bytes, and a strip straddling two lines costs two loads).
template <class C>
class StripBuffer {
 public:
  StripBuffer() = default;
  explicit StripBuffer(int64_t size) { assign(size); }

  void assign(int64_t size) {
    if (size != size_) {
      data_.reset(size > 0 ? static_cast<C*>(::operator new(size * sizeof(C), std::align_val_t(64))) : nullptr);
      size_ = size;
    }
    if (size > 0) std::memset(data_.get(), 0, size * sizeof(C));
  }
  C* data() { return data_.get(); }
  const C* data() const { return data_.get(); }

 private:
  struct Free {
    void operator()(C* p) const { ::operator delete(p, std::align_val_t(64)); }
  };
  std::unique_ptr<C, Free> data_;
  int64_t size_ = 0;
};

// Channel block b of `blocks` near-equal ones (21 -> 10 + 11): [c0, c1).
inline void channel_block(int64_t b, int64_t blocks, int64_t channels, int64_t& c0, int64_t& c1) {
  c0 = b * channels / blocks;
  c1 = (b + 1) * channels / blocks;
}

// Channels a block sums in registers on this CPU: 12 strips of sums fit
// AVX-512's 32 registers; AVX2's 16 registers of half the width hold 6 (12
// registers, plus a weight and a source), SSE's 3. A block too large for the
// registers spills its sums to the stack on every tap (on an AVX2-only EPYC,
// one thread, the random walk at IRNet's size took about 12% longer with
// blocks of 10 and 11 than with blocks of 6 and 5).
// Results do not depend on it: each channel sums its taps in the same order.
inline int64_t max_strip_block() {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  static const int64_t block = __builtin_cpu_supports("avx512f") ? kMaxStripBlock
                               : __builtin_cpu_supports("avx2")  ? kMaxStripBlock / 2
                                                                 : kMaxStripBlock / 4;
  return block;
#else
  return kMaxStripBlock / 2;  // e.g. NEON: 32 registers of 16 bytes, 4 per strip
#endif
}

inline int64_t channel_blocks(int64_t channels) {
  const int64_t block = max_strip_block();
  return (channels + block - 1) / block;
}

}  // namespace wsss
