// Sends an entry point's work to the backend of its array's device:
//
//   WSSS_ROUTE(args.image, "image", stream, affinity_cuda(args, stream), affinity_cpu(args));
//
// Without CUDA compiled in, the CUDA call is never compiled and a CUDA array
// is an error naming it (the stream, then unused, is consumed).
#pragma once

#include "common/array_view.h"

#if defined(WSSS_WITH_CUDA)
#define WSSS_ROUTE(view, name, stream, cuda_call, cpu_call) \
  ((view).is_cuda() ? (void)(cuda_call) : (void)(cpu_call))
#else
#define WSSS_ROUTE(view, name, stream, cuda_call, cpu_call) \
  ((void)(stream), (view).is_cuda() ? ::wsss::throw_no_cuda(name) : (void)(cpu_call))
#endif
