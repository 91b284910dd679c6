// Backend "cpu": the CPU key of dilconv::resize_bilinear and its backward (torch's
// upsample_bilinear2d with an output size, align_corners either way). Both layouts are resized
// row by row: a channels-last row is W * C contiguous values, so the blend along the height is
// one flat pass per output row in either layout; the width blend is done once per input row
// (kernels_impl.h, resize_fwd / resize_bwd). fp16/bf16 are computed in float32.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/host.h"
#include "cpu/kernels.h"

namespace dilconv::cpu {
namespace {

using at::IntArrayRef;
using at::Tensor;

// The coefficients of a resize from `in` to `out` (either layout): images = planes (NCHW) or
// images (channels-last), cc = values a pixel, xo = the column indices as value offsets.
template <class T>
struct Coefs {
  ResizeAxis ax, ay;
  int64_t cc, images;
  std::vector<int64_t> xo;
  std::vector<T> xl, yl;
  Coefs(const Tensor& in, const Tensor& out, bool align_corners, bool nhwc)
      : ax(resize_axis(in.size(3), out.size(3), align_corners)),
        ay(resize_axis(in.size(2), out.size(2), align_corners)),
        cc(nhwc ? in.size(1) : 1),
        images(nhwc ? in.size(0) : in.size(0) * in.size(1)),
        xo(ax.idx),
        xl(ax.lam.begin(), ax.lam.end()),
        yl(ay.lam.begin(), ay.lam.end()) {
    for (auto& v : xo) v *= cc;
  }
};

void check_size(const char* op, const char* name, IntArrayRef v, size_t n) {
  TORCH_CHECK(v.size() == n, op, ": expected ", name, " to have ", n, " elements, got ", v.size());
  for (size_t i = n - 2; i < n; ++i)
    TORCH_CHECK(v[i] >= 1, op, ": ", name, " must have a height and width >= 1, got ", v);
}

// A resize pass over `units` rows: an image's rows (channels-last: cc = C, one unit per row of
// each image) or a plane's rows (cc = 1, one unit per row of each of the N * C planes); f(img,
// r0, r1, scratch) handles rows [r0, r1) of image/plane img. Threads take contiguous row ranges.
template <class T, class F>
void over_rows(int64_t images, int64_t rows, int64_t scratch_len, F&& f) {
  at::parallel_for(0, images * rows, 16, [&](int64_t b, int64_t e) {
    std::vector<T> scratch(scratch_len);
    for (int64_t u = b; u < e;) {
      const int64_t img = u / rows, r0 = u % rows, r1 = std::min(rows, r0 + (e - u));
      f(img, r0, r1, scratch.data());
      u += r1 - r0;
    }
  });
}

// where image/plane img of t starts: channels-last images are contiguous; NCHW planes are
// addressed through the batch and channel strides (in_compute_type keeps a channel slice of a
// bigger tensor as it is)
int64_t image_offset(const Tensor& t, int64_t img, bool nhwc) {
  if (nhwc) return img * t.stride(0);
  return img / t.size(1) * t.stride(0) + img % t.size(1) * t.stride(1);
}

template <class T>
void resize_fwd_impl(const Tensor& x, const Tensor& y, bool align_corners, bool nhwc) {
  const Coefs<T> k(x, y, align_corners, nhwc);
  const int64_t W = x.size(3), OH = y.size(2), OW = y.size(3), cc = k.cc;
  const T* xp = x.data_ptr<T>();
  T* yp = y.data_ptr<T>();
  const auto& K = kern<T>();
  over_rows<T>(k.images, OH, 2 * OW * cc, [&](int64_t img, int64_t r0, int64_t r1, T* scratch) {
    K.resize_fwd(xp + image_offset(x, img, nhwc), W * cc, cc, k.xo.data(), k.xl.data(), OW,
                 k.ay.idx.data(), k.yl.data(), yp + image_offset(y, img, nhwc), OW * cc, r0, r1,
                 scratch);
  });
}

template <class T>
void resize_bwd_impl(const Tensor& g, const Tensor& gx, bool align_corners, bool nhwc) {
  const Coefs<T> k(gx, g, align_corners, nhwc);
  const int64_t H = gx.size(2), W = gx.size(3), OW = g.size(3), cc = k.cc;
  std::vector<int64_t> olo, ohi;  // the output rows reading each input row
  k.ay.readers(H, olo, ohi);
  const T* gp = g.data_ptr<T>();
  T* gxp = gx.data_ptr<T>();
  const auto& K = kern<T>();
  over_rows<T>(k.images, H, OW * cc, [&](int64_t img, int64_t i0, int64_t i1, T* scratch) {
    K.resize_bwd(gp + image_offset(g, img, nhwc), OW * cc, cc, k.xo.data(), k.xl.data(), OW,
                 k.ay.idx.data(), k.yl.data(), olo.data(), ohi.data(),
                 gxp + image_offset(gx, img, nhwc), W * cc, W, i0, i1, scratch);
  });
}

// Runs body(src, dst) in the compute type (float32 for fp16/bf16), dst allocated in `fmt`.
template <class Body>
Tensor in_compute_type(const Tensor& src, IntArrayRef out_size, at::MemoryFormat fmt, Body&& body) {
  const auto st = src.scalar_type();
  const auto ct = compute_type(st);
  Tensor s = src.to(ct);
  // NCHW planes that are each contiguous are read in place (the gradient of DeepLabV3+'s
  // upsampled branch is a channel slice of the concat's: copying it cost a third of the op)
  const bool planes = fmt == at::MemoryFormat::Contiguous && s.stride(3) == 1 &&
                      s.stride(2) == s.size(3);
  if (!planes) s = s.contiguous(fmt);
  Tensor d = at::empty(out_size, s.options().memory_format(fmt));
  if (d.numel() > 0 && s.numel() > 0) {
    if (ct == at::kFloat) body(s, d, float{});
    else body(s, d, double{});
  } else if (d.numel() > 0) {
    d.zero_();
  }
  return ct == st ? d : d.to(st).contiguous(fmt);
}

Tensor resize_bilinear(const Tensor& input, IntArrayRef size, bool align_corners) {
  const char* op = "dilconv::resize_bilinear";
  check_dim(op, input, "input", 4);
  check_dtype(op, input);
  check_size(op, "size", size, 2);
  TORCH_CHECK(input.size(2) >= 1 && input.size(3) >= 1, op,
              ": input height and width must be >= 1, got ", input.sizes());
  const auto fmt = out_format(input);
  const bool nhwc = fmt == at::MemoryFormat::ChannelsLast;
  return in_compute_type(input, {input.size(0), input.size(1), size[0], size[1]}, fmt,
                         [&](const Tensor& x, const Tensor& y, auto tag) {
                           resize_fwd_impl<decltype(tag)>(x, y, align_corners, nhwc);
                         });
}

Tensor resize_bilinear_backward(const Tensor& grad_output, IntArrayRef input_size,
                                bool align_corners) {
  const char* op = "dilconv::resize_bilinear_backward";
  check_dim(op, grad_output, "grad_output", 4);
  check_dtype(op, grad_output);
  check_size(op, "input_size", input_size, 4);
  TORCH_CHECK(grad_output.size(0) == input_size[0] && grad_output.size(1) == input_size[1], op,
              ": grad_output ", grad_output.sizes(), " does not match input_size ", input_size);
  const auto fmt = out_format(grad_output);
  const bool nhwc = fmt == at::MemoryFormat::ChannelsLast;
  return in_compute_type(grad_output, input_size, fmt,
                         [&](const Tensor& g, const Tensor& gx, auto tag) {
                           resize_bwd_impl<decltype(tag)>(g, gx, align_corners, nhwc);
                         });
}

}  // namespace

TORCH_LIBRARY_IMPL(dilconv, CPU, m) {
  m.impl("resize_bilinear", &resize_bilinear);
  m.impl("resize_bilinear_backward", &resize_bilinear_backward);
}

}  // namespace dilconv::cpu
