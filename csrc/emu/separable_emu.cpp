// Emulated instantiation of the separable kernels (backend "cuda-emu"): the same source as
// csrc/cuda/separable.cu, compiled by the host compiler against the CUDA emulation.
#define DILCONV_EMU 1
#include "kernels/separable.cuh"
#include "kernels/separable_defs.inc"
