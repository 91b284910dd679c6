// Backend "cpu": the CPU key of dilconv::batch_norm_act (batch norm with the batch's statistics,
// then clamp: BatchNorm2d -> ReLU/ReLU6 of a network in training) and its backward. Each is two
// passes over the tensor: statistics, then the normalised and clamped output; the backward's
// two sums, then the input gradient. The backward reads the gradient and the input only: where
// the clamp passed the gradient it recomputes from the input (the forward's pre-clamp value,
// bit for bit), which saves reading the output in both passes (2 of its 7 tensor streams). NCHW
// works channel by channel, channels-last by pixel ranges (two_passes; kernels_impl.h, bn_*).
// fp16/bf16 are computed in float32.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <tuple>
#include <vector>

#include "cpu/host.h"
#include "cpu/kernels.h"

namespace dilconv::cpu {
namespace {

using at::Tensor;

constexpr int64_t kMaxNhwcChannels = 4096;  // the kernels' per-channel run sums live on the stack


void check_tensor(const char* op, const Tensor& t, const char* name) {
  check_dim(op, t, name, 4);
  check_dtype(op, t);
}

void check_channel_vec(const char* op, const std::optional<Tensor>& t, const char* name,
                       int64_t C) {
  if (!t.has_value() || !t->defined()) return;
  TORCH_CHECK(t->dim() == 1 && t->size(0) == C, op, ": expected ", name, " of shape [", C,
              "], got ", t->sizes());
  TORCH_CHECK(t->device().is_cpu(), op, ": expected CPU tensors, got ", name, " on ",
              t->device());
}

void check_bounds(const char* op, double lo, double hi) {
  TORCH_CHECK(!std::isnan(lo) && !std::isnan(hi) && lo <= hi, op,
              ": need min <= max (not NaN), got min=", lo, ", max=", hi);
}

std::vector<double> channel_values(const std::optional<Tensor>& t, int64_t C, double fill) {
  if (!t.has_value() || !t->defined()) return std::vector<double>(C, fill);
  const Tensor d = t->to(at::kDouble).contiguous();
  return std::vector<double>(d.data_ptr<double>(), d.data_ptr<double>() + C);
}

// The per-channel y = clamp(x * sc + sh) of the forward, from the statistics as the forward
// returns them (mean, invstd in T): the backward recomputes the same sc, sh (and so the same
// pre-clamp values, bit for bit) from the saved statistics.
template <class T>
void affine(T mean, T invstd, double w, double b, T& sc, T& sh) {
  const double scale = w * double(invstd);
  sc = T(scale);
  sh = T(b - double(mean) * scale);
}

// The two passes of both directions over a tensor of N x C x HW: sums(off, len, c, s1, s2)
// adds a block's per-channel sums into s1, s2; coefficients(c) runs once channel c's sums are
// complete; apply(off, len, c) (skipped when !second) writes the block. A block is a plane (c its
// channel: per-channel kernel arguments offset by c) or a channels-last pixel range (c = 0).
// NCHW goes channel by channel, sums then apply, so a channel's N planes are read again while
// still in the L2 (2x96x257x257: 0.5 MiB a channel); channels-last sums over pixel ranges, one
// partial pair per range added up afterwards, then applies.
template <class Sums, class Coefficients, class Apply>
void two_passes(bool planar, int64_t N, int64_t C, int64_t HW, std::vector<double>& s1,
                std::vector<double>& s2, Sums&& sums, Coefficients&& coefficients,
                Apply&& apply, bool second) {
  s1.assign(C, 0.0);
  s2.assign(C, 0.0);
  if (planar) {
    at::parallel_for(0, C, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        for (int64_t n = 0; n < N; ++n) sums((n * C + c) * HW, HW, c, &s1[c], &s2[c]);
        coefficients(c);
        if (second)
          for (int64_t n = 0; n < N; ++n) apply((n * C + c) * HW, HW, c);
      }
    });
    return;
  }
  const int64_t P = N * HW;
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(4 * at::get_num_threads(), P / 64));
  std::vector<double> part(parts * 2 * C, 0.0);
  at::parallel_for(0, parts, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const int64_t p0 = P * i / parts, p1 = P * (i + 1) / parts;
      sums(p0 * C, p1 - p0, 0, &part[i * 2 * C], &part[i * 2 * C + C]);
    }
  });
  for (int64_t i = 0; i < parts; ++i)
    for (int64_t c = 0; c < C; ++c) {
      s1[c] += part[i * 2 * C + c];
      s2[c] += part[i * 2 * C + C + c];
    }
  for (int64_t c = 0; c < C; ++c) coefficients(c);
  if (!second) return;
  const int64_t grain = std::max<int64_t>(1, 16384 / C);
  at::parallel_for(0, P, grain, [&](int64_t b, int64_t e) { apply(b * C, e - b, 0); });
}

// NCHW: the plane of channel c + 1 at the same batch index as the plane at off, which the
// per-channel loop of two_passes reads next (its statistics pass): prefetched while channel c
// is written, so that its reads from memory overlap these writes instead of following them
// (nullptr for channels-last and the last channel).
template <class T>
const T* next_plane(bool planar, int64_t C, const T* base, int64_t off, int64_t c, int64_t HW) {
  return planar && c + 1 < C ? base + off + HW : nullptr;
}

// Outputs from this size on are written with streaming stores (kernels_impl.h st_stream):
// they do not stay in the caches for the next op anyway, and plain stores would read each line
// before writing it and evict the planes the pass reads again. Measured (2 threads, 2x96x257^2
// float32): forward 6.3 -> 4.2 ms, backward 10.9 -> 6.6 ms; 2x960x33^2 (8 MiB, which the next op
// finds in the cache) was slower streamed: 0.49 -> 0.67 ms.
constexpr double kStreamBytes = 16.0 * (1 << 20);

template <class T>
bool streamed(const Tensor& t) {
  return double(t.numel()) * sizeof(T) >= kStreamBytes;
}

template <class T>
void bn_fwd_impl(const Tensor& x, const Tensor& y, const std::optional<Tensor>& weight,
                 const std::optional<Tensor>& bias, double eps, double lo, double hi,
                 const Tensor& mean_out, const Tensor& invstd_out, const Tensor& var_out,
                 bool planar) {
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  const double M = double(N * HW);
  const T* xp = x.data_ptr<T>();
  T* yp = y.data_ptr<T>();
  const auto& K = kern<T>();
  const bool stream = streamed<T>(x);
  // shift: one value of each channel (the first pixel of the first image)
  std::vector<T> shift(C);
  for (int64_t c = 0; c < C; ++c) shift[c] = planar ? xp[c * HW] : xp[c];
  const std::vector<double> w = channel_values(weight, C, 1.0), bb = channel_values(bias, C, 0.0);
  std::vector<double> s1, s2, mean(C), invstd(C), var(C);
  std::vector<T> sc(C), sh(C);
  two_passes(
      planar, N, C, HW, s1, s2,
      [&](int64_t off, int64_t len, int64_t c, double* a, double* b) {
        // (only where the tensor is past the caches: at 8 MiB prefetching was slower)
        K.bn_moments(xp + off, len, C, planar, shift.data() + c, a, b,
                     stream ? next_plane(planar, C, xp, off, c, HW) : nullptr);
      },
      [&](int64_t c) {
        const double d = s1[c] / M;
        var[c] = std::max(s2[c] / M - d * d, 0.0);
        mean[c] = double(shift[c]) + d;
        invstd[c] = 1.0 / std::sqrt(var[c] + eps);
        affine<T>(T(mean[c]), T(invstd[c]), w[c], bb[c], sc[c], sh[c]);
      },
      [&](int64_t off, int64_t len, int64_t c) {
        K.bn_apply(xp + off, len, C, planar, sc.data() + c, sh.data() + c, T(lo), T(hi),
                   yp + off, next_plane(planar, C, xp, off, c, HW), stream);
      },
      true);
  auto* mo = mean_out.data_ptr<T>();
  auto* io = invstd_out.data_ptr<T>();
  auto* vo = var_out.data_ptr<T>();
  for (int64_t c = 0; c < C; ++c) {
    mo[c] = T(mean[c]);
    io[c] = T(invstd[c]);
    vo[c] = T(var[c]);
  }
}

std::tuple<Tensor, Tensor, Tensor, Tensor> batch_norm_act(const Tensor& input,
                                                  const std::optional<Tensor>& weight,
                                                  const std::optional<Tensor>& bias, double eps,
                                                  double min, double max) {
  const char* op = "dilconv::batch_norm_act";
  check_tensor(op, input, "input");
  const int64_t C = input.size(1);
  check_channel_vec(op, weight, "weight", C);
  check_channel_vec(op, bias, "bias", C);
  check_bounds(op, min, max);
  // as torch's training-mode batch_norm: eps = 0 turns a constant channel into 0 / 0
  TORCH_CHECK_VALUE(eps > 0, op, ": eps must be positive during training, got ", eps);
  const auto st = input.scalar_type(), ct = compute_type(st);
  auto fmt = out_format(input);
  if (fmt == at::MemoryFormat::ChannelsLast && C > kMaxNhwcChannels)
    fmt = at::MemoryFormat::Contiguous;
  const bool planar = fmt == at::MemoryFormat::Contiguous;
  const Tensor x = input.to(ct).contiguous(fmt);
  Tensor y = at::empty(x.sizes(), x.options().memory_format(fmt));
  Tensor mean = at::empty({C}, x.options()), invstd = at::empty({C}, x.options()),
         var = at::empty({C}, x.options());
  const int64_t M = x.size(0) * x.size(2) * x.size(3);
  TORCH_CHECK(M > 0, op, ": need at least one value per channel, got input of size ",
              input.sizes());
  if (ct == at::kFloat)
    bn_fwd_impl<float>(x, y, weight, bias, eps, min, max, mean, invstd, var, planar);
  else
    bn_fwd_impl<double>(x, y, weight, bias, eps, min, max, mean, invstd, var, planar);
  // (a channels-last input with more than kMaxNhwcChannels ran in NCHW: back to its layout)
  y = y.to(st).contiguous(out_format(input));
  return {y, mean, invstd, var};
}

template <class T>
void bn_bwd_impl(const Tensor& g, const Tensor& x, const Tensor& mean_t, const Tensor& invstd_t,
                 const std::optional<Tensor>& weight, const std::optional<Tensor>& bias,
                 double lo, double hi, const Tensor& gx, std::vector<double>& s1,
                 std::vector<double>& s2, bool planar) {
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  const double M = double(N * HW);
  const T *gp = g.data_ptr<T>(), *xp = x.data_ptr<T>();
  const auto& K = kern<T>();
  const bool stream = streamed<T>(x);
  const std::vector<T> mean(mean_t.data_ptr<T>(), mean_t.data_ptr<T>() + C);
  const std::vector<double> w = channel_values(weight, C, 1.0), bb = channel_values(bias, C, 0.0);
  const T* is = invstd_t.data_ptr<T>();
  std::vector<T> sc(C), sh(C);  // the forward's clamp(x * sc + sh): where it passed gradient
  for (int64_t c = 0; c < C; ++c) affine<T>(mean[c], is[c], w[c], bb[c], sc[c], sh[c]);
  T* gxp = gx.defined() ? gx.data_ptr<T>() : nullptr;
  std::vector<T> k1(C), k2(C), k3(C);
  two_passes(
      planar, N, C, HW, s1, s2,
      [&](int64_t off, int64_t len, int64_t c, double* a, double* b) {
        K.bn_grad_sums(gp + off, xp + off, len, C, planar, mean.data() + c, sc.data() + c,
                       sh.data() + c, T(lo), T(hi), a, b);
      },
      [&](int64_t c) {
        const double inv = double(is[c]), a = w[c] * inv;
        k1[c] = T(a);
        k2[c] = T(a * s1[c] / M);
        k3[c] = T(a * inv * inv * s2[c] / M);
      },
      [&](int64_t off, int64_t len, int64_t c) {
        K.bn_grad_apply(gp + off, xp + off, len, C, planar, mean.data() + c, sc.data() + c,
                        sh.data() + c, k1.data() + c, k2.data() + c, k3.data() + c, T(lo),
                        T(hi), gxp + off, next_plane(planar, C, gp, off, c, HW),
                        next_plane(planar, C, xp, off, c, HW), stream);
      },
      gxp != nullptr);
}

std::tuple<Tensor, Tensor, Tensor> batch_norm_act_backward(
    const Tensor& grad_output, const Tensor& input, const std::optional<Tensor>& weight,
    const std::optional<Tensor>& bias, const Tensor& mean, const Tensor& invstd, double min,
    double max, std::array<bool, 3> mask) {
  const char* op = "dilconv::batch_norm_act_backward";
  check_tensor(op, grad_output, "grad_output");
  check_tensor(op, input, "input");
  TORCH_CHECK(grad_output.sizes() == input.sizes(), op, ": grad_output ", grad_output.sizes(),
              " and input ", input.sizes(), " must have the same shape");
  const int64_t C = input.size(1);
  check_channel_vec(op, weight, "weight", C);
  check_channel_vec(op, bias, "bias", C);
  check_channel_vec(op, mean, "mean", C);
  check_channel_vec(op, invstd, "invstd", C);
  check_bounds(op, min, max);
  const auto st = input.scalar_type(), ct = compute_type(st);
  // the input's layout (the saved tensors' own): a gradient in the other layout is converted
  // once here rather than the input and output each (a channels-last <-> NCHW copy is slow)
  auto fmt = out_format(input);
  if (fmt == at::MemoryFormat::ChannelsLast && C > kMaxNhwcChannels)
    fmt = at::MemoryFormat::Contiguous;
  const bool planar = fmt == at::MemoryFormat::Contiguous;
  const Tensor g = grad_output.to(ct).contiguous(fmt), x = input.to(ct).contiguous(fmt);
  const Tensor m = mean.to(ct).contiguous(), is = invstd.to(ct).contiguous();
  Tensor gx;
  if (mask[0]) gx = at::empty(x.sizes(), x.options().memory_format(fmt));
  std::vector<double> s1, s2;
  if (x.numel() > 0) {
    if (ct == at::kFloat)
      bn_bwd_impl<float>(g, x, m, is, weight, bias, min, max, gx, s1, s2, planar);
    else
      bn_bwd_impl<double>(g, x, m, is, weight, bias, min, max, gx, s1, s2, planar);
  } else {
    s1.assign(C, 0.0);
    s2.assign(C, 0.0);
  }
  const auto vopts = at::TensorOptions().dtype(at::kDouble);
  Tensor gw, gb;
  if (mask[1]) {
    gw = at::from_blob(s2.data(), {C}, vopts).mul(is.to(at::kDouble));
    gw = gw.to(weight.has_value() && weight->defined() ? weight->scalar_type() : st);
  }
  if (mask[2]) gb = at::from_blob(s1.data(), {C}, vopts).to(st, false, /*copy=*/true);
  if (gx.defined()) gx = gx.to(st).contiguous(out_format(input));
  return {gx, gw, gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(dilconv, CPU, m) {
  m.impl("batch_norm_act", &batch_norm_act);
  m.impl("batch_norm_act_backward", &batch_norm_act_backward);
}

}  // namespace dilconv::cpu
