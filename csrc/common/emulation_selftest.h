// Kernels that exercise the CUDA emulation runtime itself (barriers, warp
// intrinsics, atomics, launch checks, shared memory bounds), compiled only
// into the emulation build and called by tests/emulated/test_runtime.py. One
// of them carries a planted off-by-one: the negative control showing that
// the emulated suite (values, and AddressSanitizer) catches such a bug.
#pragma once

#include <cstdint>
#include <string>

#include "common/array_view.h"

namespace wsss::emulation_selftest {

// out[0] = sum of values[0 .. n) by a shared-memory tree reduction in one
// block of n threads (n a power of two <= 1024). With planted_off_by_one the
// reduction's guard is `<=` instead of `<`: one thread reads one element
// past the shared array.
void block_sum(const ArrayView& values, const ArrayView& out, bool planted_off_by_one);

// Threads with odd index return at once; the others stage values[t] in
// shared memory, meet at __syncthreads() and write out[t] = values[(t + 2) %
// n]: the barrier must count only the threads still running (as on Volta
// and later), or it never opens.
void barrier_after_exits(const ArrayView& values, const ArrayView& out);

// One warp intrinsic across a block of values.numel() threads: thread t
// holds values[t] and writes its result to out[t]; threads with exits[t] != 0
// return first. op: "idx", "up", "down", "xor" (__shfl*_sync with operand
// and width) or "ballot" (predicate values[t] != 0; the ballot's bits, as
// int32). Full mask.
void warp_op(const ArrayView& values, const ArrayView& exits, const ArrayView& out, const std::string& op,
             int operand, int width);

// Every thread writes its (blockIdx, threadIdx, blockDim, gridDim) to row
// (linear block * threads per block + linear thread) of out int32 [N, 12].
void indices(const ArrayView& out, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx, unsigned int by,
             unsigned int bz);

// Atomics of every thread of `blocks` x `threads`: out_int int32 [4] = (count
// by atomicAdd, the largest linear id by atomicMax, winners of one atomicCAS
// slot, the slot's value); out_float float32 [1] += 0.25 per thread;
// out_u64 int64 [1] incremented by a 64-bit atomicCAS loop.
void atomics(const ArrayView& out_int, const ArrayView& out_float, const ArrayView& out_u64, int blocks, int threads);

// A kernel of the given configuration that touches `static_bytes` of a
// static shared array (0 or 8192) and all its dynamic shared memory:
// raises as the launch fails on a GPU for a bad configuration.
void launch(unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx, unsigned int by, unsigned int bz,
            int64_t dynamic_shared_bytes, bool static_shared);

// Lane 0 of the only warp waits at __syncthreads() while lanes 1-31 wait at
// a shuffle that needs lane 0: a deadlock the runtime must report.
void deadlock();

}  // namespace wsss::emulation_selftest
