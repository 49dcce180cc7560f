// CPU parallelism helpers: the thread count of the OpenMP kernels, a shared
// work-sharing loop, and per-ISA clones of hot loops.
//
// Every `#pragma omp parallel` of the package takes num_threads(wsss::cpu_threads()):
// the count the caller asked for. The Python layer passes torch.get_num_threads()
// before each op (set_cpu_threads, per calling thread), so DataLoader workers,
// where torch sets 1, run single-threaded; without one, OpenMP's default.
//
// Beside a busy process a thread is descheduled for whole time slices, and
// work split into equal static shares waits at the next barrier for the
// share of the slowed thread: with a busy process on one of two cores, a CRF
// call once took 589 ms with 2 threads and 369 ms with 1. So every loop of the
// kernels hands its work out in small blocks (schedule(dynamic), team_for
// below), and the thread on the free core takes most of them: beside a busy
// core 2 threads are faster than 1, not slower (benchmarks/bench_contention.py).
#pragma once

#include <algorithm>
#include <cstdint>

#if defined(WSSS_WITH_OPENMP)
#include <omp.h>
#endif

namespace wsss {

inline int cpu_max_threads() {
#if defined(WSSS_WITH_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// This thread's index in the current parallel region, and the region's size
// (0 and 1 outside one, or without OpenMP).
inline int thread_index() {
#if defined(WSSS_WITH_OPENMP)
  return omp_get_thread_num();
#else
  return 0;
#endif
}

inline int thread_count() {
#if defined(WSSS_WITH_OPENMP)
  return omp_get_num_threads();
#else
  return 1;
#endif
}

// Whether the caller already runs inside a parallel region (always, without
// OpenMP: there is no team to start).
inline bool in_parallel_region() {
#if defined(WSSS_WITH_OPENMP)
  return omp_in_parallel() != 0;
#else
  return true;
#endif
}

namespace detail {

inline int& requested_cpu_threads() {
  static thread_local int threads = 0;  // 0: none given, OpenMP's default
  return threads;
}

}  // namespace detail

// The thread count for the calling thread's next kernels (0: OpenMP's default).
inline void set_cpu_threads(int threads) { detail::requested_cpu_threads() = std::max(0, threads); }

// Threads for a parallel region now: the count the caller asked for, else OpenMP's default.
inline int cpu_threads() {
  const int requested = detail::requested_cpu_threads();
  return requested > 0 ? requested : cpu_max_threads();
}

// body(i0, i1) over the blocks of `block` items of [0, n), one stage of work
// that the threads of the enclosing parallel region share (`team`: every one
// of them must reach it; it ends in a barrier), else run straight through by
// the caller. The blocks go to whichever thread is free, so a thread that
// another process has descheduled holds back only the block it has, not an
// equal share of the stage.
template <class Body>
void team_for(bool team, int64_t n, int64_t block, Body&& body) {
  if (!team) {
    if (n > 0) body(int64_t{0}, n);
    return;
  }
  const int64_t blocks = (n + block - 1) / block;
#pragma omp for schedule(dynamic, 1)
  for (int64_t b = 0; b < blocks; ++b) body(b * block, std::min(n, (b + 1) * block));
}

}  // namespace wsss

// Compiles a hot loop once per instruction set and picks the best at load
// time, so one portable build still runs AVX2 / AVX-512 code where the CPU has
// it (no -march=native needed in a wheel).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__CUDACC__)
#define WSSS_CPU_VECTORIZED __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define WSSS_CPU_VECTORIZED
#endif
