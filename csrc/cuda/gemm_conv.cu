// nvcc instantiation of the implicit-GEMM convolution kernels (backend "cuda"). No torch
// headers: `nvcc -std=c++17 -arch=sm_80 -Xptxas -v -Icsrc -c csrc/cuda/gemm_conv.cu` takes
// seconds and prints the resource report.
// Default-path kernels (resource report): the heuristic's tile configs with vector loads (the
// channels_last fast path) and without (NCHW / unaligned), and the split-K reduction.
// dc:default igemm_conv_kernel<.*SimtTile<64, 64, 16, 16, 4, 4, 3>
// dc:default igemm_conv_kernel<.*SimtTile<64, 64, 64, 8, 4, 4, 2>
// dc:default igemm_conv_kernel<.*WmmaTile<
// dc:default igemm_conv_kernel<double.*SimtTile<64, 64, 16, 16, 4, 4, 2>
// dc:default igemm_wgrad_kernel<
// dc:default igemm_wgrad_reduce_kernel<
#include "kernels/gemm_conv_defs.inc"
