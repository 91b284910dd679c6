// Backend "cuda-emu": the CUDA kernels' ATen glue (csrc/kernels/aten_glue.h) on the *_emu op
// names for CPU tensors; the kernels it launches are the emulated instantiations
// (csrc/emu/*_emu.cpp), through exactly the launch code the "cuda" backend runs.
#include <ATen/ATen.h>
#include <torch/library.h>

#define DC_TARGET_NS dc_emu
#define DC_GLUE_BACKEND "cuda-emu"
#define DC_GLUE_DEVICE_TYPE c10::DeviceType::CPU

namespace {
inline void* dc_glue_stream(const at::Tensor&) { return nullptr; }
struct DcGlueGuard {
  explicit DcGlueGuard(c10::Device) {}
};
}  // namespace

#include "kernels/aten_glue.h"

TORCH_LIBRARY_IMPL(dilconv, CPU, m) { dc_emu::glue::register_impls(m, "_emu"); }
