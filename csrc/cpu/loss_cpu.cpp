// Backend "cpu": the CPU key of dilconv::cross_entropy and its backward, the pixel-wise
// cross-entropy of segmentation (torch's log_softmax over the classes + nll_loss, without class
// weights or label smoothing) in one pass over the logits forward and one backward, where torch
// makes four (log_softmax, nll_loss, a zero-filled gradient, log_softmax's backward). The
// pixels of an image are the vectors (kernels_impl.h, ce_fwd / ce_bwd): read in place in plain
// NCHW, gathered a vector of pixels at a time in channels-last (whose gradient is channels-last
// too); other views are copied to plain NCHW first. fp16/bf16 are computed in float32.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <utility>
#include <vector>

#include "cpu/host.h"
#include "cpu/kernels.h"

namespace dilconv::cpu {
namespace {

using at::Tensor;

// a unit of work: one image's pixels [p0, p0 + kBlock)
constexpr int64_t kBlock = 4096;

void check_target(const char* op, const Tensor& logits, const Tensor& target) {
  check_dim(op, logits, "logits", 4);
  check_dtype(op, logits);
  check_dim(op, target, "target", 3);
  TORCH_CHECK(target.device().is_cpu(), op, ": expected CPU tensors, got ", target.device());
  TORCH_CHECK(at::isIntegralType(target.scalar_type(), /*includeBool=*/false), op,
              ": target must hold integer class labels, got ", target.scalar_type());
  TORCH_CHECK(target.size(0) == logits.size(0) && target.size(1) == logits.size(2) &&
                  target.size(2) == logits.size(3),
              op, ": target ", target.sizes(), " does not match logits ", logits.sizes(),
              ": expected (N, H, W)");
  TORCH_CHECK(logits.size(1) >= 1, op, ": logits need at least one class, got ", logits.sizes());
}

void check_pixels(const char* op, const Tensor& t, const Tensor& logits, const char* name) {
  check_dim(op, t, name, 3);
  check_dtype(op, t);
  TORCH_CHECK(t.size(0) == logits.size(0) && t.size(1) == logits.size(2) &&
                  t.size(2) == logits.size(3),
              op, ": ", name, " ", t.sizes(), " does not match logits ", logits.sizes());
}

// The logits in the compute type with one stride between the pixels of an image (H and W
// collapse): plain NCHW and channels-last as they are, other views copied to plain NCHW.
// Returns the tensor and that pixel stride.
std::pair<Tensor, int64_t> pixel_rows(const Tensor& logits, at::ScalarType ct) {
  Tensor x = logits.to(ct);
  const int64_t H = x.size(2), W = x.size(3);
  if (W == 1) return {x, x.stride(2)};
  if (H == 1 || x.stride(2) == W * x.stride(3)) return {x, x.stride(3)};
  x = x.contiguous();
  return {x, 1};
}

// f(n, p0, m, scratch) for every unit, in parallel (scratch: `scratch` values per thread);
// returns the sum of what f returns
template <class T, class F>
int64_t for_units(int64_t N, int64_t hw, int64_t scratch, F&& f) {
  const int64_t nb = (hw + kBlock - 1) / kBlock;
  std::atomic<int64_t> sum{0};
  at::parallel_for(0, N * nb, 1, [&](int64_t b, int64_t e) {
    std::vector<T> buf(scratch);
    int64_t local = 0;
    for (int64_t u = b; u < e; ++u) {
      const int64_t p0 = u % nb * kBlock;
      local += f(u / nb, p0, std::min(kBlock, hw - p0), buf.data());
    }
    sum += local;
  });
  return sum.load();
}

std::tuple<Tensor, Tensor> cross_entropy(const Tensor& logits, const Tensor& target,
                                         int64_t ignore_index) {
  const char* op = "dilconv::cross_entropy";
  check_target(op, logits, target);
  const int64_t N = logits.size(0), C = logits.size(1), hw = logits.size(2) * logits.size(3);
  const auto ct = compute_type(logits.scalar_type());
  const auto [x, ps] = pixel_rows(logits, ct);
  const Tensor t = target.to(at::kLong).contiguous();
  const auto opts = logits.options().dtype(ct);
  Tensor loss = at::empty({N, logits.size(2), logits.size(3)}, opts);
  Tensor lse = at::empty({N, logits.size(2), logits.size(3)}, opts);
  const int64_t xn = x.stride(0), xc = x.stride(1);
  int64_t bad = 0;
  auto body = [&](auto tag) {
    using T = decltype(tag);
    const auto& K = kern<T>();
    const T* xp = x.data_ptr<T>();
    const int64_t* tp = t.data_ptr<int64_t>();
    T *lp = loss.data_ptr<T>(), *sp = lse.data_ptr<T>();
    bad = for_units<T>(N, hw, C * K.vec, [&](int64_t n, int64_t p0, int64_t m, T* scratch) {
      return K.ce_fwd(xp + n * xn + p0 * ps, xc, ps, C, tp + n * hw + p0, m, ignore_index,
                      lp + n * hw + p0, sp + n * hw + p0, scratch);
    });
  };
  if (ct == at::kDouble) body(double{});
  else body(float{});
  TORCH_CHECK_VALUE(bad == 0, op, ": target labels must be in [0, ", C, ") or ignore_index ",
                    ignore_index, "; ", bad, " are not");
  return {loss, lse};
}

Tensor cross_entropy_backward(const Tensor& grad, const Tensor& logits, const Tensor& target,
                              const Tensor& lse, int64_t ignore_index) {
  const char* op = "dilconv::cross_entropy_backward";
  check_target(op, logits, target);
  check_pixels(op, grad, logits, "grad");
  check_pixels(op, lse, logits, "lse");
  const int64_t N = logits.size(0), C = logits.size(1), hw = logits.size(2) * logits.size(3);
  const auto ct = compute_type(logits.scalar_type());
  const auto [x, ps] = pixel_rows(logits, ct);
  const Tensor t = target.to(at::kLong).contiguous();
  const Tensor g = grad.to(ct).contiguous(), l = lse.to(ct).contiguous();
  // the gradient in the logits' layout (dilconv._ops.output_memory_format)
  const auto fmt = out_format(logits);
  Tensor gx = at::empty(logits.sizes(), logits.options().dtype(ct).memory_format(fmt));
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  const int64_t xn = x.stride(0), xc = x.stride(1);
  int64_t bad = 0;
  auto body = [&](auto tag) {
    using T = decltype(tag);
    const auto& K = kern<T>();
    const T *xp = x.data_ptr<T>(), *gp = g.data_ptr<T>(), *lp = l.data_ptr<T>();
    const int64_t* tp = t.data_ptr<int64_t>();
    T* gxp = gx.data_ptr<T>();
    const int64_t gcs = cl ? 1 : hw, gps = cl ? C : 1;
    bad = for_units<T>(N, hw, 2 * C * K.vec, [&](int64_t n, int64_t p0, int64_t m, T* scratch) {
      return K.ce_bwd(xp + n * xn + p0 * ps, xc, ps, C, tp + n * hw + p0, gp + n * hw + p0,
                      lp + n * hw + p0, m, ignore_index, gxp + n * C * hw + p0 * gps, gcs, gps,
                      scratch);
    });
  };
  if (ct == at::kDouble) body(double{});
  else body(float{});
  TORCH_CHECK_VALUE(bad == 0, op, ": target labels must be in [0, ", C, ") or ignore_index ",
                    ignore_index, "; ", bad, " are not");
  return gx.scalar_type() == logits.scalar_type() ? gx : gx.to(logits.scalar_type()).contiguous(fmt);
}

}  // namespace

TORCH_LIBRARY_IMPL(dilconv, CPU, m) {
  m.impl("cross_entropy", &cross_entropy);
  m.impl("cross_entropy_backward", &cross_entropy_backward);
}

}  // namespace dilconv::cpu
