// The scheduler of the CUDA emulation build (model: cuda_emulation.h).
//
// A launch takes a process-wide lock (launches are serialised: the built-in
// variables and the scheduler state are globals) and runs its blocks in
// order on the calling thread. A block's threads are fibers: each runs on an
// execution context (a stack from a pool) until it returns or waits at a
// barrier or warp step, then the next runnable one in linear order runs. A
// context whose thread returned goes straight on to the next thread not yet
// started, on the same stack: a kernel without barriers runs its block's
// threads one after the other with no context switch between them.
//
// Context switches: a few instructions of assembly on x86-64 (callee-saved
// registers, the SSE and x87 control words, the stack pointer), ucontext
// elsewhere (which also saves the signal mask: a system call per switch).
// Under AddressSanitizer every switch is announced with
// __sanitizer_start/finish_switch_fiber, so that it tracks which stack is live.
#include "common/cuda_emulation.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <new>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define WSSS_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define WSSS_EMU_ASAN 1
#endif
#endif

#if defined(WSSS_EMU_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define WSSS_EMU_ASM_SWITCH 1
#else
#include <ucontext.h>
#endif

#include "common/cuda_device.h"

uint3 threadIdx{0, 0, 0};
uint3 blockIdx{0, 0, 0};
dim3 blockDim{1, 1, 1};
dim3 gridDim{1, 1, 1};

namespace wsss {
namespace {
std::atomic<bool> g_emulation_enabled{false};
}  // namespace

bool cuda_emulation_enabled() { return g_emulation_enabled.load(std::memory_order_relaxed); }
void set_cuda_emulation(bool enabled) { g_emulation_enabled.store(enabled, std::memory_order_relaxed); }

}  // namespace wsss

namespace wsss::emu {
namespace {

constexpr int kWarp = 32;
constexpr unsigned int kMaxThreadsPerBlock = 1024;
constexpr unsigned int kMaxBlockDim[3] = {1024, 1024, 64};
constexpr unsigned int kMaxGridDim[3] = {2147483647u, 65535, 65535};
constexpr size_t kMaxSharedBytes = 48 * 1024;  // per block, without cudaFuncSetAttribute opt-in
// Kernel frames are small (the largest, propagation's, holds ~1.5 KiB of
// arrays); ASan's redzones make them several times larger.
#if defined(WSSS_EMU_ASAN)
constexpr size_t kStackBytes = 512 * 1024;
#else
constexpr size_t kStackBytes = 128 * 1024;
#endif
constexpr unsigned char kPoison = 0xff;  // undefined memory reads as NaN / -1

std::atomic<int> g_fault{static_cast<int>(Fault::kNone)};
std::atomic<uint64_t> g_launch_count{0};

// ---------------------------------------------------------------------------
// Errors: the last one of this thread, with a message naming the kernel
// ---------------------------------------------------------------------------

thread_local cudaError_t t_last_error = cudaSuccess;
thread_local cudaError_t t_detail_code = cudaSuccess;
thread_local std::string t_detail;
thread_local int t_device = 0;

void set_error(cudaError_t code, std::string message) {
  t_last_error = code;
  t_detail_code = code;
  t_detail = "emulated CUDA: " + std::move(message);
}

// A fault raised inside a kernel thread; unwinds that thread's stack.
struct KernelFault : std::runtime_error {
  KernelFault(cudaError_t c, const std::string& message) : std::runtime_error(message), code(c) {}
  cudaError_t code;
};

template <class... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
}

std::string hex(unsigned int value) {
  char buffer[16];
  std::snprintf(buffer, sizeof buffer, "0x%08x", value);
  return buffer;
}

std::string triple(const uint3& v) { return concat("(", v.x, ", ", v.y, ", ", v.z, ")"); }

// ---------------------------------------------------------------------------
// Execution contexts: a stack (mmap'ed, a guard page below it) and the saved
// stack pointer of the CUDA thread running on it. Kept for the process.
// ---------------------------------------------------------------------------

struct Thread;

struct Context {
  char* base = nullptr;  // lowest usable byte of the stack
  size_t size = 0;
#if defined(WSSS_EMU_ASM_SWITCH)
  void* sp = nullptr;
#else
  ucontext_t context;
#endif
  bool started = false;      // false: the next switch enters context_main from the top
  Thread* thread = nullptr;  // the CUDA thread running here; null once it has gone idle
  void* fake_stack = nullptr;  // ASan's, while switched out
};

std::vector<Context*> g_idle_contexts;  // guarded by g_launch_mutex

Context* take_context() {
  if (!g_idle_contexts.empty()) {
    Context* context = g_idle_contexts.back();
    g_idle_contexts.pop_back();
    return context;
  }
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  void* memory = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (memory == MAP_FAILED) throw std::bad_alloc();
  mprotect(memory, page, PROT_NONE);  // an overflowing kernel thread faults instead of corrupting a neighbour
  Context* context = new Context;
  context->base = static_cast<char*>(memory) + page;
  context->size = kStackBytes;
  return context;
}

void make_idle(Context* context) {
  context->started = false;
  context->thread = nullptr;
  g_idle_contexts.push_back(context);
}

// ---------------------------------------------------------------------------
// Threads and warps of the running block
// ---------------------------------------------------------------------------

enum class State { kFresh, kRunning, kAtBarrier, kAtWarpStep, kDone };

struct Thread {
  uint3 index{0, 0, 0};
  int warp = 0, lane = 0;
  State state = State::kFresh;
  Context* context = nullptr;
  uint64_t generation = 0;  // of the barrier or warp step it waits at
  // What this lane published at its warp step, and what it gets back.
  unsigned char value[8] = {};
  int operand = 0, width = kWarp;
  unsigned char result[8] = {};
  unsigned int ballot = 0;
};

struct Warp {
  unsigned int live = 0;     // lanes that exist and have not returned
  unsigned int arrived = 0;  // lanes at the open step
  bool open = false;         // a step has lanes waiting
  unsigned int mask = 0;
  WarpOp op = WarpOp::kSync;
  size_t size = 0;
  uint64_t generation = 0;
};

struct SharedArray {
  const void* tag;
  void* data;
  size_t alignment;
};

struct Launch {
  const char* name = "";
  KernelBody body{};
  int thread_count = 0;
  std::vector<Thread> threads;
  std::vector<Warp> warps;
  Thread* current = nullptr;
  int next_fresh = 0;  // threads start in linear order: [0, next_fresh) have started
  int done = 0;
  int live = 0, at_barrier = 0;
  uint64_t barrier_generation = 0;
  std::vector<SharedArray> static_shared;
  size_t static_bytes = 0, dynamic_bytes = 0;
  void* dynamic = nullptr;
  bool failed = false;
  cudaError_t error = cudaSuccess;
  std::string message;
  uint32_t mxcsr = 0;
  uint16_t x87 = 0;
#if defined(WSSS_EMU_ASM_SWITCH)
  void* scheduler_sp = nullptr;
#else
  ucontext_t scheduler;
#endif
  void* scheduler_fake_stack = nullptr;
  const void* scheduler_stack_bottom = nullptr;
  size_t scheduler_stack_size = 0;
};

std::mutex g_launch_mutex;
Launch* g_launch = nullptr;  // the running launch, under g_launch_mutex
thread_local bool t_in_launch = false;

Launch& running(const char* what) {
  if (g_launch == nullptr || g_launch->current == nullptr)
    throw std::logic_error(concat(what, " called outside a kernel of the CUDA emulation"));
  return *g_launch;
}

void bind(Launch& launch, Thread& thread, Context* context) {
  thread.context = context;
  context->thread = &thread;
  launch.current = &thread;
  threadIdx = thread.index;
}

// ---------------------------------------------------------------------------
// Context switches
// ---------------------------------------------------------------------------

#if defined(WSSS_EMU_ASAN)
void asan_start_switch(void** fake_stack, const void* bottom, size_t size) {
  __sanitizer_start_switch_fiber(fake_stack, bottom, size);
}
void asan_finish_switch(void* fake_stack, const void** bottom, size_t* size) {
  __sanitizer_finish_switch_fiber(fake_stack, bottom, size);
}
#else
void asan_start_switch(void**, const void*, size_t) {}
void asan_finish_switch(void*, const void**, size_t*) {}
#endif

void context_main();

#if defined(WSSS_EMU_ASM_SWITCH)
extern "C" __attribute__((visibility("hidden"))) void wsss_emu_switch_context(void** save_sp, void* load_sp);
// Saves the callee-saved registers and the MXCSR / x87 control words on the
// current stack, stores its pointer in *save_sp, and resumes the stack at
// load_sp, which was saved the same way (or laid out by initial_stack).
asm(R"(
  .text
  .p2align 4
  .globl wsss_emu_switch_context
  .hidden wsss_emu_switch_context
  .type wsss_emu_switch_context, @function
wsss_emu_switch_context:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size wsss_emu_switch_context, .-wsss_emu_switch_context
)");

extern "C" void wsss_emu_context_entry() { context_main(); }

// A fresh stack laid out as if wsss_emu_switch_context had saved it: its
// `ret` enters wsss_emu_context_entry with the stack aligned as after a
// call; above that a null return address ends frame-pointer walks.
void* initial_stack(const Launch& launch, const Context& context) {
  const uintptr_t top = (reinterpret_cast<uintptr_t>(context.base) + context.size) & ~uintptr_t{15};
  uint64_t* slots = reinterpret_cast<uint64_t*>(top);
  slots[-1] = 0;                                                     // the entry's return address
  slots[-2] = reinterpret_cast<uint64_t>(&wsss_emu_context_entry);  // popped by `ret`
  for (int i = 3; i <= 8; ++i) slots[-i] = 0;                        // rbp, rbx, r12-r15
  unsigned char* control = reinterpret_cast<unsigned char*>(slots - 9);
  std::memcpy(control, &launch.mxcsr, sizeof launch.mxcsr);
  std::memcpy(control + 4, &launch.x87, sizeof launch.x87);
  return slots - 9;
}

void switch_to_context(Launch& launch, Context& context) {
  if (!context.started) context.sp = initial_stack(launch, context);
  context.started = true;
  wsss_emu_switch_context(&launch.scheduler_sp, context.sp);
}
void switch_to_scheduler(Launch& launch, Context& context) {
  wsss_emu_switch_context(&context.sp, launch.scheduler_sp);
}
#else
void switch_to_context(Launch& launch, Context& context) {
  if (!context.started) {
    getcontext(&context.context);
    context.context.uc_stack.ss_sp = context.base;
    context.context.uc_stack.ss_size = context.size;
    context.context.uc_link = nullptr;
    makecontext(&context.context, &context_main, 0);
  }
  context.started = true;
  swapcontext(&launch.scheduler, &context.context);
}
void switch_to_scheduler(Launch& launch, Context& context) { swapcontext(&context.context, &launch.scheduler); }
#endif

// Runs `context` (and the threads it goes on to) until it waits or goes idle.
void enter(Launch& launch, Context& context) {
  asan_start_switch(&launch.scheduler_fake_stack, context.base, context.size);
  switch_to_context(launch, context);
  asan_finish_switch(launch.scheduler_fake_stack, nullptr, nullptr);
  launch.current = nullptr;
}

// From a kernel thread back to the scheduler, until it resumes this thread.
void suspend(Launch& launch, Thread& thread, State state) {
  thread.state = state;
  Context& context = *thread.context;
  asan_start_switch(&context.fake_stack, launch.scheduler_stack_bottom, launch.scheduler_stack_size);
  switch_to_scheduler(launch, context);
  asan_finish_switch(context.fake_stack, &launch.scheduler_stack_bottom, &launch.scheduler_stack_size);
  thread.state = State::kRunning;
}

// ---------------------------------------------------------------------------
// Barriers and warp steps
// ---------------------------------------------------------------------------

void release_barrier(Launch& launch) {
  launch.at_barrier = 0;
  ++launch.barrier_generation;
}

// PTX shfl.sync's source lane (ISA: "Data Movement and Conversion
// Instructions: shfl.sync"), with c = ((32 - width) << 8) | clamp as CUDA's
// __shfl*_sync pass it; out of the lane's segment: its own value.
int source_lane(WarpOp op, int lane, int operand, int width) {
  const int segmask = (kWarp - width) & 31;
  const int clamp = op == WarpOp::kShflUp ? 0 : 31;
  const int b = operand & 31;
  const int max_lane = (lane & segmask) | (clamp & ~segmask);
  const int min_lane = lane & segmask;
  int j = lane;
  bool in_range = false;
  switch (op) {
    case WarpOp::kShflUp: j = lane - b; in_range = j >= max_lane; break;
    case WarpOp::kShflDown: j = lane + b; in_range = j <= max_lane; break;
    case WarpOp::kShflXor: j = lane ^ b; in_range = j <= max_lane; break;
    case WarpOp::kShflIdx: j = min_lane | (b & ~segmask); in_range = j <= max_lane; break;
    default: break;
  }
  return in_range ? j : lane;
}

// Completes the warp's open step once every live lane of its mask is there:
// hands each lane its result.
bool try_complete(Launch& launch, Warp& warp, int first_thread) {
  if (!warp.open || (warp.mask & warp.live & ~warp.arrived) != 0) return false;
  const unsigned int participants = warp.arrived;
  unsigned int ballot = 0;
  for (int lane = 0; lane < kWarp; ++lane)
    if ((participants >> lane & 1u) && launch.threads[first_thread + lane].operand != 0) ballot |= 1u << lane;
  const bool wrong_lane = g_fault.load(std::memory_order_relaxed) == static_cast<int>(Fault::kShuffleWrongLane);
  for (int lane = 0; lane < kWarp; ++lane) {
    if (!(participants >> lane & 1u)) continue;
    Thread& thread = launch.threads[first_thread + lane];
    thread.ballot = ballot;
    if (warp.op == WarpOp::kSync || warp.op == WarpOp::kBallot) continue;
    int source = source_lane(warp.op, lane, thread.operand, thread.width);
    if (wrong_lane) source = (source + 1) % kWarp;
    if (participants >> source & 1u)
      std::memcpy(thread.result, launch.threads[first_thread + source].value, warp.size);
    else
      std::memset(thread.result, kPoison, warp.size);  // an inactive source: undefined on a GPU
  }
  warp.open = false;
  warp.arrived = 0;
  ++warp.generation;
  return true;
}

const char* op_name(WarpOp op) {
  switch (op) {
    case WarpOp::kSync: return "__syncwarp";
    case WarpOp::kShflIdx: return "__shfl_sync";
    case WarpOp::kShflUp: return "__shfl_up_sync";
    case WarpOp::kShflDown: return "__shfl_down_sync";
    case WarpOp::kShflXor: return "__shfl_xor_sync";
    case WarpOp::kBallot: return "__ballot_sync";
  }
  return "?";
}

// A thread returned: it leaves the barrier count and its warp.
void thread_exited(Launch& launch, Thread& thread) {
  --launch.live;
  if (launch.at_barrier > 0 && launch.at_barrier == launch.live) release_barrier(launch);
  Warp& warp = launch.warps[thread.warp];
  warp.live &= ~(1u << thread.lane);
  try_complete(launch, warp, thread.warp * kWarp);
}

void fail(Launch& launch, cudaError_t code, const char* what) {
  launch.failed = true;
  launch.error = code;
  launch.message = concat("thread ", triple(launch.current->index), ": ", what);
}

void run_thread(Launch& launch) {
  try {
    launch.body.run(launch.body.closure);
  } catch (const KernelFault& fault) {
    fail(launch, fault.code, fault.what());
  } catch (const std::exception& error) {
    fail(launch, cudaErrorLaunchFailure, error.what());
  } catch (...) {
    fail(launch, cudaErrorLaunchFailure, "an unknown exception");
  }
}

// The body of every context: runs its thread, then, while that thread never
// had to wait, goes straight on to the next thread in order on the same
// stack (most kernels have no barrier: no context switch per thread).
void context_main() {
  Launch& launch = *g_launch;
  Context& context = *launch.current->context;
  asan_finish_switch(nullptr, &launch.scheduler_stack_bottom, &launch.scheduler_stack_size);
  for (;;) {
    Thread& thread = *context.thread;
    thread.state = State::kRunning;
    run_thread(launch);
    if (launch.failed) break;
    thread_exited(launch, thread);
    thread.state = State::kDone;
    thread.context = nullptr;
    ++launch.done;
    if (launch.next_fresh >= launch.thread_count) break;
    bind(launch, launch.threads[launch.next_fresh++], &context);
  }
  if (!launch.failed) context.thread = nullptr;  // idle: the scheduler takes it back
  asan_start_switch(nullptr, launch.scheduler_stack_bottom, launch.scheduler_stack_size);  // this run ends
  switch_to_scheduler(launch, context);
  std::abort();  // never resumed: an idle context restarts from the top
}

bool runnable(const Launch& launch, const Thread& thread) {
  switch (thread.state) {
    case State::kFresh: return true;
    case State::kAtBarrier: return thread.generation != launch.barrier_generation;
    case State::kAtWarpStep: return thread.generation != launch.warps[thread.warp].generation;
    default: return false;
  }
}

std::string deadlock_report(const Launch& launch) {
  std::ostringstream out;
  out << "deadlock: no thread of the block can proceed. " << launch.at_barrier << " of " << launch.live
      << " live threads wait at __syncthreads()";
  for (size_t w = 0; w < launch.warps.size(); ++w) {
    const Warp& warp = launch.warps[w];
    if (!warp.open) continue;
    out << "; warp " << w << ": lanes " << hex(warp.arrived) << " wait at " << op_name(warp.op) << " (mask "
        << hex(warp.mask) << ") for lanes " << hex(warp.mask & warp.live & ~warp.arrived);
  }
  out << ". Every barrier and warp step must be reached by all threads still running.";
  return out.str();
}

void free_shared(Launch& launch) {
  for (const SharedArray& array : launch.static_shared)
    ::operator delete(array.data, std::align_val_t(array.alignment));
  launch.static_shared.clear();
  launch.static_bytes = 0;
  std::free(launch.dynamic);
  launch.dynamic = nullptr;
}

// Runs one block; false if a thread faulted or the block deadlocked.
bool run_block(Launch& launch, const uint3& block) {
  blockIdx = block;
  const int count = launch.thread_count;
  for (int t = 0; t < count; ++t) {
    Thread& thread = launch.threads[t];
    thread.index = uint3{t % blockDim.x, (t / blockDim.x) % blockDim.y, t / (blockDim.x * blockDim.y)};
    thread.warp = t / kWarp;
    thread.lane = t % kWarp;
    thread.state = State::kFresh;
    thread.context = nullptr;
  }
  for (size_t w = 0; w < launch.warps.size(); ++w) {
    const int lanes = std::min(kWarp, count - static_cast<int>(w) * kWarp);
    // The missing lanes of a partial warp never take part.
    launch.warps[w].live = lanes == kWarp ? 0xffffffffu : (1u << lanes) - 1u;
    launch.warps[w].arrived = 0;
    launch.warps[w].open = false;
  }
  launch.live = count;
  launch.at_barrier = 0;
  launch.next_fresh = 0;
  launch.done = 0;
  // Shared memory of this block: its content is undefined on a GPU.
  free_shared(launch);
  launch.dynamic = std::malloc(launch.dynamic_bytes > 0 ? launch.dynamic_bytes : 1);
  if (launch.dynamic == nullptr) throw std::bad_alloc();
  std::memset(launch.dynamic, kPoison, launch.dynamic_bytes);
#if defined(WSSS_EMU_ASAN)
  if (launch.dynamic_bytes == 0) ASAN_POISON_MEMORY_REGION(launch.dynamic, 1);  // none asked for: none to touch
#endif

  while (launch.done < count && !launch.failed) {
    bool progressed = false;
    for (int t = 0; t < count && !launch.failed; ++t) {
      Thread& thread = launch.threads[t];
      if (!runnable(launch, thread)) continue;
      if (thread.state == State::kFresh) {  // the next in order (threads start in order)
        launch.next_fresh = t + 1;
        bind(launch, thread, take_context());
      } else {
        launch.current = &thread;
        threadIdx = thread.index;
      }
      Context* context = thread.context;
      enter(launch, *context);
      progressed = true;
      if (!launch.failed && context->thread == nullptr) make_idle(context);
    }
    if (!launch.failed && !progressed) {
      launch.failed = true;
      launch.error = cudaErrorLaunchFailure;
      launch.message = deadlock_report(launch);
    }
  }
  if (launch.failed) {
    // The other threads are abandoned mid-kernel: their contexts go back to
    // the pool (restarting from the top), cleared of ASan's poisoned frames.
    for (Thread& thread : launch.threads) {
      if (thread.context == nullptr) continue;
      Context* context = thread.context;
      for (Thread& other : launch.threads)
        if (other.context == context) other.context = nullptr;
#if defined(WSSS_EMU_ASAN)
      ASAN_UNPOISON_MEMORY_REGION(context->base, context->size);
#endif
      make_idle(context);
    }
  }
#if defined(WSSS_EMU_ASAN)
  if (launch.dynamic_bytes == 0) ASAN_UNPOISON_MEMORY_REGION(launch.dynamic, 1);
#endif
  return !launch.failed;
}

std::string configuration_error(const dim3& grid, const dim3& block) {
  const unsigned int g[3] = {grid.x, grid.y, grid.z}, b[3] = {block.x, block.y, block.z};
  for (int i = 0; i < 3; ++i) {
    if (g[i] == 0 || g[i] > kMaxGridDim[i])
      return concat("grid dimension ", "xyz"[i], " is ", g[i], " (must be in [1, ", kMaxGridDim[i], "])");
    if (b[i] == 0 || b[i] > kMaxBlockDim[i])
      return concat("block dimension ", "xyz"[i], " is ", b[i], " (must be in [1, ", kMaxBlockDim[i], "])");
  }
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  if (threads > kMaxThreadsPerBlock)
    return concat("a block of ", block.x, " x ", block.y, " x ", block.z, " = ", threads, " threads (at most ",
                  kMaxThreadsPerBlock, ")");
  return {};
}

}  // namespace

uint64_t launch_count() { return g_launch_count.load(std::memory_order_relaxed); }

void set_fault(Fault fault) { g_fault.store(static_cast<int>(fault), std::memory_order_relaxed); }
Fault fault() { return static_cast<Fault>(g_fault.load(std::memory_order_relaxed)); }

void warp_step(WarpOp op, unsigned int mask, const void* value, size_t size, int operand, int width, void* result,
               unsigned int* ballot) {
  Launch& launch = running(op_name(op));
  Thread& thread = *launch.current;
  const unsigned int bit = 1u << thread.lane;
  if (!(mask & bit))
    throw KernelFault(cudaErrorLaunchFailure, concat(op_name(op), ": lane ", thread.lane, " is not in its mask ",
                                                     hex(mask), " (undefined behaviour on a GPU)"));
  if (width < 1 || width > kWarp || (width & (width - 1)) != 0)
    throw KernelFault(cudaErrorLaunchFailure,
                 concat(op_name(op), ": width must be a power of two in [1, 32], got ", width));
  Warp& warp = launch.warps[thread.warp];
  if (!warp.open) {
    warp.open = true;
    warp.mask = mask;
    warp.op = op;
    warp.size = size;
  } else if (warp.mask != mask || warp.op != op || warp.size != size) {
    throw KernelFault(cudaErrorLaunchFailure,
                 concat("lanes of warp ", thread.warp, " meet at different warp steps: ", op_name(warp.op), " (mask ",
                        hex(warp.mask), ", ", warp.size, "-byte values) and ", op_name(op), " (mask ", hex(mask),
                        ", ", size, "-byte values)"));
  }
  if (size > 0) std::memcpy(thread.value, value, size);
  thread.operand = operand;
  thread.width = width;
  warp.arrived |= bit;
  thread.generation = warp.generation;
  if (!try_complete(launch, warp, thread.warp * kWarp)) suspend(launch, thread, State::kAtWarpStep);
  if (result != nullptr) std::memcpy(result, thread.result, size);
  if (ballot != nullptr) *ballot = thread.ballot;
}

void* static_shared(const void* tag, size_t bytes, size_t alignment) {
  Launch& launch = running("a __shared__ array");
  for (const SharedArray& array : launch.static_shared)
    if (array.tag == tag) return array.data;
  if (launch.static_bytes + bytes + launch.dynamic_bytes > kMaxSharedBytes)
    throw KernelFault(cudaErrorInvalidValue,
                 concat("the block needs ", launch.static_bytes + bytes, " bytes of static and ", launch.dynamic_bytes,
                        " of dynamic shared memory, more than the ", kMaxSharedBytes, " a block may use"));
  void* data = ::operator new(bytes, std::align_val_t(alignment));
  std::memset(data, kPoison, bytes);
  launch.static_shared.push_back(SharedArray{tag, data, alignment});
  launch.static_bytes += bytes;
  return data;
}

void* dynamic_shared() { return running("dynamic shared memory").dynamic; }

void launch_kernel(const char* name, dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t, KernelBody body) {
  g_launch_count.fetch_add(1, std::memory_order_relaxed);
  if (t_in_launch) {
    set_error(cudaErrorLaunchFailure, concat("kernel ", name, " launched from inside a kernel (not emulated)"));
    return;
  }
  const std::string bad = configuration_error(grid, block);
  if (!bad.empty()) {
    set_error(cudaErrorInvalidConfiguration, concat("kernel ", name, ": invalid configuration argument: ", bad));
    return;
  }
  if (shared_bytes > kMaxSharedBytes) {
    set_error(cudaErrorInvalidValue, concat("kernel ", name, ": ", shared_bytes,
                                            " bytes of dynamic shared memory, more than the ", kMaxSharedBytes,
                                            " a block may use without opting in"));
    return;
  }
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  t_in_launch = true;
  Launch launch;
  launch.name = name;
  launch.body = body;
  launch.thread_count = static_cast<int>(block.x * block.y * block.z);
  launch.threads.resize(launch.thread_count);
  launch.warps.resize((launch.thread_count + kWarp - 1) / kWarp);
#if defined(WSSS_EMU_ASM_SWITCH)
  asm volatile("stmxcsr %0" : "=m"(launch.mxcsr));  // kernel threads start with the caller's FP modes
  asm volatile("fnstcw %0" : "=m"(launch.x87));
#endif
  launch.dynamic_bytes = shared_bytes;
  g_launch = &launch;
  blockDim = block;
  gridDim = grid;
  try {
    for (unsigned int z = 0; z < grid.z && !launch.failed; ++z)
      for (unsigned int y = 0; y < grid.y && !launch.failed; ++y)
        for (unsigned int x = 0; x < grid.x; ++x)
          if (!run_block(launch, uint3{x, y, z})) {
            launch.message = concat("kernel ", name, ", block ", triple(uint3{x, y, z}), ", ", launch.message);
            break;
          }
  } catch (const std::bad_alloc&) {
    launch.failed = true;
    launch.error = cudaErrorMemoryAllocation;
    launch.message = concat("kernel ", name, ": out of memory for the emulated threads");
  }
  free_shared(launch);
  g_launch = nullptr;
  threadIdx = uint3{0, 0, 0};
  blockIdx = uint3{0, 0, 0};
  t_in_launch = false;
  if (launch.failed) set_error(launch.error, launch.message);
}

}  // namespace wsss::emu

// ---------------------------------------------------------------------------
// The runtime API. Memory is host memory; streams order nothing that is not
// already ordered (every call completes before it returns).
// ---------------------------------------------------------------------------

void __syncthreads() {
  using namespace wsss::emu;
  Launch& launch = running("__syncthreads");
  Thread& thread = *launch.current;
  thread.generation = launch.barrier_generation;
  if (++launch.at_barrier == launch.live) {
    release_barrier(launch);
    return;
  }
  suspend(launch, thread, State::kAtBarrier);
}

void __syncwarp(unsigned int mask) {
  wsss::emu::warp_step(wsss::emu::WarpOp::kSync, mask, nullptr, 0, 0, warpSize, nullptr, nullptr);
}

cudaError_t cudaGetLastError() {
  const cudaError_t error = wsss::emu::t_last_error;
  wsss::emu::t_last_error = cudaSuccess;
  return error;
}

cudaError_t cudaPeekAtLastError() { return wsss::emu::t_last_error; }

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
  }
  return "cudaErrorUnknown";
}

// CUDA's static description, or the message of this thread's last error of
// that code (which names the kernel, block and thread).
const char* cudaGetErrorString(cudaError_t error) {
  if (error != cudaSuccess && error == wsss::emu::t_detail_code) return wsss::emu::t_detail.c_str();
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
  }
  return "unknown error";
}

cudaError_t cudaGetDevice(int* device) {
  *device = wsss::emu::t_device;
  return cudaSuccess;
}

// One emulated device, ordinal 0. CPU arrays carry ordinal -1 (their
// launchers' device guards select it): under emulation their memory is the
// device's.
cudaError_t cudaSetDevice(int device) {
  if (device != 0 && device != -1) return cudaErrorInvalidDevice;
  wsss::emu::t_device = device;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }

cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t) {
  if (bytes == 0) return cudaSuccess;
  if (ptr == nullptr) return cudaErrorInvalidValue;
  std::memset(ptr, value, bytes);
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind, cudaStream_t) {
  if (bytes == 0) return cudaSuccess;
  if (dst == nullptr || src == nullptr) return cudaErrorInvalidValue;
  std::memmove(dst, src, bytes);
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  return cudaMemcpyAsync(dst, src, bytes, kind, nullptr);
}
