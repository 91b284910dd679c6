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

// (N, C, H, W) logits of at least one class, (N, H', W') integer labels, both on the CPU
void check_labels(const char* op, const Tensor& logits, const Tensor& target) {
  check_dim(op, logits, "logits", 4);
  check_dtype(op, logits);
  check_dim(op, target, "target", 3);
  TORCH_CHECK(target.device().is_cpu(), op, ": expected CPU tensors, got ", target.device());
  TORCH_CHECK(at::isIntegralType(target.scalar_type(), /*includeBool=*/false), op,
              ": target must hold integer class labels, got ", target.scalar_type());
  TORCH_CHECK(target.size(0) == logits.size(0), op, ": target ", target.sizes(),
              " and logits ", logits.sizes(), " differ in the batch size");
  TORCH_CHECK(logits.size(1) >= 1, op, ": logits need at least one class, got ", logits.sizes());
}

void check_target(const char* op, const Tensor& logits, const Tensor& target) {
  check_labels(op, logits, target);
  TORCH_CHECK(target.size(1) == logits.size(2) && target.size(2) == logits.size(3), op,
              ": target ", target.sizes(), " does not match logits ", logits.sizes(),
              ": expected (N, H, W)");
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
  Tensor lsum = at::empty({N, logits.size(2), logits.size(3)}, opts);
  const int64_t xn = x.stride(0), xc = x.stride(1);
  int64_t bad = 0;
  auto body = [&](auto tag) {
    using T = decltype(tag);
    const auto& K = kern<T>();
    const T* xp = x.data_ptr<T>();
    const int64_t* tp = t.data_ptr<int64_t>();
    T *lp = loss.data_ptr<T>(), *sp = lsum.data_ptr<T>();
    bad = for_units<T>(N, hw, C * K.vec, [&](int64_t n, int64_t p0, int64_t m, T* scratch) {
      return K.ce_fwd(xp + n * xn + p0 * ps, xc, ps, C, tp + n * hw + p0, m, ignore_index,
                      lp + n * hw + p0, sp + n * hw + p0, scratch);
    });
  };
  if (ct == at::kDouble) body(double{});
  else body(float{});
  TORCH_CHECK_VALUE(bad == 0, op, ": target labels must be in [0, ", C, ") or ignore_index ",
                    ignore_index, "; ", bad, " are not");
  return {loss, lsum};
}

Tensor cross_entropy_backward(const Tensor& grad, const Tensor& logits, const Tensor& target,
                              const Tensor& lsum, int64_t ignore_index) {
  const char* op = "dilconv::cross_entropy_backward";
  check_target(op, logits, target);
  check_pixels(op, grad, logits, "grad");
  check_pixels(op, lsum, logits, "lsum");
  const int64_t N = logits.size(0), C = logits.size(1), hw = logits.size(2) * logits.size(3);
  const auto ct = compute_type(logits.scalar_type());
  const auto [x, ps] = pixel_rows(logits, ct);
  const Tensor t = target.to(at::kLong).contiguous();
  const Tensor g = grad.to(ct).contiguous(), l = lsum.to(ct).contiguous();
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

// ------------------------------------------------------------------------------------------
// resize_cross_entropy: the cross-entropy of the logits bilinearly resized to the target's size
// (F.interpolate then F.cross_entropy) without the resized logits in memory. Both directions
// work on blocks of output rows: the block's resized logits are made in a scratch of C planes
// (resize_fwd per class, from the low-resolution planes that stay in cache), then the
// cross-entropy kernels run on it as on plain NCHW logits. The backward recomputes a block,
// turns it into its gradient in place (ce_bwd) and resizes that back (resize_bwd): its blocks are
// ranges of input rows, each with every output row that reads them (the output rows between two
// blocks are computed by both), so that each input-gradient row is written by one unit.

// output pixels a unit aims at: C planes of them fit the L2 (21 classes: ~0.7 MiB)
constexpr int64_t kResizeBlock = 8192;

struct ResizeCE {
  int64_t N, C, h, w, OH, OW;
  ResizeAxis ax, ay;
  ResizeCE(const Tensor& logits, const Tensor& target, bool align_corners)
      : N(logits.size(0)), C(logits.size(1)), h(logits.size(2)), w(logits.size(3)),
        OH(target.size(1)), OW(target.size(2)), ax(resize_axis(w, OW, align_corners)),
        ay(resize_axis(h, OH, align_corners)) {}

  // the resized logits of output rows [o0, o1) of image n into up (C planes of (o1 - o0) * OW)
  template <class T>
  void logits_block(const Kernels<T>& K, const T* x, const T* xl, const T* yl, int64_t n,
                    int64_t o0, int64_t o1, T* up, T* slots) const {
    const int64_t m = (o1 - o0) * OW;
    for (int64_t c = 0; c < C; ++c)  // rows o0.. as rows 0.. of the block (coefficients offset)
      K.resize_fwd(x + (n * C + c) * h * w, w, 1, ax.idx.data(), xl, OW, ay.idx.data() + 2 * o0,
                   yl + 2 * o0, up + c * m, OW, 0, o1 - o0, slots);
  }
};

void check_resize_target(const char* op, const Tensor& logits, const Tensor& target) {
  check_labels(op, logits, target);
  TORCH_CHECK(logits.numel() > 0 || target.numel() == 0, op, ": logits ", logits.sizes(),
              " are empty but the target ", target.sizes(), " is not");
}

std::tuple<Tensor, Tensor> resize_cross_entropy(const Tensor& logits, const Tensor& target,
                                                bool align_corners, int64_t ignore_index) {
  const char* op = "dilconv::resize_cross_entropy";
  check_resize_target(op, logits, target);
  const auto ct = compute_type(logits.scalar_type());
  const Tensor x = logits.to(ct).contiguous();
  const Tensor t = target.to(at::kLong).contiguous();
  const auto opts = logits.options().dtype(ct);
  Tensor loss = at::empty(target.sizes(), opts), lsum = at::empty(target.sizes(), opts);
  if (target.numel() == 0) return {loss, lsum};
  const ResizeCE r(x, t, align_corners);
  const int64_t rows = std::max<int64_t>(1, kResizeBlock / r.OW);
  const int64_t nb = (r.OH + rows - 1) / rows, hw = r.OH * r.OW;
  std::atomic<int64_t> bad{0};
  auto body = [&](auto tag) {
    using T = decltype(tag);
    const auto& K = kern<T>();
    const std::vector<T> xl(r.ax.lam.begin(), r.ax.lam.end()), yl(r.ay.lam.begin(), r.ay.lam.end());
    const T* xp = x.data_ptr<T>();
    const int64_t* tp = t.data_ptr<int64_t>();
    T *lp = loss.data_ptr<T>(), *sp = lsum.data_ptr<T>();
    at::parallel_for(0, r.N * nb, 1, [&](int64_t b, int64_t e) {
      std::vector<T> up(r.C * rows * r.OW), slots(2 * r.OW);
      int64_t local = 0;
      for (int64_t u = b; u < e; ++u) {
        const int64_t n = u / nb, o0 = u % nb * rows, o1 = std::min(r.OH, o0 + rows);
        const int64_t m = (o1 - o0) * r.OW, p0 = n * hw + o0 * r.OW;
        r.logits_block(K, xp, xl.data(), yl.data(), n, o0, o1, up.data(), slots.data());
        local += K.ce_fwd(up.data(), m, 1, r.C, tp + p0, m, ignore_index, lp + p0, sp + p0,
                          nullptr);
      }
      bad += local;
    });
  };
  if (ct == at::kDouble) body(double{});
  else body(float{});
  TORCH_CHECK_VALUE(bad.load() == 0, op, ": target labels must be in [0, ", r.C,
                    ") or ignore_index ", ignore_index, "; ", bad.load(), " are not");
  return {loss, lsum};
}

Tensor resize_cross_entropy_backward(const Tensor& grad, const Tensor& logits,
                                     const Tensor& target, const Tensor& lsum,
                                     bool align_corners, int64_t ignore_index) {
  const char* op = "dilconv::resize_cross_entropy_backward";
  check_resize_target(op, logits, target);
  for (const auto& [v, name] : {std::pair{&grad, "grad"}, std::pair{&lsum, "lsum"}}) {
    check_dim(op, *v, name, 3);
    check_dtype(op, *v);
    TORCH_CHECK(v->sizes() == target.sizes(), op, ": ", name, " ", v->sizes(),
                " does not match target ", target.sizes());
  }
  const auto ct = compute_type(logits.scalar_type());
  const Tensor x = logits.to(ct).contiguous();
  const Tensor t = target.to(at::kLong).contiguous();
  const Tensor g = grad.to(ct).contiguous(), l = lsum.to(ct).contiguous();
  Tensor gx = at::empty(x.sizes(), x.options());
  if (target.numel() == 0) {
    gx.zero_();
  } else if (gx.numel() > 0) {
    const ResizeCE r(x, t, align_corners);
    std::vector<int64_t> olo, ohi;  // the output rows reading each input row
    r.ay.readers(r.h, olo, ohi);
    // input rows a unit: about kResizeBlock output pixels with their readers
    const int64_t rows =
        std::max<int64_t>(1, kResizeBlock * r.h / (std::max<int64_t>(r.OH, r.h) * r.OW));
    const int64_t nb = (r.h + rows - 1) / rows, hw = r.OH * r.OW;
    // the output rows [o0, o1) that read input rows [i0, i1) (o0 >= o1: none)
    const auto read_by = [&](int64_t i0, int64_t i1) {
      int64_t o0 = r.OH, o1 = 0;
      for (int64_t i = i0; i < i1; ++i)
        if (olo[i] < ohi[i]) o0 = std::min(o0, olo[i]), o1 = std::max(o1, ohi[i]);
      return std::pair{o0, o1};
    };
    int64_t span = 0;  // the most output rows a unit reads
    for (int64_t i0 = 0; i0 < r.h; i0 += rows) {
      const auto [o0, o1] = read_by(i0, std::min(r.h, i0 + rows));
      span = std::max(span, o1 - o0);
    }
    std::atomic<int64_t> bad{0};
    auto body = [&](auto tag) {
      using T = decltype(tag);
      const auto& K = kern<T>();
      const std::vector<T> xl(r.ax.lam.begin(), r.ax.lam.end()),
          yl(r.ay.lam.begin(), r.ay.lam.end());
      const T *xp = x.data_ptr<T>(), *gp = g.data_ptr<T>(), *lp = l.data_ptr<T>();
      const int64_t* tp = t.data_ptr<int64_t>();
      T* gxp = gx.data_ptr<T>();
      at::parallel_for(0, r.N * nb, 1, [&](int64_t b, int64_t e) {
        std::vector<T> up(r.C * std::max<int64_t>(span, 1) * r.OW), slots(2 * r.OW);
        std::vector<int64_t> lo_l(r.h), hi_l(r.h);  // olo/ohi relative to the unit's first row
        int64_t local = 0;
        for (int64_t u = b; u < e; ++u) {
          const int64_t n = u / nb, i0 = u % nb * rows, i1 = std::min(r.h, i0 + rows);
          const auto [o0, o1] = read_by(i0, i1);
          if (o0 >= o1) {  // no output row reads these rows (a downsampling): zero gradient
            for (int64_t c = 0; c < r.C; ++c)
              std::fill_n(gxp + ((n * r.C + c) * r.h + i0) * r.w, (i1 - i0) * r.w, T(0));
            continue;
          }
          const int64_t m = (o1 - o0) * r.OW, p0 = n * hw + o0 * r.OW;
          r.logits_block(K, xp, xl.data(), yl.data(), n, o0, o1, up.data(), slots.data());
          // the block's logits gradient, in place
          local += K.ce_bwd(up.data(), m, 1, r.C, tp + p0, gp + p0, lp + p0, m, ignore_index,
                            up.data(), m, 1, nullptr);
          for (int64_t i = i0; i < i1; ++i) {
            lo_l[i] = olo[i] - o0;
            hi_l[i] = ohi[i] - o0;
          }
          for (int64_t c = 0; c < r.C; ++c)
            K.resize_bwd(up.data() + c * m, r.OW, 1, r.ax.idx.data(), xl.data(), r.OW,
                         r.ay.idx.data() + 2 * o0, yl.data() + 2 * o0, lo_l.data(), hi_l.data(),
                         gxp + (n * r.C + c) * r.h * r.w, r.w, r.w, i0, i1, slots.data());
        }
        bad += local;
      });
    };
    if (ct == at::kDouble) body(double{});
    else body(float{});
    TORCH_CHECK_VALUE(bad.load() == 0, op, ": target labels must be in [0, ", r.C,
                      ") or ignore_index ", ignore_index, "; ", bad.load(), " are not");
  }
  // the logits' dtype and layout (dilconv._ops.output_memory_format)
  return gx.to(logits.scalar_type()).contiguous(out_format(logits));
}

}  // namespace

TORCH_LIBRARY_IMPL(dilconv, CPU, m) {
  m.impl("cross_entropy", &cross_entropy);
  m.impl("cross_entropy_backward", &cross_entropy_backward);
  m.impl("resize_cross_entropy", &resize_cross_entropy);
  m.impl("resize_cross_entropy_backward", &resize_cross_entropy_backward);
}

}  // namespace dilconv::cpu
