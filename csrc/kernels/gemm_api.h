// Host-side interface of the implicit-GEMM convolution kernels (csrc/kernels/gemm_conv.cuh):
// dense and grouped conv2d fprop / dgrad / wgrad; conv_transpose2d is dgrad plus a bias.
//
// Plain C++ (no CUDA, emulation or ATen types) so the ATen glue (host compiler) and the kernel
// translation units (csrc/cuda/gemm_conv.cu under nvcc, csrc/emu/gemm_emu.cpp against the
// emulation) can all include it. Tensors cross it as untyped pointers with element strides and a
// DType (the 16-bit types differ between the compilers; the bits are the same). The functions
// live in DC_TARGET_NS (dc_cuda / dc_emu) so both builds link into one library.
//
// Any strides are accepted (NCHW, channels_last, views); element offsets must fit in int32
// (std::invalid_argument otherwise). Errors are std::invalid_argument / std::runtime_error.
#pragma once
#include <cstddef>
#include <cstdint>

#ifndef DC_TARGET_NS
#error "define DC_TARGET_NS (dc_cuda or dc_emu) before including gemm_api.h"
#endif

namespace DC_TARGET_NS {
namespace igemm {

enum class DType : int { f32 = 0, f64 = 1, f16 = 2, bf16 = 3 };

// The conv2d problem. For dgrad and conv_transpose2d, (n, c, h, w) is the tensor computed and
// (k, p, q) the gradient / transposed-conv input it is computed from.
struct ConvShape {
  int n, c, h, w;  // conv2d input
  int k, p, q;     // conv2d output channels and size
  int r, s;        // kernel
  int stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
  int groups;
};

struct Act {  // an activation tensor [N][C][H][W] by element strides
  const void* ptr;
  int64_t sn, sc, sh, sw;
};

// A weight [groups][K/g][C/g][R][S] by element strides (sk: output channel within the group,
// sc: input channel within the group). torch's [K][C/g][R][S] tensor w is
// {sg = (K/g) * w.stride(0), sk = w.stride(0), sc = w.stride(1), sr = w.stride(2), ss = w.stride(3)};
// a permuted copy ([g][r][s][c][k] for fprop, [g][r][s][k][c] for dgrad) makes the B-tile
// loads contiguous 16-byte vectors.
struct Wt {
  const void* ptr;
  int64_t sg, sk, sc, sr, ss;
};

// Tile configurations of fprop/dgrad; kAuto = the heuristic (select_conv_config).
enum Config : int {
  kAuto = -1,
  kSimt64 = 0,       // SIMT 64x64x16, 3 stages (fp32/fp16/bf16)
  kSimtNarrow = 1,   // SIMT 64x64 with a 64-channel A tile that packs narrow groups
  kWmma128 = 2,      // tensor cores 128x64x32, 3 stages (fp16/bf16)
  kWmma64 = 3,       // tensor cores 64x64x32, 3 stages (fp16/bf16), for small problems
  kSimt64Double = 4  // SIMT 64x64x16, 2 stages (fp64)
};

const char* config_name(int config);
// The configs valid for a dtype in this build (count; at most `cap` written).
int conv_configs(DType t, int* out, int cap);
// The heuristic's pick for fprop (dgrad = false) or dgrad / conv_transpose2d (dgrad = true).
int select_config(const ConvShape& sh, DType t, bool dgrad);

// y = conv2d(x, w) + bias (bias may be null)
void conv_fprop(const ConvShape& sh, DType t, Act x, Wt w, const void* bias, Act y, void* stream,
                int config = kAuto);
// dx = conv2d_input_grad(dy, w) + bias[c] (bias may be null; conv_transpose2d passes its own)
void conv_dgrad(const ConvShape& sh, DType t, Act dy, Wt w, const void* bias, Act dx, void* stream,
                int config = kAuto);
// dw[k][c][r][s] (element strides dw_s) = conv2d_weight_grad(dy, x), deterministic: split-K
// partials into `workspace` (conv_wgrad_workspace_bytes bytes), summed in a fixed order.
size_t conv_wgrad_workspace_bytes(const ConvShape& sh, DType t);
void conv_wgrad(const ConvShape& sh, DType t, Act dy, Act x, void* dw, const int64_t dw_s[4],
                void* workspace, size_t workspace_bytes, void* stream);
// The split-K factor wgrad uses for this problem (tests and reports).
int conv_wgrad_splits(const ConvShape& sh, DType t);

}  // namespace igemm
}  // namespace DC_TARGET_NS
