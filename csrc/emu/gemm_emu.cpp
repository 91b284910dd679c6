// Emulated instantiation of the implicit-GEMM convolution kernels (backend "cuda-emu"): the same
// source as csrc/cuda/gemm_conv.cu, compiled by the host compiler against the CUDA emulation.
#define DILCONV_EMU 1
#include "kernels/gemm_conv_defs.inc"
