// Host-side interface of the depthwise-family CUDA kernels (depthwise conv fprop/dgrad/wgrad,
// fused separable conv and the pieces of its backward).
//
// Plain C++ with no CUDA, emulation or ATen types, so that both the ATen glue (compiled by the
// host compiler) and the kernel translation units (nvcc: csrc/cuda/*.cu; host compiler against
// the emulation: csrc/emu/*_emu.cpp) can include it. Tensors cross it as untyped pointers plus a
// DType because the 16-bit types differ between the compilers (__half vs c10::Half: same bits).
// The functions live in DC_TARGET_NS (dc_cuda for nvcc, dc_emu for the emulation), so both
// builds link into one library; the includer defines DC_TARGET_NS first.
//
// Indexing is 32-bit: callers (aten_glue.h) refuse problems with any tensor of 2^31 elements or
// more, and every activation is contiguous in NCHW or NHWC (channels_last) order.
#pragma once
#include <cstddef>
#include <cstdint>

#ifndef DC_TARGET_NS
#error "define DC_TARGET_NS (dc_cuda or dc_emu) before including depthwise_api.h"
#endif

namespace DC_TARGET_NS {
namespace dw {

enum class DType : int { f32 = 0, f64 = 1, f16 = 2, bf16 = 3 };

// A depthwise convolution: input [N, C, H, W], weight [C*M, 1, R, S], output [N, C*M, P, Q].
struct DwShape {
  int n, c, h, w;  // input
  int m;           // channel multiplier: output channel k = c*M + j reads input channel c
  int r, s;        // kernel
  int p, q;        // output spatial size
  int sh, sw, ph, pw, dh, dw;
  bool channels_last;  // layout of every activation tensor of the call (weights: contiguous)
  int k() const { return c * m; }
};

// y = [relu](dwconv(x, w) + bias); bias may be null.
void depthwise_fwd(const DwShape& s, DType t, const void* x, const void* w, const void* bias,
                   void* y, bool relu, void* stream);
// gx = dgrad(gy, w)
void depthwise_dgrad(const DwShape& s, DType t, const void* gy, const void* w, void* gx,
                     void* stream);
// gw = wgrad(gy, x), deterministic: per-block partial sums into `workspace` (size from
// depthwise_wgrad_workspace_bytes), then a fixed-order reduction.
size_t depthwise_wgrad_workspace_bytes(const DwShape& s, DType t);
void depthwise_wgrad(const DwShape& s, DType t, const void* gy, const void* x, void* gw,
                     void* workspace, void* stream);

// Fused separable: out = [relu](pw · [relu](dwconv(x) + dw_bias) + pw_bias), pw weight [O, C*M].
// Returns false (and does nothing) when no tile's window fits shared memory (enormous dilation):
// the caller then runs depthwise_fwd + pointwise.
bool separable_fwd(const DwShape& s, int o, DType t, const void* x, const void* dw_w,
                   const void* dw_b, const void* pw_w, const void* pw_b, void* out, bool mid_relu,
                   bool out_relu, void* stream);

// Pointwise (1x1) product over the pixels of each image, for the separable backward:
//   out[n, i, pix] = epilogue(sum_j W[i*w_si + j*w_sj] * in[n, j, pix])
// with activations in the layout of `s.channels_last` and `pixels` pixels per image.
enum class PwEpilogue : int {
  plain = 0,      // out = acc
  relu_grad = 1,  // out = aux * (acc + bias > 0): grad through an output ReLU (aux = grad_out)
  mask_pos = 2,   // out = acc * (aux > 0): grad through a ReLU whose output is aux
  bias = 3,       // out = acc + bias
  bias_relu = 4,  // out = relu(acc + bias)
};
struct PwShape {
  int n, pixels;
  int rows, inner;  // output channels, input channels
  int w_si, w_sj;   // weight element strides (transposed weights via swapped strides)
  bool channels_last;
};
void pointwise(const PwShape& s, DType t, const void* in, const void* w, const void* bias,
               const void* aux, void* out, PwEpilogue ep, void* stream);

// gw[i, j] = sum_{n, pix} a[n, i, pix] * b[n, j, pix]  (deterministic, like depthwise_wgrad)
size_t outer_sum_workspace_bytes(int n, int pixels, int rows_a, int rows_b, DType t);
void outer_sum(int n, int pixels, int rows_a, int rows_b, bool channels_last, DType t,
               const void* a, const void* b, void* gw, void* workspace, void* stream);
// g[c] = sum_{n, pix} a[n, c, pix]  (deterministic)
size_t channel_sum_workspace_bytes(int n, int pixels, int channels, DType t);
void channel_sum(int n, int pixels, int channels, bool channels_last, DType t, const void* a,
                 void* out, void* workspace, void* stream);

}  // namespace dw
}  // namespace DC_TARGET_NS
