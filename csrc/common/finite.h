// Whether every element of a CPU array is finite: the eager CPU check the
// public ops run on their inputs (wsss_ext.set_check_finite). One pass over
// the memory, no temporary, on the exponent bits (a NaN or inf has them all
// set), instead of the four torch ops (aminmax, two isfinite, and) of the
// tensor path, whose per-call cost dominated small ops.
#pragma once

#include "common/array_view.h"

namespace wsss {

// Integer and bool arrays are always finite. Any strides; CPU only.
bool all_finite_cpu(const ArrayView& values);

}  // namespace wsss
