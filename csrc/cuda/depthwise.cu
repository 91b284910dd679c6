// nvcc instantiation of the depthwise kernels (backend "cuda"). No torch headers: this compiles
// in seconds with `nvcc -arch=sm_80 -Xptxas -v -c` for the resource report.
// Default-path kernels (resource report): every kernel of this file (no dc:default lines).
#include "kernels/depthwise.cuh"
#include "kernels/depthwise_defs.inc"
