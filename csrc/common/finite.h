// Scans of a CPU array for the eager input checks of the public ops
// (wsss_ext.set_check_finite): one pass over the memory, no temporary,
// instead of the several torch ops of the tensor path (aminmax, isfinite,
// abs, amax ...), whose per-call cost dominated small ops.
#pragma once

#include "common/array_view.h"

namespace wsss {

// Whether every element is finite, on the exponent bits (a NaN or inf has
// them all set). Integer and bool arrays always are. Any strides; CPU only.
bool all_finite_cpu(const ArrayView& values);

// The largest |element| of a float32 / float64 array (0 for an empty one),
// or +inf if it holds a NaN or inf: the finite check and the magnitude bound
// of an op (propagation's overflow refusal) in one pass. Any strides; CPU only.
double max_abs_cpu(const ArrayView& values);

}  // namespace wsss
