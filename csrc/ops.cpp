// Operator schemas of the `dilconv` namespace: the one place that says what every op takes and
// returns. Implementations live elsewhere, one file per dispatch key and backend:
//   csrc/cpu/*.cpp   -> CPU key of the plain names      (backend "cpu")
//   csrc/cuda/*.cpp  -> CUDA key of the plain names     (backend "cuda")
//   csrc/emu/*.cpp   -> CPU key of the *_emu names      (backend "cuda-emu": the CUDA kernels
//                       compiled for the host against the CUDA execution-model emulation)
// The Triton backend defines its *_triton ops from Python (dilconv/triton/).
// Fake (meta) kernels and autograd formulas are registered in Python (dilconv/_ops.py) for all
// variants at once, because the variants share these schemas.
//
// Conventions shared by every implementation:
//   * weight layouts are torch's: conv2d [K, C/g, R, S]; conv_transpose2d [C, K/g, R, S].
//   * an output is channels_last when its layout-defining input is channels_last and not also
//     plain contiguous (dilconv._ops.output_memory_format); weight gradients are contiguous.
//   * separable_conv2d: mid = act(dw(x) + dw_bias), out = act(pw(mid) + pw_bias). A folded
//     BatchNorm between the two is passed as an already-scaled dw_weight/dw_bias (exact).
#include <Python.h>
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <array>
#include <cmath>
#include <string>
#include <tuple>

#include "cpu/kernels.h"
#include "arg_bounds.h"

// A bare Python module so that `import dilconv._C` loads this library (and its op
// registrations) without pulling pybind11 into the build.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

namespace {

void define_ops(torch::Library& m, const std::string& suffix) {
  auto def = [&](const std::string& name, const std::string& rest) {
    m.def((name + suffix + rest).c_str());
  };
  // fprop
  def("conv2d",
      "(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
      "int[2] dilation, int groups) -> Tensor");
  // dgrad: gradient w.r.t. the input of conv2d (input_size = [N, C, H, W])
  def("conv2d_input_grad",
      "(Tensor grad_output, Tensor weight, int[4] input_size, int[2] stride, int[2] padding, "
      "int[2] dilation, int groups) -> Tensor");
  // wgrad: gradient w.r.t. the weight of conv2d (weight_size = [K, C/g, R, S])
  def("conv2d_weight_grad",
      "(Tensor grad_output, Tensor input, int[4] weight_size, int[2] stride, int[2] padding, "
      "int[2] dilation, int groups) -> Tensor");
  // transposed conv (the dgrad gather of conv2d, plus bias). Its backward is conv2d (input grad)
  // and conv2d_weight_grad with the roles of input and grad_output swapped.
  def("conv_transpose2d",
      "(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
      "int[2] output_padding, int groups, int[2] dilation) -> Tensor");
  // fused depthwise (possibly dilated, channel multiplier = dw_weight.size(0) / C) + pointwise
  def("separable_conv2d",
      "(Tensor input, Tensor dw_weight, Tensor? dw_bias, Tensor pw_weight, Tensor? pw_bias, "
      "int[2] stride, int[2] padding, int[2] dilation, bool mid_relu, bool out_relu) -> Tensor");
  // returns (grad_input, grad_dw_weight, grad_dw_bias, grad_pw_weight, grad_pw_bias); the bias
  // gradients are returned even when the bias is None (callers drop them).
  def("separable_conv2d_backward",
      "(Tensor grad_output, Tensor input, Tensor dw_weight, Tensor? dw_bias, Tensor pw_weight, "
      "Tensor? pw_bias, int[2] stride, int[2] padding, int[2] dilation, bool mid_relu, "
      "bool out_relu) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

// The whole backward of conv2d in one call, so that a backend can read grad_output once for all
// three gradients (the CPU's depthwise kernels do). Plain names only; this generic version (any
// device) is the separate gradient ops, and the CPU key overrides it (csrc/cpu/conv_cpu.cpp).
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_generic(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    std::array<bool, 3> mask) {
  static const auto dgrad =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("dilconv::conv2d_input_grad", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, at::IntArrayRef, at::IntArrayRef,
                            at::IntArrayRef, at::IntArrayRef, int64_t)>();
  static const auto wgrad =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("dilconv::conv2d_weight_grad", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, at::IntArrayRef, at::IntArrayRef,
                            at::IntArrayRef, at::IntArrayRef, int64_t)>();
  at::Tensor gx, gw, gb;
  if (mask[0]) gx = dgrad.call(grad_output, weight, input.sizes(), stride, padding, dilation, groups);
  if (mask[1]) gw = wgrad.call(grad_output, input, weight.sizes(), stride, padding, dilation, groups);
  if (mask[2]) gb = grad_output.sum({0, 2, 3});
  return {gx, gw, gb};
}

// conv2d then clamp: the generic version (any device) is the two ops; the CPU key fuses the
// clamp into the conv's store (csrc/cpu/conv_cpu.cpp).
at::Tensor conv2d_clamp_generic(const at::Tensor& input, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                double min, double max) {
  TORCH_CHECK(!std::isnan(min) && !std::isnan(max) && min <= max,
              "dilconv::conv2d_clamp: need min <= max (not NaN), got min=", min, ", max=", max);
  static const auto conv =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("dilconv::conv2d", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                            at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t)>();
  at::Tensor y = conv.call(input, weight, bias, stride, padding, dilation, groups);
  return std::isinf(max) ? y.clamp_min_(min) : y.clamp_(min, max);
}

// bilinear resize: the generic version (any device) is torch's upsample_bilinear2d; the CPU key
// is csrc/cpu/resize_cpu.cpp.
at::Tensor resize_bilinear_generic(const at::Tensor& input, at::IntArrayRef size,
                                   bool align_corners) {
  return at::upsample_bilinear2d(input, size, align_corners, std::nullopt, std::nullopt);
}

at::Tensor resize_bilinear_backward_generic(const at::Tensor& grad_output,
                                            at::IntArrayRef input_size, bool align_corners) {
  TORCH_CHECK(grad_output.dim() == 4, "dilconv::resize_bilinear_backward: expected grad_output "
              "to be 4-D, got ", grad_output.sizes());
  return at::upsample_bilinear2d_backward(grad_output, grad_output.sizes().slice(2), input_size,
                                          align_corners, std::nullopt, std::nullopt);
}

// batch norm with batch statistics, then clamp: the generic version (any device) in ATen ops;
// the CPU key is csrc/cpu/batchnorm_cpu.cpp (two passes over the tensor each way).
bool no_clamp(double min, double max) {
  return std::isinf(min) && min < 0 && std::isinf(max) && max > 0;
}

// the forward's per-channel scale and shift: y = clamp(input * scale + shift), recomputed by the
// backward (where the clamp passed the gradient) by the same ops on the same values
std::pair<at::Tensor, at::Tensor> batch_norm_affine(const at::Tensor& mean, const at::Tensor& invstd,
                                                    const std::optional<at::Tensor>& weight,
                                                    const std::optional<at::Tensor>& bias) {
  at::Tensor scale = invstd;
  if (weight.has_value() && weight->defined()) scale = scale * *weight;
  at::Tensor shift = -mean * scale;
  if (bias.has_value() && bias->defined()) shift = shift + *bias;
  return {scale, shift};
}

at::Tensor batch_norm_pre(const at::Tensor& input, const at::Tensor& scale, const at::Tensor& shift) {
  const int64_t C = input.size(1);
  return input * scale.view({1, C, 1, 1}) + shift.view({1, C, 1, 1});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm_act_generic(
    const at::Tensor& input, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, double eps, double min, double max) {
  TORCH_CHECK(!std::isnan(min) && !std::isnan(max) && min <= max,
              "dilconv::batch_norm_act: need min <= max (not NaN), got min=", min, ", max=", max);
  TORCH_CHECK(input.dim() == 4, "dilconv::batch_norm_act: expected a 4-D input, got ",
              input.sizes());
  auto [var, mean] = at::var_mean(input, at::IntArrayRef{0, 2, 3}, at::Scalar(0), false);
  at::Tensor invstd = (var + eps).rsqrt();
  const auto [scale, shift] = batch_norm_affine(mean, invstd, weight, bias);
  at::Tensor y = batch_norm_pre(input, scale, shift);
  if (!no_clamp(min, max)) y = y.clamp(min, max);
  return {y, mean, invstd, var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_act_backward_generic(
    const at::Tensor& grad_output, const at::Tensor& input, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& mean, const at::Tensor& invstd,
    double min, double max, std::array<bool, 3> mask) {
  TORCH_CHECK(grad_output.sizes() == input.sizes(), "dilconv::batch_norm_act_backward: ",
              "grad_output ", grad_output.sizes(), " and input ", input.sizes(),
              " must have the same shape");
  const int64_t C = input.size(1);
  const double M = double(input.numel() / std::max<int64_t>(C, 1));
  at::Tensor gz = grad_output;
  if (!no_clamp(min, max)) {
    const auto [scale, shift] = batch_norm_affine(mean, invstd, weight, bias);
    const at::Tensor pre = batch_norm_pre(input, scale, shift);
    gz = grad_output * ((pre > min) & (pre < max));
  }
  at::Tensor xm = input - mean.view({1, C, 1, 1});
  at::Tensor s1 = gz.sum({0, 2, 3}), s2 = (gz * xm).sum({0, 2, 3});
  at::Tensor gx, gw, gb;
  if (mask[0]) {
    at::Tensor k1 = invstd;
    if (weight.has_value() && weight->defined()) k1 = k1 * *weight;
    const at::Tensor k2 = k1 * s1 / M, k3 = k1 * invstd * invstd * s2 / M;
    gx = k1.view({1, C, 1, 1}) * gz - k2.view({1, C, 1, 1}) - k3.view({1, C, 1, 1}) * xm;
  }
  if (mask[1]) gw = s2 * invstd;
  if (mask[2]) gb = s1;
  return {gx, gw, gb};
}

}  // namespace

TORCH_LIBRARY(dilconv, m) {
  // which instruction-set variant of the CPU kernels this process runs ("avx512", "avx2" or
  // "base"; DILCONV_CPU_ISA lowers it): for reports and tests. No tensor argument, so one
  // catch-all kernel.
  m.def("cpu_isa() -> str", [] { return std::string(dilconv::cpu::kernels_f32().isa); });
  // the CPU's maker ("intel", "amd" or "other"), for the auto policy and reports
  m.def("cpu_vendor() -> str", [] { return std::string(dilconv::cpu::cpu_vendor()); });
  // the largest stride, padding or dilation the ops take (dilconv.functional.MAX_GEOMETRY)
  m.def("max_geometry() -> int", [] { return dilconv::kMaxGeometry; });
  define_ops(m, "");      // backends "cpu" (CPU key) and "cuda" (CUDA key)
  define_ops(m, "_emu");  // backend "cuda-emu" (CPU key)
  // (grad_input, grad_weight, grad_bias); an output whose output_mask entry is false is None
  m.def("conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, int[2] stride, "
        "int[2] padding, int[2] dilation, int groups, bool[3] output_mask) -> "
        "(Tensor, Tensor, Tensor)");
  // conv2d followed by clamp(min, max) (max = inf for ReLU), for the activations that follow
  // a folded BatchNorm (dilconv.conv_norm_act). Plain names only.
  m.def("conv2d_clamp(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
        "int[2] dilation, int groups, float min, float max) -> Tensor");
  // bilinear resize to `size` (torch's F.interpolate(mode="bilinear", size=...)), for the
  // upsampling in the segmentation networks; and its input gradient. Plain names only.
  m.def("resize_bilinear(Tensor input, int[2] size, bool align_corners) -> Tensor");
  m.def("resize_bilinear_backward(Tensor grad_output, int[4] input_size, bool align_corners) "
        "-> Tensor");
  // training-mode batch norm (the batch's statistics; the caller updates running statistics)
  // then clamp(min, max): the BatchNorm2d -> ReLU/ReLU6 of a network in training. Returns
  // (output, mean, invstd, var): var the biased variance, invstd = 1 / sqrt(var + eps). Plain
  // names only.
  m.def("batch_norm_act(Tensor input, Tensor? weight, Tensor? bias, float eps, float min, "
        "float max) -> (Tensor, Tensor, Tensor, Tensor)");
  // (grad_input, grad_weight, grad_bias) from the forward's input, weight, bias, and mean and
  // invstd as it returned them: where the clamp passed the gradient is recomputed from these
  // (the forward's pre-clamp value), the output is not needed. grad_input in the input's memory
  // format; an output whose output_mask entry is false is None
  m.def("batch_norm_act_backward(Tensor grad_output, Tensor input, Tensor? weight, Tensor? bias, "
        "Tensor mean, Tensor invstd, float min, float max, bool[3] output_mask) "
        "-> (Tensor, Tensor, Tensor)");
  // pixel-wise cross-entropy of (N, C, H, W) logits against (N, H, W) integer targets (no class
  // weights, no label smoothing): (loss, lsum), each (N, H, W) in the compute dtype: loss =
  // log-sum-exp over the classes minus the target's logit (0 where target == ignore_index),
  // lsum = log(sum_c exp(x_c - max_c x_c)), which the backward reuses with the max it
  // recomputes (exact differences where logits are large). The caller reduces. CPU only.
  // Plain names only.
  m.def("cross_entropy(Tensor logits, Tensor target, int ignore_index) -> (Tensor, Tensor)");
  // the logits' gradient for a per-pixel loss gradient `grad` ((N, H, W)): grad * (softmax -
  // one-hot), 0 where target == ignore_index; the logits' dtype and memory format
  m.def("cross_entropy_backward(Tensor grad, Tensor logits, Tensor target, Tensor lsum, "
        "int ignore_index) -> Tensor");
  // cross_entropy of the logits bilinearly resized to the target's (H, W) (F.interpolate with
  // align_corners, then the loss) without the resized logits in memory: (loss, lsum) of the
  // target's size; and the low-resolution logits' gradient (their dtype and memory format).
  // CPU only. Plain names only.
  m.def("resize_cross_entropy(Tensor logits, Tensor target, bool align_corners, "
        "int ignore_index) -> (Tensor, Tensor)");
  m.def("resize_cross_entropy_backward(Tensor grad, Tensor logits, Tensor target, Tensor lsum, "
        "bool align_corners, int ignore_index) -> Tensor");
}

TORCH_LIBRARY_IMPL(dilconv, CompositeExplicitAutograd, m) {
  m.impl("conv2d_backward", &conv2d_backward_generic);
  m.impl("conv2d_clamp", &conv2d_clamp_generic);
  m.impl("resize_bilinear", &resize_bilinear_generic);
  m.impl("resize_bilinear_backward", &resize_bilinear_backward_generic);
  m.impl("batch_norm_act", &batch_norm_act_generic);
  m.impl("batch_norm_act_backward", &batch_norm_act_backward_generic);
}
