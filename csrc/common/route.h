// Sends an entry point's work to the backend of its array's device:
//
//   WSSS_ROUTE(args.image, "image", stream, affinity_cuda(args, stream), affinity_cpu(args));
//
// Without CUDA compiled in, the CUDA call is never compiled and a CUDA array
// is an error naming it (the stream, then unused, is consumed). In the
// emulation build, CPU arrays take the CUDA call too while emulation is on
// (wsss_ext.testing.emulate_cuda()); runs_on_cuda() is that decision, for the
// entry points that size buffers for the backend.
#pragma once

#include "common/array_view.h"
#include "common/cuda_device.h"

namespace wsss {

inline bool runs_on_cuda(const ArrayView& view) {
#if defined(WSSS_CUDA_EMULATED)
  return view.is_cuda() || cuda_emulation_enabled();
#else
  return view.is_cuda();
#endif
}

}  // namespace wsss

#if defined(WSSS_WITH_CUDA)
#define WSSS_ROUTE(view, name, stream, cuda_call, cpu_call) \
  (::wsss::runs_on_cuda(view) ? (void)(cuda_call) : (void)(cpu_call))
#else
#define WSSS_ROUTE(view, name, stream, cuda_call, cpu_call) \
  ((void)(stream), (view).is_cuda() ? ::wsss::throw_no_cuda(name) : (void)(cpu_call))
#endif
