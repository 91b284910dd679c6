// ATen glue of the CUDA kernels: ONE source, included twice —
//   csrc/cuda/ops_cuda.cpp  (DC_TARGET_NS dc_cuda, CUDA tensors, plain op names, CUDA key)
//   csrc/emu/ops_emu.cpp    (DC_TARGET_NS dc_emu,  CPU tensors,  *_emu op names, CPU key)
// so backend "cuda-emu" runs exactly the launch code backend "cuda" runs (validation, layout,
// output allocation, kernel selection, workspace sizing, grid/block/smem computation).
//
// The includer defines, before including this file:
//   DC_TARGET_NS            dc_cuda | dc_emu
//   DC_GLUE_BACKEND         "cuda" | "cuda-emu"      (for messages)
//   DC_GLUE_DEVICE_TYPE     c10::DeviceType::CUDA | c10::DeviceType::CPU
//   dc_glue_stream(t)       void* stream for tensor t's device (nullptr in the emulation)
//   DcGlueGuard             a device guard type constructible from c10::Device
//
// Kernel selection: one function per op (select_conv2d & co below) says which kernel family
// computes a problem. Ops can be called directly (bypassing dilconv.functional), so everything
// is TORCH_CHECKed here; problems outside 32-bit indexing are refused with a clear error.
//
// Layout: every activation of a call is made contiguous in ONE working layout: channels_last iff
// the layout-defining tensor is channels_last and not also plain contiguous (the output rule of
// dilconv/_ops.py); any other strides (views, expanded tensors) are copied to contiguous NCHW
// (or NHWC) first. Weights are made contiguous. Outputs are allocated in the working layout;
// weight gradients contiguous.
#pragma once
#include <ATen/ATen.h>
#include <torch/library.h>

#include <array>
#include <climits>
#include <optional>
#include <string>
#include <tuple>

#include "kernels/depthwise_api.h"
#include "kernels/gemm_api.h"
#include "arg_bounds.h"

namespace DC_TARGET_NS {
namespace glue {

using at::Tensor;
using dw::DType;
using dw::DwShape;

// Largest element count a kernel may index: 32-bit offsets, plus slack for warp-aligned ranges.
constexpr int64_t kMaxElems = int64_t(INT_MAX) - 4096;

inline std::string op_name(const char* op) { return std::string(DC_GLUE_BACKEND) + " " + op; }

inline DType dtype_of(const Tensor& t, const char* op) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::f32;
    case at::kDouble: return DType::f64;
    case at::kHalf: return DType::f16;
    case at::kBFloat16: return DType::bf16;
    default:
      TORCH_CHECK(false, "dilconv ", op_name(op), ": unsupported dtype ", t.scalar_type(),
                  " (float32, float64, float16, bfloat16)");
  }
}

inline bool is_channels_last(const Tensor& t) {
  return t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}
inline at::MemoryFormat fmt(bool cl) {
  return cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

inline void check_tensor(const Tensor& t, const char* what, const char* op, int64_t dim,
                         const Tensor& like) {
  TORCH_CHECK(t.defined(), "dilconv ", op_name(op), ": ", what, " is undefined");
  TORCH_CHECK(t.device().type() == DC_GLUE_DEVICE_TYPE, "dilconv ", op_name(op), ": ", what,
              " must be a ", c10::DeviceTypeName(DC_GLUE_DEVICE_TYPE), " tensor, got ", t.device());
  TORCH_CHECK(t.device() == like.device(), "dilconv ", op_name(op), ": ", what, " is on ",
              t.device(), " but the input is on ", like.device());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), "dilconv ", op_name(op), ": ", what,
              " has dtype ", t.scalar_type(), " but the input has ", like.scalar_type());
  TORCH_CHECK(t.dim() == dim, "dilconv ", op_name(op), ": ", what, " must be ", dim,
              "-D, got sizes ", t.sizes());
  TORCH_CHECK(t.numel() <= kMaxElems, "dilconv ", op_name(op), ": ", what, " has ", t.numel(),
              " elements; the ", DC_GLUE_BACKEND,
              " kernels use 32-bit indexing (at most 2**31 - 4097 elements per tensor)");
}

inline void check_count(int64_t numel, const char* what, const char* op) {
  TORCH_CHECK(numel <= kMaxElems, "dilconv ", op_name(op), ": the ", what, " would have ", numel,
              " elements; the ", DC_GLUE_BACKEND,
              " kernels use 32-bit indexing (at most 2**31 - 4097 elements per tensor)");
}

inline std::array<int, 2> pair(at::IntArrayRef v, const char* what, const char* op, int64_t lo) {
  TORCH_CHECK(v.size() == 2, "dilconv ", op_name(op), ": ", what, " must have 2 values, got ", v);
  for (auto x : v)
    TORCH_CHECK(x >= lo && x <= dilconv::kMaxGeometry, "dilconv ", op_name(op), ": ", what,
                " must be in [", lo, ", ", dilconv::kMaxGeometry, "], got ", v);
  return {int(v[0]), int(v[1])};
}

inline int64_t out_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d) {
  return (in + 2 * p - d * (k - 1) - 1) / s + 1;
}

// The geometry of a depthwise problem, checked. `in` [N, C, H, W], kernel RxS, multiplier M.
inline DwShape dw_shape(at::IntArrayRef in, int64_t m, int64_t r, int64_t s,
                        at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                        bool cl, const char* op) {
  const auto st = pair(stride, "stride", op, 1), pd = pair(padding, "padding", op, 0),
             dl = pair(dilation, "dilation", op, 1);
  TORCH_CHECK(in.size() == 4, "dilconv ", op_name(op), ": expected a 4-D input size, got ", in);
  for (auto v : in) TORCH_CHECK(v >= 0, "dilconv ", op_name(op), ": negative size in ", in);
  TORCH_CHECK(in[1] >= 1 && in[2] >= 1 && in[3] >= 1, "dilconv ", op_name(op),
              ": input channels and spatial sizes must be positive, got ", in);
  TORCH_CHECK(r >= 1 && s >= 1, "dilconv ", op_name(op), ": empty kernel");
  const int64_t p = out_size(in[2], r, st[0], pd[0], dl[0]);
  const int64_t q = out_size(in[3], s, st[1], pd[1], dl[1]);
  TORCH_CHECK(p >= 1 && q >= 1, "dilconv ", op_name(op), ": Calculated padded input size per channel: (",
              in[2] + 2 * pd[0], " x ", in[3] + 2 * pd[1], "). Kernel size: (", dl[0] * (r - 1) + 1,
              " x ", dl[1] * (s - 1) + 1, "). Kernel size can't be greater than actual input size");
  check_count(in[0] * in[1] * in[2] * in[3], "input", op);
  check_count(in[0] * in[1] * m * p * q, "output", op);
  check_count(in[1] * m * r * s, "weight", op);
  DwShape sh{};
  sh.n = int(in[0]);
  sh.c = int(in[1]);
  sh.h = int(in[2]);
  sh.w = int(in[3]);
  sh.m = int(m);
  sh.r = int(r);
  sh.s = int(s);
  sh.p = int(p);
  sh.q = int(q);
  sh.sh = st[0];
  sh.sw = st[1];
  sh.ph = pd[0];
  sh.pw = pd[1];
  sh.dh = dl[0];
  sh.dw = dl[1];
  sh.channels_last = cl;
  return sh;
}

// ---------------------------------------------------------------------------------------------
// kernel selection

enum class Family { depthwise, implicit_gemm, unsupported };

// conv2d / conv2d_input_grad / conv2d_weight_grad with weight [K, C/groups, R, S].
inline Family select_conv2d(int64_t c, int64_t k, int64_t cg, int64_t groups) {
  if (groups == c && cg == 1 && k % c == 0) return Family::depthwise;
  return Family::implicit_gemm;  // dense / grouped (kernels/gemm_glue.inc)
}

[[noreturn]] inline void refuse(const char* op, int64_t c, int64_t groups) {
  TORCH_CHECK_NOT_IMPLEMENTED(false, "dilconv ", op_name(op), ": only depthwise convolution (groups == ",
                              "input channels) is implemented by this backend; got groups=", groups,
                              " with ", c, " input channels (use backend 'torch' or 'cpu')");
}

inline void check_conv_weight(const Tensor& w, int64_t c, int64_t groups, const char* op) {
  TORCH_CHECK(groups >= 1, "dilconv ", op_name(op), ": groups must be positive, got ", groups);
  TORCH_CHECK(c % groups == 0 && w.size(1) * groups == c, "dilconv ", op_name(op), ": weight ",
              w.sizes(), " with groups=", groups, " does not match ", c, " input channels");
  TORCH_CHECK(w.size(0) >= 1 && w.size(0) % groups == 0, "dilconv ", op_name(op), ": weight ",
              w.sizes(), " output channels must be a positive multiple of groups=", groups);
}

#include "kernels/gemm_glue.inc"

// ---------------------------------------------------------------------------------------------
// ops

inline Tensor conv2d(const Tensor& input, const Tensor& weight, const std::optional<Tensor>& bias,
                     at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                     int64_t groups) {
  const char* op = "conv2d";
  check_tensor(input, "input", op, 4, input);
  check_tensor(weight, "weight", op, 4, input);
  check_conv_weight(weight, input.size(1), groups, op);
  const int64_t k = weight.size(0);
  if (bias.has_value() && bias->defined()) {
    check_tensor(*bias, "bias", op, 1, input);
    TORCH_CHECK(bias->size(0) == k, "dilconv ", op_name(op), ": bias has ", bias->size(0),
                " elements, expected ", k);
  }
  if (select_conv2d(input.size(1), k, weight.size(1), groups) != Family::depthwise)
    return gemm_conv2d(input, weight, bias, stride, padding, dilation, groups);
  const bool cl = is_channels_last(input);
  const DwShape s = dw_shape(input.sizes(), k / input.size(1), weight.size(2), weight.size(3),
                             stride, padding, dilation, cl, op);
  const DType dt = dtype_of(input, op);
  DcGlueGuard guard(input.device());
  const Tensor x = input.contiguous(fmt(cl));
  const Tensor w = weight.contiguous();
  Tensor b;
  if (bias.has_value() && bias->defined()) b = bias->contiguous();
  Tensor y = at::empty({s.n, k, s.p, s.q}, input.options().memory_format(fmt(cl)));
  dw::depthwise_fwd(s, dt, x.const_data_ptr(), w.const_data_ptr(),
                    b.defined() ? b.const_data_ptr() : nullptr, y.mutable_data_ptr(), false,
                    dc_glue_stream(x));
  return y;
}

inline Tensor conv2d_input_grad(const Tensor& grad_output, const Tensor& weight,
                                at::IntArrayRef input_size, at::IntArrayRef stride,
                                at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const char* op = "conv2d_input_grad";
  check_tensor(grad_output, "grad_output", op, 4, grad_output);
  check_tensor(weight, "weight", op, 4, grad_output);
  TORCH_CHECK(input_size.size() == 4, "dilconv ", op_name(op), ": input_size must have 4 values");
  check_conv_weight(weight, input_size[1], groups, op);
  const int64_t k = weight.size(0);
  if (select_conv2d(input_size[1], k, weight.size(1), groups) != Family::depthwise)
    return gemm_conv2d_input_grad(grad_output, weight, input_size, stride, padding, dilation, groups);
  const bool cl = is_channels_last(grad_output);
  const DwShape s = dw_shape(input_size, k / input_size[1], weight.size(2), weight.size(3), stride,
                             padding, dilation, cl, op);
  TORCH_CHECK(grad_output.size(0) == s.n && grad_output.size(1) == k && grad_output.size(2) == s.p &&
                  grad_output.size(3) == s.q,
              "dilconv ", op_name(op), ": grad_output has sizes ", grad_output.sizes(),
              " but the convolution of an input of size ", input_size, " gives [", s.n, ", ", k,
              ", ", s.p, ", ", s.q, "]");
  const DType dt = dtype_of(grad_output, op);
  DcGlueGuard guard(grad_output.device());
  const Tensor g = grad_output.contiguous(fmt(cl));
  const Tensor w = weight.contiguous();
  Tensor gx = at::empty(input_size, grad_output.options().memory_format(fmt(cl)));
  dw::depthwise_dgrad(s, dt, g.const_data_ptr(), w.const_data_ptr(), gx.mutable_data_ptr(),
                      dc_glue_stream(g));
  return gx;
}

inline Tensor conv2d_weight_grad(const Tensor& grad_output, const Tensor& input,
                                 at::IntArrayRef weight_size, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const char* op = "conv2d_weight_grad";
  check_tensor(input, "input", op, 4, input);
  check_tensor(grad_output, "grad_output", op, 4, input);
  TORCH_CHECK(weight_size.size() == 4, "dilconv ", op_name(op), ": weight_size must have 4 values");
  TORCH_CHECK(groups >= 1 && weight_size[0] >= 1 && weight_size[0] % groups == 0 &&
                  weight_size[1] * groups == input.size(1),
              "dilconv ", op_name(op), ": weight_size ", weight_size, " with groups=", groups,
              " does not match ", input.size(1), " input channels");
  const int64_t k = weight_size[0];
  if (select_conv2d(input.size(1), k, weight_size[1], groups) != Family::depthwise)
    return gemm_conv2d_weight_grad(grad_output, input, weight_size, stride, padding, dilation, groups);
  const bool cl = is_channels_last(input);
  const DwShape s = dw_shape(input.sizes(), k / input.size(1), weight_size[2], weight_size[3],
                             stride, padding, dilation, cl, op);
  TORCH_CHECK(grad_output.size(0) == s.n && grad_output.size(1) == k && grad_output.size(2) == s.p &&
                  grad_output.size(3) == s.q,
              "dilconv ", op_name(op), ": grad_output has sizes ", grad_output.sizes(), ", expected [",
              s.n, ", ", k, ", ", s.p, ", ", s.q, "]");
  const DType dt = dtype_of(input, op);
  DcGlueGuard guard(input.device());
  const Tensor x = input.contiguous(fmt(cl));
  const Tensor g = grad_output.contiguous(fmt(cl));
  Tensor gw = at::empty(weight_size, input.options());
  const size_t ws_bytes = dw::depthwise_wgrad_workspace_bytes(s, dt);
  Tensor ws = at::empty({int64_t(ws_bytes)}, input.options().dtype(at::kByte));
  dw::depthwise_wgrad(s, dt, g.const_data_ptr(), x.const_data_ptr(), gw.mutable_data_ptr(),
                      ws_bytes ? ws.mutable_data_ptr() : nullptr, dc_glue_stream(x));
  return gw;
}

inline Tensor conv_transpose2d(const Tensor& input, const Tensor& weight,
                               const std::optional<Tensor>& bias, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef output_padding,
                               int64_t groups, at::IntArrayRef dilation) {
  return gemm_conv_transpose2d(input, weight, bias, stride, padding, output_padding, groups, dilation);
}

// separable_conv2d's tensors, checked; returns the depthwise shape.
struct SepArgs {
  DwShape s;
  int64_t o, cm;
};

inline SepArgs check_separable(const Tensor& input, const Tensor& dw_weight,
                               const std::optional<Tensor>& dw_bias, const Tensor& pw_weight,
                               const std::optional<Tensor>& pw_bias, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation, bool cl,
                               const char* op) {
  check_tensor(input, "input", op, 4, input);
  check_tensor(dw_weight, "dw_weight", op, 4, input);
  check_tensor(pw_weight, "pw_weight", op, 4, input);
  const int64_t c = input.size(1), cm = dw_weight.size(0), o = pw_weight.size(0);
  TORCH_CHECK(c >= 1 && dw_weight.size(1) == 1 && cm >= 1 && cm % c == 0, "dilconv ", op_name(op),
              ": dw_weight must be [C*M, 1, R, S] for C=", c, ", got ", dw_weight.sizes());
  TORCH_CHECK(o >= 1 && pw_weight.size(1) == cm && pw_weight.size(2) == 1 && pw_weight.size(3) == 1,
              "dilconv ", op_name(op), ": pw_weight must be [K, ", cm, ", 1, 1], got ", pw_weight.sizes());
  if (dw_bias.has_value() && dw_bias->defined()) {
    check_tensor(*dw_bias, "dw_bias", op, 1, input);
    TORCH_CHECK(dw_bias->size(0) == cm, "dilconv ", op_name(op), ": dw_bias must have ", cm, " elements");
  }
  if (pw_bias.has_value() && pw_bias->defined()) {
    check_tensor(*pw_bias, "pw_bias", op, 1, input);
    TORCH_CHECK(pw_bias->size(0) == o, "dilconv ", op_name(op), ": pw_bias must have ", o, " elements");
  }
  SepArgs a;
  a.s = dw_shape(input.sizes(), cm / c, dw_weight.size(2), dw_weight.size(3), stride, padding,
                 dilation, cl, op);
  a.o = o;
  a.cm = cm;
  check_count(int64_t(a.s.n) * o * a.s.p * a.s.q, "output", op);
  check_count(o * cm, "pw_weight", op);
  return a;
}

inline const void* ptr_or_null(const Tensor& t) { return t.defined() ? t.const_data_ptr() : nullptr; }
inline Tensor opt_contig(const std::optional<Tensor>& t) {
  return t.has_value() && t->defined() ? t->contiguous() : Tensor();
}

inline Tensor separable_conv2d(const Tensor& input, const Tensor& dw_weight,
                               const std::optional<Tensor>& dw_bias, const Tensor& pw_weight,
                               const std::optional<Tensor>& pw_bias, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation, bool mid_relu,
                               bool out_relu) {
  const char* op = "separable_conv2d";
  const bool cl = is_channels_last(input);
  const SepArgs a = check_separable(input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding,
                                    dilation, cl, op);
  const DType dt = dtype_of(input, op);
  DcGlueGuard guard(input.device());
  const Tensor x = input.contiguous(fmt(cl));
  const Tensor dww = dw_weight.contiguous(), pww = pw_weight.contiguous();
  const Tensor dwb = opt_contig(dw_bias), pwb = opt_contig(pw_bias);
  Tensor out = at::empty({a.s.n, a.o, a.s.p, a.s.q}, input.options().memory_format(fmt(cl)));
  void* stream = dc_glue_stream(x);
  if (!dw::separable_fwd(a.s, int(a.o), dt, x.const_data_ptr(), dww.const_data_ptr(),
                         ptr_or_null(dwb), pww.const_data_ptr(), ptr_or_null(pwb),
                         out.mutable_data_ptr(), mid_relu, out_relu, stream)) {
    // the window of even a one-pixel tile exceeds shared memory: unfused, through global memory
    check_count(int64_t(a.s.n) * a.cm * a.s.p * a.s.q, "intermediate", op);
    Tensor mid = at::empty({a.s.n, a.cm, a.s.p, a.s.q}, input.options().memory_format(fmt(cl)));
    dw::depthwise_fwd(a.s, dt, x.const_data_ptr(), dww.const_data_ptr(), ptr_or_null(dwb),
                      mid.mutable_data_ptr(), mid_relu, stream);
    const dw::PwShape ps{a.s.n, a.s.p * a.s.q, int(a.o), int(a.cm), int(a.cm), 1, cl};
    dw::pointwise(ps, dt, mid.const_data_ptr(), pww.const_data_ptr(), ptr_or_null(pwb), nullptr,
                  out.mutable_data_ptr(),
                  out_relu ? dw::PwEpilogue::bias_relu : dw::PwEpilogue::bias, stream);
  }
  return out;
}

// Backward of the fused op, as the two-conv path would compute it (and materialising no more):
//   mid = act(dw(x) + dw_b)            recomputed (the fused forward never stored it)
//   gz  = grad_out * (pw(mid) + pw_b > 0)   if out_relu, else grad_out
//   gmid = (pw^T gz) * (mid > 0)        if mid_relu
//   g_pw = gz mid^T, g_pwb = sum gz, g_dwb = sum gmid, gx = dgrad(gmid), g_dw = wgrad(gmid, x)
// Every reduction is deterministic (fixed order, no atomics).
inline std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> separable_conv2d_backward(
    const Tensor& grad_output, const Tensor& input, const Tensor& dw_weight,
    const std::optional<Tensor>& dw_bias, const Tensor& pw_weight,
    const std::optional<Tensor>& pw_bias, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, bool mid_relu, bool out_relu) {
  const char* op = "separable_conv2d_backward";
  check_tensor(grad_output, "grad_output", op, 4, input);
  const bool cl = is_channels_last(grad_output);
  const SepArgs a = check_separable(input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding,
                                    dilation, cl, op);
  const DwShape& s = a.s;
  TORCH_CHECK(grad_output.size(0) == s.n && grad_output.size(1) == a.o && grad_output.size(2) == s.p &&
                  grad_output.size(3) == s.q,
              "dilconv ", op_name(op), ": grad_output has sizes ", grad_output.sizes(), ", expected [",
              s.n, ", ", a.o, ", ", s.p, ", ", s.q, "]");
  check_count(int64_t(s.n) * a.cm * s.p * s.q, "intermediate", op);
  const DType dt = dtype_of(input, op);
  DcGlueGuard guard(input.device());
  void* stream = dc_glue_stream(input);
  const Tensor x = input.contiguous(fmt(cl));
  const Tensor gy = grad_output.contiguous(fmt(cl));
  const Tensor dww = dw_weight.contiguous(), pww = pw_weight.contiguous();
  const Tensor dwb = opt_contig(dw_bias), pwb = opt_contig(pw_bias);
  const auto opts = input.options();
  const int pixels = s.p * s.q;
  const int cm = int(a.cm), o = int(a.o);

  Tensor mid = at::empty({s.n, a.cm, s.p, s.q}, opts.memory_format(fmt(cl)));
  dw::depthwise_fwd(s, dt, x.const_data_ptr(), dww.const_data_ptr(), ptr_or_null(dwb),
                    mid.mutable_data_ptr(), mid_relu, stream);
  Tensor gz = gy;
  if (out_relu) {
    gz = at::empty_like(gy);
    const dw::PwShape ps{s.n, pixels, o, cm, cm, 1, cl};
    dw::pointwise(ps, dt, mid.const_data_ptr(), pww.const_data_ptr(), ptr_or_null(pwb),
                  gy.const_data_ptr(), gz.mutable_data_ptr(), dw::PwEpilogue::relu_grad, stream);
  }
  Tensor gmid = at::empty_like(mid);
  {
    const dw::PwShape ps{s.n, pixels, cm, o, 1, cm, cl};  // W^T: element (j, o) at o*cm + j
    dw::pointwise(ps, dt, gz.const_data_ptr(), pww.const_data_ptr(), nullptr,
                  mid_relu ? mid.const_data_ptr() : nullptr, gmid.mutable_data_ptr(),
                  mid_relu ? dw::PwEpilogue::mask_pos : dw::PwEpilogue::plain, stream);
  }
  Tensor gpw = at::empty(pw_weight.sizes(), opts);
  {
    Tensor ws = at::empty({int64_t(dw::outer_sum_workspace_bytes(s.n, pixels, o, cm, dt))},
                          opts.dtype(at::kByte));
    dw::outer_sum(s.n, pixels, o, cm, cl, dt, gz.const_data_ptr(), mid.const_data_ptr(),
                  gpw.mutable_data_ptr(), ws.numel() ? ws.mutable_data_ptr() : nullptr, stream);
  }
  Tensor gpb = at::empty({a.o}, opts), gdb = at::empty({a.cm}, opts);
  {
    Tensor ws = at::empty({int64_t(dw::channel_sum_workspace_bytes(s.n, pixels, o, dt))},
                          opts.dtype(at::kByte));
    dw::channel_sum(s.n, pixels, o, cl, dt, gz.const_data_ptr(), gpb.mutable_data_ptr(),
                    ws.numel() ? ws.mutable_data_ptr() : nullptr, stream);
    Tensor ws2 = at::empty({int64_t(dw::channel_sum_workspace_bytes(s.n, pixels, cm, dt))},
                           opts.dtype(at::kByte));
    dw::channel_sum(s.n, pixels, cm, cl, dt, gmid.const_data_ptr(), gdb.mutable_data_ptr(),
                    ws2.numel() ? ws2.mutable_data_ptr() : nullptr, stream);
  }
  Tensor gx = at::empty(input.sizes(), opts.memory_format(fmt(cl)));
  dw::depthwise_dgrad(s, dt, gmid.const_data_ptr(), dww.const_data_ptr(), gx.mutable_data_ptr(),
                      stream);
  Tensor gdw = at::empty(dw_weight.sizes(), opts);
  {
    Tensor ws = at::empty({int64_t(dw::depthwise_wgrad_workspace_bytes(s, dt))}, opts.dtype(at::kByte));
    dw::depthwise_wgrad(s, dt, gmid.const_data_ptr(), x.const_data_ptr(), gdw.mutable_data_ptr(),
                        ws.numel() ? ws.mutable_data_ptr() : nullptr, stream);
  }
  return {gx, gdw, gdb, gpw, gpb};
}

// Registers the implementations on `m` for the op names with `suffix` ("" or "_emu").
inline void register_impls(torch::Library& m, const std::string& suffix) {
  m.impl(("conv2d" + suffix).c_str(), &conv2d);
  m.impl(("conv2d_input_grad" + suffix).c_str(), &conv2d_input_grad);
  m.impl(("conv2d_weight_grad" + suffix).c_str(), &conv2d_weight_grad);
  m.impl(("conv_transpose2d" + suffix).c_str(), &conv_transpose2d);
  m.impl(("separable_conv2d" + suffix).c_str(), &separable_conv2d);
  m.impl(("separable_conv2d_backward" + suffix).c_str(), &separable_conv2d_backward);
}

}  // namespace glue
}  // namespace DC_TARGET_NS
