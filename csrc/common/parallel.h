// CPU parallelism helpers: OpenMP thread count and per-ISA clones of hot loops.
#pragma once

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

}  // namespace wsss

// Compiles a hot loop once per instruction set and picks the best at load
// time, so one portable build still runs AVX2 / AVX-512 code where the CPU has
// it (no -march=native needed in a wheel).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__CUDACC__)
#define WSSS_CPU_VECTORIZED __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define WSSS_CPU_VECTORIZED
#endif
