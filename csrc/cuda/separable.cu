// nvcc instantiation of the fused separable kernels and the separable backward's pieces
// (backend "cuda"). No torch headers (see depthwise.cu).
#include "kernels/separable.cuh"
#include "kernels/separable_defs.inc"
