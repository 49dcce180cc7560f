// The CPUs that other processes leave idle right now, for the torch ops
// inside wsss_ext's ops (FickleNet's matmuls). torch's GEMMs split their work
// in equal static shares, and beside a busy process the share of the thread it
// deschedules holds back the whole product: there 2 threads are slower than 1.
// The kernels' own loops hand their work out dynamically and need no such cap
// (common/parallel.h).
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "common/parallel.h"

#if defined(__linux__)
#include <dirent.h>
#include <sched.h>
#endif

namespace wsss {

#if defined(__linux__)
namespace detail {

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

}  // namespace detail

// CPUs not taken by other processes' runnable tasks (the run queue of
// /proc/loadavg less this process's running threads; at least 1), re-read at
// most every 20 ms: a few /proc reads, negligible beside a parallel kernel.
inline int idle_cpus() {
  using Clock = std::chrono::steady_clock;
  static std::atomic<int64_t> checked_at{-1};  // never
  static std::atomic<int> idle{0};
  const int64_t now = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now().time_since_epoch()).count();
  const int64_t checked = checked_at.load(std::memory_order_relaxed);
  if (checked < 0 || now - checked > 20000) {
    const int cpus = detail::affinity_cpus();
    const int running = detail::machine_running_tasks();
    const int others = running < 0 ? 0 : std::max(0, running - detail::own_running_threads());
    idle.store(std::max(1, cpus - others), std::memory_order_relaxed);
    checked_at.store(now, std::memory_order_relaxed);
  }
  return idle.load(std::memory_order_relaxed);
}
#else
inline int idle_cpus() { return cpu_max_threads(); }  // no /proc to read
#endif

}  // namespace wsss
