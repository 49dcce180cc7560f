// CPU parallelism helpers: the thread count of the OpenMP kernels and
// per-ISA clones of hot loops.
//
// Every `#pragma omp parallel` of the package takes num_threads(wsss::cpu_threads()):
// - the count the caller asked for: the Python layer passes torch.get_num_threads()
//   before each op (set_cpu_threads, per calling thread), so DataLoader workers,
//   where torch sets 1, run single-threaded; without one, OpenMP's default;
// - capped by the CPUs other processes leave free. OpenMP barriers spin, and a
//   thread descheduled by a busy process holds every other thread at the next
//   barrier: with a busy process on one of two cores, a CRF call took 589 ms
//   with 2 threads and 369 ms with 1. The wait policy cannot be changed at run
//   time (libgomp reads OMP_WAIT_POLICY once, and shares its threads with
//   torch), so the kernels take no more threads than there are idle CPUs, as
//   OpenMP's dynamic adjustment (OMP_DYNAMIC) does, but from the current run
//   queue (/proc/loadavg) rather than the one-minute load average.
//   set_dynamic_threads(false) or WSSS_EXT_DYNAMIC_THREADS=0 turns the cap off.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#if defined(WSSS_WITH_OPENMP)
#include <omp.h>
#endif
#if defined(__linux__)
#include <dirent.h>
#include <sched.h>
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

inline std::atomic<int>& dynamic_threads_flag() {
  static std::atomic<int> flag{[] {
    const char* env = std::getenv("WSSS_EXT_DYNAMIC_THREADS");
    return env != nullptr && std::strcmp(env, "0") == 0 ? 0 : 1;
  }()};
  return flag;
}

#if defined(__linux__)
// The CPUs this process may run on.
inline int affinity_cpus() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) != 0) return cpu_max_threads();
  return std::max(1, CPU_COUNT(&set));
}

// Runnable tasks of the whole machine (the 4th field of /proc/loadavg), -1 if unknown.
inline int machine_running_tasks() {
  FILE* file = std::fopen("/proc/loadavg", "r");
  if (file == nullptr) return -1;
  double one, five, fifteen;
  int running = -1, total = 0;
  if (std::fscanf(file, "%lf %lf %lf %d/%d", &one, &five, &fifteen, &running, &total) != 5) running = -1;
  std::fclose(file);
  return running;
}

// Threads of this process that are running or runnable (state R): the
// caller, and OpenMP workers still spinning after the previous region.
inline int own_running_threads() {
  DIR* tasks = opendir("/proc/self/task");
  if (tasks == nullptr) return 1;
  int running = 0;
  while (const dirent* entry = readdir(tasks)) {
    if (entry->d_name[0] == '.') continue;
    char path[64], stat[512];
    std::snprintf(path, sizeof path, "/proc/self/task/%s/stat", entry->d_name);
    FILE* file = std::fopen(path, "r");
    if (file == nullptr) continue;
    const size_t n = std::fread(stat, 1, sizeof stat - 1, file);
    std::fclose(file);
    stat[n] = '\0';
    const char* state = std::strrchr(stat, ')');  // the name in parentheses may hold spaces
    if (state != nullptr && state[1] == ' ' && state[2] == 'R') ++running;
  }
  closedir(tasks);
  return std::max(running, 1);
}

// CPUs not taken by other processes' runnable tasks (at least 1), re-read at
// most every 20 ms: a few /proc reads, negligible beside a parallel kernel.
inline int idle_cpus() {
  using Clock = std::chrono::steady_clock;
  static std::atomic<int64_t> checked_at{-1};  // never
  static std::atomic<int> idle{0};
  const int64_t now = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now().time_since_epoch()).count();
  const int64_t checked = checked_at.load(std::memory_order_relaxed);
  if (checked < 0 || now - checked > 20000) {
    const int cpus = affinity_cpus();
    const int running = machine_running_tasks();
    const int others = running < 0 ? 0 : std::max(0, running - own_running_threads());
    idle.store(std::max(1, cpus - others), std::memory_order_relaxed);
    checked_at.store(now, std::memory_order_relaxed);
  }
  return idle.load(std::memory_order_relaxed);
}
#else
inline int idle_cpus() { return cpu_max_threads(); }
#endif

}  // namespace detail

// The thread count for the calling thread's next kernels (0: OpenMP's default).
inline void set_cpu_threads(int threads) { detail::requested_cpu_threads() = std::max(0, threads); }
inline int requested_cpu_threads() {
  const int requested = detail::requested_cpu_threads();
  return requested > 0 ? requested : cpu_max_threads();
}
inline void set_dynamic_threads(bool enabled) { detail::dynamic_threads_flag().store(enabled ? 1 : 0); }
inline bool dynamic_threads() { return detail::dynamic_threads_flag().load() != 0; }

// Threads for a parallel region now: the requested count, capped by the idle CPUs.
inline int cpu_threads() {
  const int requested = requested_cpu_threads();
  if (requested <= 1 || !dynamic_threads()) return requested;
  return std::min(requested, detail::idle_cpus());
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
