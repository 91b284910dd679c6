// Backend "cuda": the CUDA kernels' ATen glue (csrc/kernels/aten_glue.h) on the plain op names
// for CUDA tensors. Compiled by the host compiler in CUDA builds only; the kernels are the nvcc
// instantiations in csrc/cuda/*.cu.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#define DC_TARGET_NS dc_cuda
#define DC_GLUE_BACKEND "cuda"
#define DC_GLUE_DEVICE_TYPE c10::DeviceType::CUDA

namespace {
inline void* dc_glue_stream(const at::Tensor& t) {
  return static_cast<void*>(c10::cuda::getCurrentCUDAStream(t.device().index()).stream());
}
using DcGlueGuard = c10::cuda::CUDAGuard;
}  // namespace

#include "kernels/aten_glue.h"

TORCH_LIBRARY_IMPL(dilconv, CUDA, m) { dc_cuda::glue::register_impls(m, ""); }
