// Emulated instantiation of the depthwise kernels (backend "cuda-emu"): the same source as
// csrc/cuda/depthwise.cu, compiled by the host compiler against the CUDA emulation.
#define DILCONV_EMU 1
#include "kernels/depthwise.cuh"
#include "kernels/depthwise_defs.inc"
