// Bounds on the arguments of every dilconv op, one definition for the CPU ops, the CUDA (and
// emulated) glue and, through the op dilconv::max_geometry, dilconv.functional.
#pragma once

#include <cstdint>

namespace dilconv {

// strides, paddings and dilations up to 2^24 (the CUDA kernels index in 32 bits): sizes computed
// from them stay far from int64 overflow (2^62 had wrapped past every check into out-of-bounds
// reads)
constexpr int64_t kMaxGeometry = int64_t{1} << 24;

}  // namespace dilconv
