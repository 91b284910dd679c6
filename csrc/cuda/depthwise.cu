// nvcc instantiation of the depthwise kernels (backend "cuda"). No torch headers: this compiles
// in seconds with `nvcc -arch=sm_80 -Xptxas -v -c` for the resource report.
// Default-path kernels (resource report): every kernel of this file (no dc:default lines).
// Largest dynamic shared memory the launch code requests (kSmemBudget):
// dc:launch dw_fwd_tiled smem=49152
// dc:launch dw_dgrad_tiled smem=49152
// dc:launch dw_wgrad_tiled smem=49152
#include "kernels/depthwise.cuh"
#include "kernels/depthwise_defs.inc"
