// nvcc instantiation of the implicit-GEMM convolution kernels (backend "cuda"). No torch
// headers: `nvcc -std=c++17 -arch=sm_80 -Xptxas -v -Icsrc -c csrc/cuda/gemm_conv.cu` takes
// seconds and prints the resource report.
// Default-path kernels (resource report): the heuristic's tile configs with vector loads (the
// channels_last fast path) and without (NCHW / unaligned), and the split-K reduction.
// dc:default igemm_conv_kernel<.*SimtTile<64, 64, 16, 16, 4, 4, 3>
// dc:default igemm_conv_kernel<.*SimtTile<64, 64, 64, 8, 4, 4, 2>
// dc:default igemm_conv_kernel<.*SimtTile<64, 64, 32, 8, 4, 4, 2>
// dc:default igemm_conv_kernel<.*WmmaTile<
// dc:default igemm_conv_kernel<double.*SimtTile<64, 64, 16, 16, 4, 4, 2>
// dc:default igemm_wgrad_kernel<
// dc:default igemm_wgrad_reduce_kernel<
// Dynamic shared memory per launch (bytes: ConvSmem / WgradSmem of gemm_conv.cuh).
// dc:launch igemm_conv_kernel<float,.*SimtTile<64,\s64,\s16,\s16,\s4,\s4,\s3> smem=28416
// dc:launch igemm_conv_kernel<(__half|__nv_bfloat16),.*SimtTile<64,\s64,\s16,\s16,\s4,\s4,\s3> smem=17408
// dc:launch igemm_conv_kernel<float,.*SimtTile<64,\s64,\s64,\s8,\s4,\s4,\s2> smem=39168
// dc:launch igemm_conv_kernel<(__half|__nv_bfloat16),.*SimtTile<64,\s64,\s64,\s8,\s4,\s4,\s2> smem=20736
// dc:launch igemm_conv_kernel<float,.*SimtTile<64,\s64,\s32,\s8,\s4,\s4,\s2> smem=22784
// dc:launch igemm_conv_kernel<(__half|__nv_bfloat16),.*SimtTile<64,\s64,\s32,\s8,\s4,\s4,\s2> smem=17408
// dc:launch igemm_conv_kernel<double,.*SimtTile<64,\s64,\s16,\s16,\s4,\s4,\s2> smem=35328
// dc:launch igemm_conv_kernel<.*WmmaTile<128,\s64,\s32,\s32,\s32,\s3> smem=44672
// dc:launch igemm_conv_kernel<.*WmmaTile<64,\s64,\s32,\s32,\s32,\s3> smem=29312
// dc:launch igemm_conv_kernel<.*WmmaTile<64,\s64,\s16,\s32,\s32,\s3> smem=17536
// dc:launch igemm_wgrad_kernel<float,.*SimtTile<64,\s64,\s16,\s16,\s4,\s4,\s3> smem=26112
// dc:launch igemm_wgrad_kernel<(__half|__nv_bfloat16),.*SimtTile<64,\s64,\s16,\s16,\s4,\s4,\s3> smem=17408
// dc:launch igemm_wgrad_kernel<double,.*SimtTile<64,\s64,\s16,\s16,\s4,\s4,\s2> smem=33792
// dc:launch igemm_wgrad_kernel<.*WmmaTile<64,\s64,\s32,\s32,\s32,\s3> smem=27776
#include "kernels/gemm_conv_defs.inc"
