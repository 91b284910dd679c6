// nvcc instantiation of the fused separable kernels and the separable backward's pieces
// (backend "cuda"). No torch headers (see depthwise.cu). Every kernel is on the default path.
// Largest dynamic shared memory the launch code requests (kSepSmemBudget):
// dc:launch sep_fwd smem=98304
#include "kernels/separable.cuh"
#include "kernels/separable_defs.inc"
