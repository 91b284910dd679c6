// Backend "cpu": the CPU-key implementations of the plain dilconv ops.
//
// Paths, chosen per call:
//   nhwc    depthwise (multiplier 1) and grouped convolutions with 2, 4, 8 or 16 channels in and
//           out a group with channels-last tensors: vectors along the channels (use_nhwc,
//           use_gnhwc; the grouped input gradient for stride 1).
//   direct  packed, padded input windows and register-blocked stencils along the rows:
//           depthwise (any multiplier) and grouped convolutions with <= 8 channels per group
//           (use_direct). Stride-1 depthwise with <= 9 taps packs the window at the padded width
//           and runs the stencil over the flattened window (flat, use_dw_flat) where that
//           computes fewer values than the general planar kernel.
//   taps    one GEMM per kernel tap over the output rectangle where that tap reads inside the
//           input: dense convolutions whose taps mostly read padding (large dilation on small
//           maps, use_taps).
//   pointwise  1x1 stride-1 unpadded convolutions as GEMMs straight on NCHW planes or
//           channels-last pixel rows (use_pointwise): BLAS's, or the register-tiled
//           gemm_bcast for the forward and the input gradient, over NCHW planes (use_gemm_bcast)
//           or channels-last pixel rows (use_pixels_bcast), and the NCHW weight gradient where
//           that wins (use_wgrad_bcast).
//   gemm    im2col/col2im per group and at::mm (BLAS): the other dense/wide-group convolutions.
// DILCONV_CPU_PATH=direct|flat|planar|gemm|taps|pointwise|bcast forces a path and
// DILCONV_CPU_ISA=avx2|base an instruction set (kernels.cpp), so the tests reach every variant.
// fp16/bf16 are computed in float32 (converted on entry, rounded once on exit), float64 in
// float64. Outputs follow dilconv._ops.output_memory_format; the kernels read and write any
// strides, so inputs are never made contiguous just for layout.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <tuple>

#include "cpu/host.h"
#include "cpu/kernels.h"
#include "arg_bounds.h"

namespace dilconv::cpu {
namespace {

using at::IntArrayRef;
using at::Tensor;

// ------------------------------------------------------------------------------------------
// argument checks (the Python layer validates already; ops can also be called directly)

void check_pair(const char* op, const char* name, IntArrayRef v, int64_t min) {
  TORCH_CHECK(v.size() == 2, op, ": expected ", name, " to have 2 elements, got ", v.size());
  TORCH_CHECK(v[0] >= min && v[1] >= min && v[0] <= kMaxGeometry && v[1] <= kMaxGeometry, op,
              ": ", name, " must be in [", min, ", ", kMaxGeometry, "], got ", v);
}

void check_float(const char* op, const Tensor& t, const char* name, const Tensor& ref) {
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(),
              " but expected ", ref.scalar_type());
}

void check_bias(const char* op, const std::optional<Tensor>& b, const Tensor& ref, int64_t k,
                const char* name = "bias") {
  if (!b) return;
  check_float(op, *b, name, ref);
  TORCH_CHECK(b->dim() == 1 && b->size(0) == k, op, ": expected ", name, " of size [", k,
              "], got ", b->sizes());
}

int64_t out_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d) {
  return (in + 2 * p - d * (k - 1) - 1) / s + 1;
}

// new_empty(shape).contiguous(memory_format=fmt), without touching memory
Tensor empty_fmt(IntArrayRef shape, at::TensorOptions opts, at::MemoryFormat fmt) {
  Tensor t = at::empty(shape, opts);
  if (fmt == at::MemoryFormat::ChannelsLast && !t.is_contiguous(fmt))
    t = at::empty(shape, opts.memory_format(fmt));
  return t;
}

Strides strides(const Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

Geo make_geo(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t P, int64_t Q,
             int64_t R, int64_t S, IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
             int64_t groups) {
  Geo g;
  g.N = N, g.C = C, g.H = H, g.W = W, g.K = K, g.P = P, g.Q = Q, g.R = R, g.S = S;
  g.sh = stride[0], g.sw = stride[1], g.ph = padding[0], g.pw = padding[1];
  g.dh = dilation[0], g.dw = dilation[1];
  g.G = groups, g.Cg = C / groups, g.Kg = K / groups;
  // a single output row (column) reads one window whatever the stride: the kernels' packed
  // windows are stride times wider, so a stride of 10^6 on a small map had taken a GB of scratch
  if (P == 1) g.sh = 1;
  if (Q == 1) g.sw = 1;
  return g;
}

template <class F>
void with_type(at::ScalarType ct, F&& f) {
  if (ct == at::kDouble)
    f(double{});
  else
    f(float{});
}

template <class T>
T* ptr(const Tensor& t) { return t.defined() ? t.data_ptr<T>() : nullptr; }

// ------------------------------------------------------------------------------------------
// path choice

bool use_direct(const Geo& g) {
  // The direct kernels pack the padded window, which grows with the dilation: a kernel that
  // spans far more than the map (padding and dilation 2^20 on a 6x6 map had asked for
  // terabytes) goes to the per-tap paths instead, which skip the taps that read only padding.
  const bool window_ok = (g.R - 1) * g.dh <= 4 * (g.H + g.P) + 256 &&
                         (g.S - 1) * g.dw <= 4 * (g.W + g.Q) + 256;
  if (const char* e = std::getenv("DILCONV_CPU_PATH")) {
    if (!std::strcmp(e, "direct") || !std::strcmp(e, "planar") || !std::strcmp(e, "flat"))
      return window_ok;
    if (!std::strcmp(e, "gemm") || !std::strcmp(e, "taps")) return false;
  }
  return g.Cg <= 8 && window_ok;
}

// stride-1 depthwise with few taps: the flattened-window kernel unless its halo columns cost more
// than the planar kernel's rows (DILCONV_CPU_PATH=flat|planar forces one of them, so tests reach
// both)
bool use_dw_flat(const Geo& g, int64_t vec) {
  if (const char* e = std::getenv("DILCONV_CPU_PATH")) {
    if (!std::strcmp(e, "planar")) return false;
    if (!std::strcmp(e, "flat")) return dw_flat_ok(g);
  }
  // The flat kernel computes Q + (S - 1) * dw values a row, the planar one Q rounded up to whole
  // vectors plus a per-row cost worth about four vectors: with the planar kernel wherever it
  // computed fewer values, the flat one was still 1.1-1.8x faster (forward and forward +
  // backward) at 33^2 d4-d16 and 65^2 d4-d16, 0.95x at 65^2 d36 and 129^2 d24, and about even
  // at 65^2 d24 and 33^2 d18 (3x3, 256ch, AVX2 EPYC, 2 threads). AVX-512's 16-lane vectors
  // make the allowance 64 columns: there flat ran 1.5-6.5x of torch, planar 1.0-6.3x, on 16
  // MobileNetV2/Xception/ASPP shapes (33^2 d2-d18, 65^2 d2-d12, 129^2, 257^2), flat the faster
  // on all but 256ch 33^2 d18 (3.3x against 3.5x), which this rule also sends to flat
  return dw_flat_ok(g) && g.Q + (g.S - 1) * g.dw <= ((g.Q + vec - 1) / vec + 4) * vec;
}

int64_t threads() { return std::max<int64_t>(1, at::get_num_threads()); }

// Output indices [lo, hi) whose tap k_idx reads inside the input (input index = o * s + k * d - p).
std::pair<int64_t, int64_t> tap_range(int64_t out, int64_t in, int64_t k, int64_t s, int64_t p,
                                      int64_t d) {
  const int64_t o = k * d - p;
  int64_t lo = o >= 0 ? 0 : (-o + s - 1) / s;
  int64_t hi = in - 1 - o >= 0 ? (in - 1 - o) / s + 1 : 0;
  hi = std::min(hi, out);
  lo = std::min(lo, hi);
  return {lo, hi};
}

// The share of (tap, output) pairs that read inside the input: small for large dilations on
// small maps (ASPP rates 18-36), where most of an im2col/oneDNN GEMM multiplies padding zeros.
double valid_fraction(const Geo& g) {
  double rows = 0, cols = 0;
  for (int64_t r = 0; r < g.R; ++r) {
    auto [a, b] = tap_range(g.P, g.H, r, g.sh, g.ph, g.dh);
    rows += b - a;
  }
  for (int64_t s = 0; s < g.S; ++s) {
    auto [a, b] = tap_range(g.Q, g.W, s, g.sw, g.pw, g.dw);
    cols += b - a;
  }
  return rows * cols / std::max<double>(1.0, double(g.R * g.S * g.P * g.Q));
}

// per-tap GEMMs over the valid output rectangle of each tap (dense/wide-group convolutions)
bool use_taps(const Geo& g) {
  if (const char* e = std::getenv("DILCONV_CPU_PATH")) return !std::strcmp(e, "taps");
  return valid_fraction(g) < 0.75;
}

struct TapRect {
  int64_t pa, pb, qa, qb, ih0, iw0;
  bool empty() const { return pa >= pb || qa >= qb; }
  bool full_rows(const Geo& g) const { return qa == 0 && qb == g.Q; }
};

TapRect tap_rect(const Geo& g, int64_t r, int64_t s) {
  auto [pa, pb] = tap_range(g.P, g.H, r, g.sh, g.ph, g.dh);
  auto [qa, qb] = tap_range(g.Q, g.W, s, g.sw, g.pw, g.dw);
  return {pa, pb, qa, qb, pa * g.sh + r * g.dh - g.ph, qa * g.sw + s * g.dw - g.pw};
}

// the input (or input-gradient) pixels a tap's rectangle touches, channels [c0, c0 + nc)
Tensor tap_input(const Tensor& t, const Geo& g, const TapRect& b, int64_t c0, int64_t nc) {
  return t.narrow(0, c0, nc)
      .slice(1, b.ih0, b.ih0 + (b.pb - b.pa - 1) * g.sh + 1, g.sh)
      .slice(2, b.iw0, b.iw0 + (b.qb - b.qa - 1) * g.sw + 1, g.sw);
}

Tensor tap_output(const Tensor& t, const TapRect& b, int64_t k0, int64_t nk) {
  return t.narrow(0, k0, nk).narrow(1, b.pa, b.pb - b.pa).narrow(2, b.qa, b.qb - b.qa);
}

// the activation as one pass over a whole tensor (paths whose GEMMs write the output directly)
void apply_act(const Tensor& t, Act act) {
  if (!act) return;
  if (act.hi == __builtin_inf())
    t.clamp_min_(act.lo);
  else
    t.clamp_(act.lo, act.hi);
}

// f(grp, r, s, rect, m) for every group and tap that reads some of the input (m = the rect's
// output pixels)
template <class F>
void for_each_tap(const Geo& g, F&& f) {
  for (int64_t grp = 0; grp < g.G; ++grp)
    for (int64_t r = 0; r < g.R; ++r)
      for (int64_t s = 0; s < g.S; ++s) {
        const TapRect b = tap_rect(g, r, s);
        if (!b.empty()) f(grp, r, s, b, (b.pb - b.pa) * (b.qb - b.qa));
      }
}

// y[n] = sum over taps of W_tap @ x(rect), accumulated in acc [K, P, Q]
void fwd_taps(const Geo& g, const Tensor& x, const Tensor& w, const Tensor& bias, Act act,
              const Tensor& y) {
  const Tensor wt = w.permute({2, 3, 0, 1}).contiguous();  // [R, S, K, Cg]
  const bool in_place = y.is_contiguous();
  Tensor buf = in_place ? Tensor() : at::empty({g.K, g.P, g.Q}, y.options());
  for (int64_t n = 0; n < g.N; ++n) {
    Tensor acc = in_place ? y[n] : buf;
    acc.zero_();
    for_each_tap(g, [&](int64_t grp, int64_t r, int64_t s, const TapRect& b, int64_t m) {
      const Tensor src = tap_input(x[n], g, b, grp * g.Cg, g.Cg).reshape({g.Cg, m});
      const Tensor wk = wt[r][s].narrow(0, grp * g.Kg, g.Kg);
      Tensor dst = tap_output(acc, b, grp * g.Kg, g.Kg);
      if (b.full_rows(g))
        dst.view({g.Kg, m}).addmm_(wk, src);
      else
        dst.add_(at::mm(wk, src).view({g.Kg, b.pb - b.pa, b.qb - b.qa}));
    });
    if (bias.defined()) acc.add_(bias.view({g.K, 1, 1}));
    apply_act(acc, act);
    if (!in_place) y[n].copy_(acc);
  }
}

void dgrad_taps(const Geo& g, const Tensor& gy, const Tensor& w, const Tensor& gx) {
  const Tensor wt = w.permute({2, 3, 1, 0}).contiguous();  // [R, S, Cg, K]
  const bool in_place = gx.is_contiguous();
  Tensor buf = in_place ? Tensor() : at::empty({g.C, g.H, g.W}, gx.options());
  for (int64_t n = 0; n < g.N; ++n) {
    Tensor acc = in_place ? gx[n] : buf;
    acc.zero_();
    for_each_tap(g, [&](int64_t grp, int64_t r, int64_t s, const TapRect& b, int64_t m) {
      const Tensor src = tap_output(gy[n], b, grp * g.Kg, g.Kg).reshape({g.Kg, m});
      const Tensor wk = wt[r][s].narrow(1, grp * g.Kg, g.Kg);  // [Cg, Kg]
      tap_input(acc, g, b, grp * g.Cg, g.Cg)
          .add_(at::mm(wk, src).view({g.Cg, b.pb - b.pa, b.qb - b.qa}));
    });
    if (!in_place) gx[n].copy_(acc);
  }
}

void wgrad_taps(const Geo& g, const Tensor& gy, const Tensor& x, const Tensor& gw) {
  Tensor acc = at::zeros({g.R, g.S, g.K, g.Cg}, gw.options());
  for (int64_t n = 0; n < g.N; ++n)
    for_each_tap(g, [&](int64_t grp, int64_t r, int64_t s, const TapRect& b, int64_t m) {
      const Tensor a = tap_output(gy[n], b, grp * g.Kg, g.Kg).reshape({g.Kg, m});
      const Tensor src = tap_input(x[n], g, b, grp * g.Cg, g.Cg).reshape({g.Cg, m});
      acc[r][s].narrow(0, grp * g.Kg, g.Kg).addmm_(a, src.t());
    });
  gw.copy_(acc.permute({2, 3, 0, 1}));
}

// depthwise with multiplier 1 where both tensors have unit channel stride (channels_last):
// the channel-vectorised kernels (DILCONV_CPU_PATH=direct|planar|gemm|taps forces the others)
bool planar_path_forced() {
  if (const char* e = std::getenv("DILCONV_CPU_PATH"))
    return !std::strcmp(e, "direct") || !std::strcmp(e, "planar") || !std::strcmp(e, "flat") ||
           !std::strcmp(e, "gemm") || !std::strcmp(e, "taps");
  return false;
}

bool use_nhwc(const Geo& g, const Tensor& a, const Tensor& b) {
  if (planar_path_forced()) return false;
  return g.Cg == 1 && g.Kg == 1 && (a.stride(1) == 1 || g.C == 1) && (b.stride(1) == 1 || g.C == 1);
}

// grouped, Cg == Kg in {2, 4, 8, 16} dividing the vector, both tensors with unit channel stride:
// the channel-vectorised grouped kernels (g_nhwc_ok; the same forced paths turn them off)
template <class T>
bool use_gnhwc(const Geo& g, const Tensor& a, const Tensor& b) {
  if (planar_path_forced()) return false;
  return g_nhwc_ok(g, kern<T>().vec) && a.stride(1) == 1 && b.stride(1) == 1;
}

// index (k, j, t) -> (k % Cg + j) % Cg: the rotated order of the grouped kernels' weights
Tensor rotation_index(const Geo& g, int64_t taps) {
  const Tensor k = at::arange(g.C, at::kLong).view({g.C, 1});
  const Tensor j = at::arange(g.Cg, at::kLong).view({1, g.Cg});
  return ((k % g.Cg + j) % g.Cg).unsqueeze(2).expand({g.C, g.Cg, taps}).contiguous();
}

// the grouped weight [C, Cg, R, S] (Kg == Cg) as the kernels read it: [R * S][Cg][C], rotated
Tensor rotated_taps(const Tensor& w, const Geo& g) {
  const int64_t t = g.R * g.S;
  return w.reshape({g.C, g.Cg, t}).gather(1, rotation_index(g, t)).permute({2, 1, 0}).contiguous();
}

// the depthwise weight [C, 1, R, S] as [R * S][C]
Tensor taps_by_channel(const Tensor& w, const Geo& g) {
  return w.reshape({g.C, g.R * g.S}).t().contiguous();
}

template <class T>
void fwd_nhwc(const Geo& g, const Tensor& x, const Tensor& w, const Tensor& bias, Act act,
              const Tensor& y);
template <class T>
void dw_dgrad_nhwc(const Geo& g, const Tensor& gy, const Tensor& w, const Tensor& gx);
template <class T>
void dw_wgrad_nhwc(const Geo& g, const Tensor& gy, const Tensor& x, const Tensor& gw);

// rows per direct-forward unit: keep the packed window near L2 size and give every thread
// a few units
int64_t fwd_rows_per_unit(const Geo& g, int64_t elem, int64_t vec, int64_t other_units) {
  const int64_t row_bytes = g.Cg * g.sh * g.sw * packed_width(g, vec) * elem;
  int64_t rows = std::max<int64_t>(1, (256 << 10) / std::max<int64_t>(1, row_bytes));
  const int64_t want = 4 * threads();
  if (other_units < want) rows = std::min(rows, std::max<int64_t>(1, g.P * other_units / want));
  rows = std::max(rows, 2 * (g.R - 1) * g.dh / g.sh);  // see dw_flat_rows: bound the halo share
  return std::clamp<int64_t>(rows, 1, g.P);
}

struct Scratch {
  std::unique_ptr<char[]> mem;
  template <class T>
  T* get(int64_t n) {
    mem.reset(new char[sizeof(T) * n + 64]);
    return reinterpret_cast<T*>((reinterpret_cast<uintptr_t>(mem.get()) + 63) & ~uintptr_t(63));
  }
};

// ------------------------------------------------------------------------------------------
// forward

// y = act(conv(x, w) + bias) into y (compute type, any strides); w contiguous.
// rows per flattened-window depthwise unit: window + flat output near half the L1 (48 KiB
// here), and a few units per thread
int64_t dw_flat_rows(const Geo& g, int64_t elem, int64_t other_units) {
  const int64_t wp = g.Q + (g.S - 1) * g.dw;
  const int64_t budget = (24 << 10) / elem;
  const int64_t halo = (g.R - 1) * g.dh;  // packed rows a unit reads beyond its own
  int64_t rows = std::max<int64_t>(1, (budget - halo * wp) / std::max<int64_t>(1, 2 * wp));
  const int64_t want = 4 * threads();
  if (other_units < want) rows = std::min(rows, std::max<int64_t>(1, g.P * other_units / want));
  // never let the halo dominate: at large dilations it would be packed over and over (rate 36:
  // 72 halo rows per output row); past the budget the window lives in L2
  rows = std::max(rows, 2 * halo);
  return std::clamp<int64_t>(rows, 1, g.P);
}

template <class T>
void fwd_direct(const Geo& g, const Tensor& x, const Tensor& w, const Tensor& bias, Act act,
                const Tensor& y) {
  const auto& K = kern<T>();
  const bool flat = use_dw_flat(g, K.vec);
  // the flat kernel computes every multiplier channel from one packed window
  const int64_t kc = flat ? g.Kg : std::min<int64_t>(g.Kg, 16);
  const int64_t nk = (g.Kg + kc - 1) / kc;
  const int64_t rows = flat ? dw_flat_rows(g, sizeof(T), g.N * g.G * nk)
                            : fwd_rows_per_unit(g, sizeof(T), K.vec, g.N * g.G * nk);
  const int64_t np = (g.P + rows - 1) / rows;
  const T *xp = ptr<T>(x), *wp = ptr<T>(w), *bp = ptr<T>(bias);
  T* yp = ptr<T>(y);
  const Strides xs = strides(x), ys = strides(y);
  at::parallel_for(0, g.N * g.G * nk * np, 1, [&](int64_t b, int64_t e) {
    Scratch s;
    T* scratch = s.get<T>(flat ? K.dw_flat_scratch(g, rows) : K.fwd_scratch(g, rows));
    for (int64_t u = b; u < e; ++u) {
      const int64_t pi = u % np, ki = u / np % nk, grp = u / np / nk % g.G, n = u / np / nk / g.G;
      const int64_t p0 = pi * rows, p1 = std::min(g.P, p0 + rows);
      const int64_t k0 = ki * kc, k1 = std::min(g.Kg, k0 + kc);
      (flat ? K.dw_flat_fwd : K.fwd)(g, xp, xs, wp, bp, act, yp, ys, n, grp, k0, k1, p0, p1, scratch);
    }
  });
}

// rows of output per GEMM chunk: bound the im2col buffer to ~8 MiB
int64_t gemm_rows(const Geo& g, int64_t elem) {
  const int64_t per_row = std::max<int64_t>(1, g.Cg * g.R * g.S * g.Q * elem);
  return std::clamp<int64_t>((8 << 20) / per_row, 1, std::max<int64_t>(1, g.P));
}

// f(n, grp, p0, p1, col) for every chunk of gemm_rows output rows [p0, p1) of every image and
// group, col a view of one buffer (the caller fills it or reads it): [R S Cg][(p1 - p0) Q] (NCHW:
// the GEMM's B), or [(p1 - p0) Q][R S Cg] where pixel_major (channels-last: the GEMM's A)
template <class T, class F>
void each_chunk(const Geo& g, const at::TensorOptions& opts, bool pixel_major, F&& f) {
  const int64_t rows = gemm_rows(g, sizeof(T)), crs = g.Cg * g.R * g.S;
  Tensor colbuf = at::empty({crs * rows * g.Q}, opts);
  for (int64_t n = 0; n < g.N; ++n)
    for (int64_t grp = 0; grp < g.G; ++grp)
      for (int64_t p0 = 0; p0 < g.P; p0 += rows) {
        const int64_t p1 = std::min(g.P, p0 + rows), m = (p1 - p0) * g.Q;
        const Tensor col = colbuf.narrow(0, 0, crs * m);
        f(n, grp, p0, p1, pixel_major ? col.view({m, crs}) : col.view({crs, m}));
      }
}

// NCHW t's group grp (Kg channels) of image n, rows [p0, p1) of its planes: [Kg][(p1 - p0) Q]
Tensor group_rows(const Tensor& t, const Geo& g, int64_t n, int64_t grp, int64_t p0,
                  int64_t p1) {
  return t[n].narrow(0, grp * g.Kg, g.Kg).view({g.Kg, g.P * g.Q}).narrow(1, p0 * g.Q,
                                                                          (p1 - p0) * g.Q);
}

template <class T>
void im2col_chunk(const Geo& g, const Tensor& x, int64_t n, int64_t grp, int64_t p0, int64_t p1,
                  const Tensor& col) {
  const auto& K = kern<T>();
  const T* xp = ptr<T>(x);
  T* cp = ptr<T>(col);
  const Strides xs = strides(x);
  at::parallel_for(0, g.Cg, 1, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) K.im2col(g, xp, xs, n, grp, c, p0, p1, cp);
  });
}

template <class T>
void fwd_gemm(const Geo& g, const Tensor& x, const Tensor& w, const Tensor& bias, Act act,
              const Tensor& y) {
  const auto ct = y.scalar_type();
  const bool direct_out = y.is_contiguous();
  Tensor out = direct_out ? y : at::empty(y.sizes(), y.options());
  const Tensor w2 = w.view({g.G, g.Kg, g.Cg * g.R * g.S});
  each_chunk<T>(g, x.options().dtype(ct), false,
                [&](int64_t n, int64_t grp, int64_t p0, int64_t p1, const Tensor& col) {
                  im2col_chunk<T>(g, x, n, grp, p0, p1, col);
                  Tensor dst = group_rows(out, g, n, grp, p0, p1);
                  at::mm_out(dst, w2[grp], col);
                });
  if (bias.defined()) out.add_(bias.view({1, g.K, 1, 1}));
  apply_act(out, act);
  if (!direct_out) y.copy_(out);
}

// [P * Q, channels] view of image n of a channels-last contiguous tensor (a pixel a row)
Tensor pixel_rows(const Tensor& t, int64_t n) {
  return t[n].as_strided({t.size(2) * t.size(3), t.size(1)}, {t.stride(3), t.stride(1)});
}

// the GEMM paths in channels-last: col [pixel][r][s][Cg] (im2col_nhwc, rows split over the
// threads) against the weights as [Kg][R S Cg], so that the pixels' channels stay contiguous
// (NCHW's im2col strode C elements a value through a channels-last x, and the result went
// through an NCHW temporary; quick suite, Zen 4, ratio to torch before -> after: ASPP 3x3 d12
// 256ch 64^2 forward 0.44 -> 0.74x, forward + backward 0.50 -> 0.72x; 168->336 3x3 d8 0.52 ->
// 0.82x, 0.62 -> 0.84x; FCN's 21ch 4x4 s2 transposed conv 0.10 -> 0.96x, 0.18 -> 0.75x)
bool use_gemm_nhwc(const Tensor& a, const Tensor& b) {
  return a.is_contiguous(at::MemoryFormat::ChannelsLast) &&
         b.is_contiguous(at::MemoryFormat::ChannelsLast) && a.size(1) > 1 && b.size(1) > 1;
}

// The gradients of a strided channels-last conv without groups (a stem: 3 -> 32 3x3 s2) by the
// GEMM paths rather than the direct kernels, which take it for its few input channels (use_direct)
// but run planar on channels-last data: Zen 4, 2 images, each call right after the other: input
// gradient 3 -> 32 3x3 s2 @513^2 30 -> 6.8 ms, 3 -> 64 7x7 s2 @512^2 149 -> 46, 8 -> 16 3x3 s2
// @129^2 1.6 -> 0.5 (oneDNN 12.1, 63, 0.40); one input channel 0.5 -> 0.9, so not those; nor
// windows mostly of padding (the GEMM would sum over their zeros: use_taps skips those taps).
// (DILCONV_CPU_PATH forces the direct kernels or these as it says.)
bool use_strided_gemm_nhwc(const Geo& g, const Tensor& a, const Tensor& b) {
  if (std::getenv("DILCONV_CPU_PATH")) return false;
  return g.G == 1 && g.C > 1 && (g.sh > 1 || g.sw > 1) && use_gemm_nhwc(a, b) &&
         valid_fraction(g) >= 0.75;
}

// w [K, Cg, R, S] as [G][Kg][R S Cg]
Tensor taps_channels_last(const Tensor& w, const Geo& g) {
  return w.reshape({g.G, g.Kg, g.Cg, g.R, g.S})
      .permute({0, 1, 3, 4, 2})
      .reshape({g.G, g.Kg, g.R * g.S * g.Cg});
}

// f(n, grp, r0, m, col) for every chunk of output rows of every image and group: col [m][R S Cg]
// holds the taps of pixels [r0, r0 + m) of image n, group grp (im2col_nhwc, rows split over
// the threads); chunks of gemm_rows rows
template <class T, class F>
void each_col_nhwc(const Geo& g, const Tensor& x, F&& f) {
  const auto& K = kern<T>();
  const T* xp = ptr<T>(x);
  const Strides xs = strides(x);
  each_chunk<T>(g, x.options(), true,
                [&](int64_t n, int64_t grp, int64_t p0, int64_t p1, const Tensor& col) {
                  T* cp = ptr<T>(col);
                  at::parallel_for(p0, p1, 1, [&](int64_t a, int64_t b) {
                    K.im2col_nhwc(g, xp, xs, n, grp, p0, a, b, cp);
                  });
                  f(n, grp, p0 * g.Q, col.size(0), col);
                });
}

// channels-last forward, output rows split over the threads: depthwise (use_nhwc) or grouped
// (use_gnhwc), each with its own weight layout
template <class T>
void fwd_nhwc(const Geo& g, const Tensor& x, const Tensor& w, const Tensor& bias, Act act,
              const Tensor& y) {
  const auto& K = kern<T>();
  const bool dw = g.Cg == 1;
  const Tensor wt = dw ? taps_by_channel(w, g) : rotated_taps(w, g);
  const auto kernel = dw ? K.dw_nhwc_fwd : K.g_nhwc_fwd;
  const T *xp = ptr<T>(x), *wp = ptr<T>(wt), *bp = ptr<T>(bias);
  T* yp = ptr<T>(y);
  const Strides xs = strides(x), ys = strides(y);
  at::parallel_for(0, g.N * g.P, 1, [&](int64_t b, int64_t e) {
    std::vector<int64_t> taps(4 * g.R * g.S);
    for (int64_t f = b; f < e;) {
      const int64_t n = f / g.P, p0 = f % g.P, p1 = std::min(g.P, p0 + (e - f));
      kernel(g, xp, xs, wp, bp, act, yp, ys, n, p0, p1, taps.data());
      f += p1 - p0;
    }
  });
}

// 1x1, stride 1, unpadded convolutions are plain GEMMs over the pixels when each tensor is a
// matrix: NCHW with contiguous planes ([C][HW], "planar") or channels-last with uniform pixel
// rows ([HW][C], "pixels"); both tensors the same kind, more than 8 channels per group
// (DILCONV_CPU_PATH=pointwise|gemm|... forces).
enum class PwLayout { none, planar, pixels };

PwLayout pw_layout(const Tensor& t) {
  const int64_t H = t.size(2), W = t.size(3);
  if (t.stride(3) == 1 && t.stride(2) == W && t.stride(1) >= H * W) return PwLayout::planar;
  if (t.stride(1) == 1 && t.stride(3) >= t.size(1) && t.stride(2) == W * t.stride(3))
    return PwLayout::pixels;
  return PwLayout::none;
}

PwLayout use_pointwise(const Geo& g, const Tensor& x, const Tensor& y) {
  // one output pixel per input pixel: not so in a transposed conv's output padding beyond the
  // stride (g.P < g.H: gx columns no gy pixel reaches, where the GEMM had read gy out of bounds)
  if (!(g.R == 1 && g.S == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0 &&
        g.P == g.H && g.Q == g.W))
    return PwLayout::none;
  const PwLayout lx = pw_layout(x);
  if (lx == PwLayout::none || lx != pw_layout(y)) return PwLayout::none;
  if (const char* e = std::getenv("DILCONV_CPU_PATH"))
    return std::strcmp(e, "pointwise") && std::strcmp(e, "bcast") ? PwLayout::none : lx;
  return g.Cg > 8 ? lx : PwLayout::none;
}

// channels [c0, c0 + c) of batch n as a matrix: planar [c][HW] or pixels [HW][c]
Tensor pix_matrix(const Tensor& t, PwLayout l, int64_t n, int64_t c0, int64_t c) {
  const int64_t hw = t.size(2) * t.size(3);
  const int64_t off = t.storage_offset() + n * t.stride(0) + c0 * t.stride(1);
  return l == PwLayout::planar ? t.as_strided({c, hw}, {t.stride(1), 1}, off)
                               : t.as_strided({hw, c}, {t.stride(3), 1}, off);
}

// planar t ([N][c][HW] planes, each contiguous) as N matrices [c, HW]: NCHW pointwise
// convolutions without an epilogue take one batched GEMM over the images (MKL's batched call,
// 2 threads) where that ran faster than a GEMM per image: a sum over >= 64 channels, or small
// planes (2 images: 304 -> 256 channels at 129^2 19 -> 17 ms, 64 -> 384 at 33^2 1.2x); with
// fewer channels to sum over large planes (16 -> 96 at 257^2, 24 -> 144 at 129^2: a write-bound
// GEMM) it ran up to 2x slower.
bool use_batched_gemm(const Geo& g, int64_t sum_channels) {
  return g.G == 1 && g.N > 1 && (sum_channels >= 64 || g.P * g.Q <= 4225);
}

Tensor batch_matrices(const Tensor& t, int64_t c) {
  return t.as_strided({t.size(0), c, t.size(2) * t.size(3)}, {t.stride(0), t.stride(1), 1},
                      t.storage_offset());
}

// planar pointwise GEMMs by the register-tiled kernel (gemm_bcast: bias and activation applied
// in registers, no BLAS call per block) with AVX-512, except on Intel CPUs, where MKL's GEMM was
// measured fast (and this kernel was not). Zen 4, 1x1 NCHW with bias + ReLU6 at batch 1, against
// MKL's blocks: 1.8-2.2x with 16-32 input channels on 65^2-257^2 maps, 1.1-1.4x on 304 -> 256
// @129^2 and 960 -> 160 @33^2 (165-190 GFLOP/s). Its AVX2 variant (12 sums a tile) ran 0.57-0.76x
// of MKL on the large ones there. DILCONV_CPU_PATH=bcast|pointwise forces.
bool use_gemm_bcast(PwLayout l) {
  if (l != PwLayout::planar) return false;
  if (const char* e = std::getenv("DILCONV_CPU_PATH")) return !std::strcmp(e, "bcast");
  return !cpu_is_intel() && kernels_f32().vec == 16;
}

// Splits n columns into `units` ranges of nearly equal size with their boundaries at multiples
// of `vec` (the last range ends at n): the start of range u (u == units: n). With as many units
// as a multiple of the threads, each thread gets the same number of columns (7 ranges on 2
// threads, 4 + 3, had cost the 1x1 GEMMs ~12%). Boundaries at whole vectors, not whole 4-vector
// tiles: 33x33 maps (1089 columns, 8 ranges) had split 512 + 577 columns between 2 threads.
inline int64_t range_start(int64_t n, int64_t units, int64_t u, int64_t vec) {
  return u >= units ? n : std::min(n, n * u / units / vec * vec);
}

// how many column ranges of at least two register tiles (`tile` columns) each over `mats`
// matrices of n columns give every thread a few (4 * threads() in all where the columns allow)
inline int64_t ranges_per_matrix(int64_t n, int64_t mats, int64_t tile) {
  const int64_t want = (4 * threads() + mats - 1) / mats;
  return std::max<int64_t>(1, std::min(want, n / (2 * tile)));
}

// dst[n, group] = act(a[group] @ src[n, group] + bias) on planar matrices by gemm_bcast: a is
// [G][rows][kd] contiguous, src kd planes a group, dst rows planes a group; the pixels split into
// ranges over the threads, a thread's consecutive ranges of one matrix as one call (one
// narrower tile and one tail a row of tiles, not one each range)
template <class T>
void planar_bcast(const Geo& g, const T* a, int64_t rows, int64_t kd, const Tensor& src,
                  const T* bias, Act act, const Tensor& dst) {
  const auto& K = kern<T>();
  const int64_t hw = dst.size(2) * dst.size(3);
  const int64_t mats = g.N * g.G, nch = ranges_per_matrix(hw, mats, 4 * K.vec);
  const T* sp = ptr<T>(src);
  T* dp = ptr<T>(dst);
  const int64_t sc = src.stride(1), dc = dst.stride(1);
  at::parallel_for(0, mats * nch, 1, [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1;) {
      const int64_t m = u / nch, ue = std::min(u1, (m + 1) * nch);
      const int64_t j0 = range_start(hw, nch, u - m * nch, K.vec);
      const int64_t j1 = range_start(hw, nch, ue - m * nch, K.vec);
      const int64_t n = m / g.G, grp = m % g.G;
      K.gemm_bcast(a + grp * rows * kd, kd, 1, sp + n * src.stride(0) + grp * kd * sc, sc, kd,
                   bias ? bias + grp * rows : nullptr, true, act,
                   dp + n * dst.stride(0) + grp * rows * dc, dc, 0, rows, j0, j1, false);
      u = ue;
    }
  });
}

// channels-last pointwise GEMMs by gemm_bcast with the pixels as its rows (AVX-512 off Intel,
// as use_gemm_bcast): d[pixel][j] = act(a[pixel] . b[:, j] + bias[j]), b [kd][cols] contiguous (the
// weight, transposed for the forward), the bias per column. BLAS's GEMM plus a separate bias and
// clamp pass over y ran at 0.35-0.9x of this (Zen 4, 2 threads, in one process, alternated: 1x1
// forward 16 -> 96 @257^2 2.9 -> 1.8 ms, 256 -> 21 @129^2 3.9 -> 2.2, 304 -> 256 @129^2 17.8 ->
// 15.4, 960 -> 160 @33^2 2.2 -> 2.0; input gradients 1.1-2.9x). DILCONV_CPU_PATH=bcast forces.
bool use_pixels_bcast(PwLayout l) {
  if (l != PwLayout::pixels) return false;
  if (const char* e = std::getenv("DILCONV_CPU_PATH")) return !std::strcmp(e, "bcast");
  return !cpu_is_intel() && kernels_f32().vec == 16;
}

// rows [0, rows) of d = act(a @ b + bias) (row pitches as, ds) for `mats` matrices, matrix m's
// (a, b, bias, d) given by mat(m). Each matrix's rows split into `per` chunks whose rows of a
// (<= ~128 KiB) stay in the L2 while every column block of b passes over them, at least 4 a
// thread in all and, while few, as many as a multiple of the threads (3 chunks of 33^2 pixels
// on 2 threads had run 0.7x), boundaries at whole 6-row tiles.
template <class T, class Mat>
void pixels_bcast(int64_t mats, int64_t rows, int64_t kd, int64_t cols, int64_t as, int64_t ds,
                  Act act, Mat&& mat) {
  const auto& K = kern<T>();
  const int64_t nt = threads(), most = std::max<int64_t>(1, rows / 12);
  const int64_t chunk = std::clamp<int64_t>(int64_t{32768} / std::max<int64_t>(kd, 1), 48, 1024);
  int64_t per = std::min(most, std::max((rows + chunk - 1) / chunk, (4 * nt + mats - 1) / mats));
  while (mats * per < 16 * nt && (mats * per) % nt && per < most) ++per;
  at::parallel_for(0, mats * per, 1, [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t m = u / per, i = u % per;
      auto edge = [&](int64_t e) { return e == per ? rows : rows * e / per / 6 * 6; };
      const int64_t r0 = edge(i), r1 = edge(i + 1);
      const auto [a, b, bias, d] = mat(m);
      K.gemm_bcast(a, as, 1, b, cols, kd, bias, false, act, d, ds, r0, r1, 0, cols, false);
    }
  });
}

// the same over the images and groups of channels-last tensors: dst[n, :, group] =
// act(src[n, :, group] @ b[group] + bias[group]), b [G][kd][cols]
template <class T>
void pixels_bcast(const Geo& g, const T* b, int64_t kd, int64_t cols, const Tensor& src,
                  const T* bias, Act act, const Tensor& dst) {
  const T* sp = ptr<T>(src);
  T* dp = ptr<T>(dst);
  pixels_bcast<T>(g.N * g.G, dst.size(2) * dst.size(3), kd, cols, src.stride(3), dst.stride(3),
                  act, [&](int64_t m) {
    const int64_t n = m / g.G, grp = m % g.G;
    return std::make_tuple(sp + n * src.stride(0) + grp * kd * src.stride(1), b + grp * kd * cols,
                           bias ? bias + grp * cols : nullptr,
                           dp + n * dst.stride(0) + grp * cols * dst.stride(1));
  });
}

// The GEMM by gemm_bcast where the pointwise convs take it (use_pixels_bcast): a few rows of
// pixels a unit, their col (~128 KiB) made and multiplied by the same thread while in its L2, the
// bias and act applied as it stores. BLAS's GEMM is slow on so few columns, and a col of the
// whole map went through memory between two parallel passes (Kg = 21, FCN's 21ch 4x4 s2 conv
// over 70^2, 2 threads, Zen 4, in a loop: BLAS 0.39 ms, gemm_bcast after a whole im2col 0.26,
// this 0.20; oneDNN 0.18-0.19 alternated with it)
template <class T>
void fwd_gemm_nhwc(const Geo& g, const Tensor& x, const Tensor& w, const Tensor& bias, Act act,
                   const Tensor& y) {
  const int64_t rsc = g.R * g.S * g.Cg;
  const Tensor w2 = taps_channels_last(w, g);  // [G][Kg][R S Cg]
  if (use_pixels_bcast(PwLayout::pixels)) {
    const auto& K = kern<T>();
    const Tensor w2t = w2.transpose(1, 2).contiguous();  // [G][R S Cg][Kg], gemm_bcast's B
    const int64_t rows = std::clamp<int64_t>(32768 / std::max<int64_t>(1, rsc * g.Q), 1, g.P);
    const int64_t nb = (g.P + rows - 1) / rows;
    const T *xp = ptr<T>(x), *wp = ptr<T>(w2t), *bp = ptr<T>(bias);
    T* yp = ptr<T>(y);
    const Strides xs = strides(x), ys = strides(y);
    at::parallel_for(0, g.N * g.G * nb, 1, [&](int64_t u0, int64_t u1) {
      std::vector<T> col(rows * g.Q * rsc);
      for (int64_t u = u0; u < u1; ++u) {
        const int64_t n = u / (g.G * nb), grp = u / nb % g.G;
        const int64_t pa = u % nb * rows, pb = std::min(g.P, pa + rows);
        K.im2col_nhwc(g, xp, xs, n, grp, pa, pa, pb, col.data());
        K.gemm_bcast(col.data(), rsc, 1, wp + grp * rsc * g.Kg, g.Kg, rsc,
                     bp ? bp + grp * g.Kg : nullptr, false, act,
                     yp + n * ys.n + grp * g.Kg + pa * ys.h, ys.w, 0, (pb - pa) * g.Q, 0, g.Kg,
                     false);
      }
    });
    return;
  }
  each_col_nhwc<T>(g, x, [&](int64_t n, int64_t grp, int64_t r0, int64_t m, const Tensor& col) {
    Tensor dst = pixel_rows(y, n).narrow(0, r0, m).narrow(1, grp * g.Kg, g.Kg);
    at::mm_out(dst, col, w2[grp].t());
  });
  if (bias.defined()) y.add_(bias.view({1, g.K, 1, 1}));
  apply_act(y, act);
}

// y = W x per group and batch, by GEMMs over blocks of pixels whose output (~1 MiB) is still in
// cache when the epilogue adds the bias and applies act: the whole-tensor passes of the GEMM
// path (im2col copy, bias, activation) disappear. planar: [Kg, m] = [Kg, Cg] @ [Cg, m];
// pixels: [m, Kg] = [m, Cg] @ [Cg, Kg].
template <class T>
void fwd_pointwise(const Geo& g, PwLayout l, const Tensor& x, const Tensor& w, const Tensor& bias,
                   Act act, const Tensor& y) {
  if (use_gemm_bcast(l)) {
    const Tensor wc = w.contiguous();
    return planar_bcast<T>(g, ptr<T>(wc), g.Kg, g.Cg, x, ptr<T>(bias), act, y);
  }
  if (use_pixels_bcast(l)) {
    const Tensor wt = w.view({g.G, g.Kg, g.Cg}).transpose(1, 2).contiguous();  // [G][Cg][Kg]
    return pixels_bcast<T>(g, ptr<T>(wt), g.Cg, g.Kg, x, ptr<T>(bias), act, y);
  }
  const auto& K = kern<T>();
  const int64_t hw = g.P * g.Q;
  const T* bp = ptr<T>(bias);
  // without an epilogue one GEMM per plane (a block GEMM runs at ~5-15% below a whole one)
  int64_t blk = std::max<int64_t>(512, (int64_t{1} << 20) / (g.Kg * int64_t(sizeof(T))));
  blk = (bp || act) ? std::min(hw, (blk + 63) / 64 * 64) : hw;
  const Tensor w2 = w.view({g.G, g.Kg, g.Cg});
  const bool planar = l == PwLayout::planar;
  const int64_t pix = planar ? 1 : y.stride(3), ch = y.stride(1);  // y strides in elements
  if (planar && !bp && !act && use_batched_gemm(g, g.C)) {
    Tensor out = batch_matrices(y, g.K);
    at::bmm_out(out, w2[0].expand({g.N, g.K, g.C}), batch_matrices(x, g.C));
    return;
  }
  for (int64_t n = 0; n < g.N; ++n)
    for (int64_t grp = 0; grp < g.G; ++grp) {
      const Tensor xm = pix_matrix(x, l, n, grp * g.Cg, g.Cg);
      const Tensor ym = pix_matrix(y, l, n, grp * g.Kg, g.Kg);
      const Tensor wg = planar ? w2[grp] : w2[grp].t();
      const T* b = bp ? bp + grp * g.Kg : nullptr;
      for (int64_t p0 = 0; p0 < hw; p0 += blk) {
        const int64_t m = std::min(blk, hw - p0);
        Tensor dst = ym.narrow(planar ? 1 : 0, p0, m);
        if (planar)
          at::mm_out(dst, wg, xm.narrow(1, p0, m));
        else
          at::mm_out(dst, xm.narrow(0, p0, m), wg);
        if (!b && !act) continue;
        T* d = ptr<T>(y) + n * y.stride(0) + grp * g.Kg * ch + p0 * pix;
        if (planar)
          at::parallel_for(0, g.Kg, 8, [&](int64_t k0, int64_t k1) {
            K.bias_act(d, ch, k0, k1, m, b, true, act);
          });
        else
          at::parallel_for(0, m, 64, [&](int64_t r0, int64_t r1) {
            K.bias_act(d, pix, r0, r1, g.Kg, b, false, act);
          });
      }
    }
}

template <class T>
void fwd_any(const Geo& g, const Tensor& x, const Tensor& w, const Tensor& bias, Act act,
             const Tensor& y) {
  if (y.numel() == 0) return;
  if (use_nhwc(g, x, y) || use_gnhwc<T>(g, x, y))
    fwd_nhwc<T>(g, x, w, bias, act, y);
  else if (const PwLayout l = use_pointwise(g, x, y); l != PwLayout::none)
    fwd_pointwise<T>(g, l, x, w, bias, act, y);
  else if (use_direct(g))
    fwd_direct<T>(g, x, w, bias, act, y);
  else if (use_taps(g))
    fwd_taps(g, x, w, bias, act, y);
  else if (use_gemm_nhwc(x, y))
    fwd_gemm_nhwc<T>(g, x, w, bias, act, y);
  else
    fwd_gemm<T>(g, x, w, bias, act, y);
}

// ------------------------------------------------------------------------------------------
// input gradient: gx [N, C, H, W] from gy [N, K, P, Q] (internally P, Q may be smaller than the
// convolution's own, for conv_transpose2d: missing rows count as zero gradient)

// the weights of the stride-1 input gradient seen as a forward convolution of gy:
// [C, Kg, R, S], spatially flipped, groups' in/out roles exchanged
Tensor flipped_weight(const Tensor& w, const Geo& g) {
  return w.view({g.G, g.Kg, g.Cg, g.R, g.S})
      .transpose(1, 2)
      .flip({3, 4})
      .reshape({g.C, g.Kg, g.R, g.S})
      .contiguous();
}

// the stride-1 input gradient as a forward convolution of gy (flipped weights, padding
// d * (k - 1) - p, negative = cropping)
Geo dgrad_as_fwd(const Geo& g) {
  Geo f = g;
  f.C = g.K, f.H = g.P, f.W = g.Q, f.K = g.C, f.P = g.H, f.Q = g.W;
  f.Cg = g.Kg, f.Kg = g.Cg;
  f.ph = g.dh * (g.R - 1) - g.ph, f.pw = g.dw * (g.S - 1) - g.pw;
  return f;
}

template <class T>
void dgrad_direct(const Geo& g, const Tensor& gy, const Tensor& w, const Tensor& gx) {
  const auto& K = kern<T>();
  if (g.sh == 1 && g.sw == 1) {
    fwd_direct<T>(dgrad_as_fwd(g), gy, flipped_weight(w, g), Tensor(), false, gx);
    return;
  }
  if (dw_s2_dgrad_ok(g) && gx.stride(3) == 1) {
    const T *gyp = ptr<T>(gy), *wp = ptr<T>(w);
    T* gxp = ptr<T>(gx);
    const Strides gys = strides(gy), gxs = strides(gx);
    at::parallel_for(0, g.N * g.C, 1, [&](int64_t b, int64_t e) {
      Scratch s;
      T* scratch = s.get<T>(K.dw_s2_dgrad_scratch(g));
      for (int64_t u = b; u < e; ++u) K.dw_s2_dgrad(g, gyp, gys, wp, gxp, gxs, u / g.C, u % g.C, scratch);
    });
    return;
  }
  const int64_t cc = std::max<int64_t>(1, std::min<int64_t>(g.Cg, (g.N * g.G >= 2 * threads()) ? g.Cg : 1));
  const int64_t ncu = (g.Cg + cc - 1) / cc;
  const T *gyp = ptr<T>(gy), *wp = ptr<T>(w);
  T* gxp = ptr<T>(gx);
  const Strides gys = strides(gy), gxs = strides(gx);
  at::parallel_for(0, g.N * g.G * ncu, 1, [&](int64_t b, int64_t e) {
    Scratch s;
    T* scratch = s.get<T>(K.dgrad_scatter_scratch(g, cc));
    for (int64_t u = b; u < e; ++u) {
      const int64_t ci = u % ncu, grp = u / ncu % g.G, n = u / ncu / g.G;
      const int64_t c0 = ci * cc, c1 = std::min(g.Cg, c0 + cc);
      K.dgrad_scatter(g, gyp, gys, wp, gxp, gxs, n, grp, c0, c1, scratch);
    }
  });
}

template <class T>
void dgrad_gemm(const Geo& g, const Tensor& gy_in, const Tensor& w, const Tensor& gx) {
  const auto& K = kern<T>();
  const Tensor gy = gy_in.contiguous();
  gx.zero_();
  const Tensor w2 = w.view({g.G, g.Kg, g.Cg * g.R * g.S});
  T* gxp = ptr<T>(gx);
  const Strides gxs = strides(gx);
  each_chunk<T>(g, gy.options(), false,
                [&](int64_t n, int64_t grp, int64_t p0, int64_t p1, const Tensor& col) {
                  Tensor c2 = col;
                  at::mm_out(c2, w2[grp].t(), group_rows(gy, g, n, grp, p0, p1));
                  const T* cp = ptr<T>(col);
                  at::parallel_for(0, g.Cg, 1, [&](int64_t b, int64_t e) {
                    for (int64_t c = b; c < e; ++c) K.col2im(g, cp, gxp, gxs, n, grp, c, p0, p1);
                  });
                });
}

// dgrad_gemm for a channels-last gx: per chunk of gy rows the GEMM gives every tap's vector of
// Cg channels ([pixel][r][s][Cg] = gy [pixels][Kg] @ w [Kg][R S Cg]) and each gx row gathers its
// own (col2im_nhwc, rows split over the threads); NCHW's col2im, a channel plane at a time,
// strode C elements a value through a channels-last gx (FCN's 21ch 4x4 s2 transposed conv,
// channels-last: 10x torch's time)
template <class T>
void dgrad_gemm_nhwc(const Geo& g, const Tensor& gy_in, const Tensor& w, const Tensor& gx) {
  const auto& K = kern<T>();
  const Tensor gy = gy_in.contiguous(at::MemoryFormat::ChannelsLast);
  gx.zero_();
  const Tensor w2 = taps_channels_last(w, g);
  T* gxp = ptr<T>(gx);
  const Strides gxs = strides(gx);
  each_chunk<T>(g, gy.options(), true,
                [&](int64_t n, int64_t grp, int64_t p0, int64_t p1, const Tensor& col) {
                  Tensor c2 = col;
                  at::mm_out(c2,
                             pixel_rows(gy, n).narrow(0, p0 * g.Q, (p1 - p0) * g.Q).narrow(
                                 1, grp * g.Kg, g.Kg),
                             w2[grp]);
                  // the gx rows these gy rows reach
                  const int64_t i0 = std::max<int64_t>(0, p0 * g.sh - g.ph);
                  const int64_t i1 =
                      std::min(g.H, (p1 - 1) * g.sh - g.ph + (g.R - 1) * g.dh + 1);
                  const T* cp = ptr<T>(col);
                  at::parallel_for(i0, std::max(i0, i1), 1, [&](int64_t b, int64_t e) {
                    K.col2im_nhwc(g, cp, gxp, gxs, n, grp, p0, p1, b, e);
                  });
                });
}

template <class T>
void dw_dgrad_nhwc(const Geo& g, const Tensor& gy, const Tensor& w, const Tensor& gx) {
  if (g.sh == 1 && g.sw == 1) {
    fwd_nhwc<T>(dgrad_as_fwd(g), gy, flipped_weight(w, g), Tensor(), false, gx);
    return;
  }
  const auto& K = kern<T>();
  const Tensor wt = taps_by_channel(w, g);
  const T *gyp = ptr<T>(gy), *wp = ptr<T>(wt);
  T* gxp = ptr<T>(gx);
  const Strides gys = strides(gy), gxs = strides(gx);
  at::parallel_for(0, g.N * g.H, 1, [&](int64_t b, int64_t e) {
    std::vector<int64_t> taps(4 * g.R * g.S);
    for (int64_t f = b; f < e;) {
      const int64_t n = f / g.H, i0 = f % g.H, i1 = std::min(g.H, i0 + (e - f));
      K.dw_nhwc_dgrad(g, gyp, gys, wp, gxp, gxs, n, i0, i1, taps.data());
      f += i1 - i0;
    }
  });
}

// pointwise (use_pointwise): gx[n, group] = W[group]^T gy[n, group], written by the GEMM
template <class T>
void dgrad_pointwise(const Geo& g, PwLayout l, const Tensor& gy, const Tensor& w,
                     const Tensor& gx) {
  const Tensor w2 = w.view({g.G, g.Kg, g.Cg});
  if (use_gemm_bcast(l)) {
    const Tensor wt = w2.transpose(1, 2).contiguous();  // [G][Cg][Kg]
    return planar_bcast<T>(g, ptr<T>(wt), g.Cg, g.Kg, gy, nullptr, false, gx);
  }
  if (use_pixels_bcast(l)) {
    const Tensor wc = w.contiguous();  // [G][Kg][Cg]
    return pixels_bcast<T>(g, ptr<T>(wc), g.Kg, g.Cg, gy, nullptr, Act(), gx);
  }
  if (l == PwLayout::planar && use_batched_gemm(g, g.K)) {  // one batched GEMM
    Tensor out = batch_matrices(gx, g.C);
    at::bmm_out(out, w2[0].t().expand({g.N, g.C, g.K}), batch_matrices(gy, g.K));
    return;
  }
  for (int64_t n = 0; n < g.N; ++n)
    for (int64_t grp = 0; grp < g.G; ++grp) {
      Tensor dst = pix_matrix(gx, l, n, grp * g.Cg, g.Cg);
      const Tensor src = pix_matrix(gy, l, n, grp * g.Kg, g.Kg);
      if (l == PwLayout::planar)
        at::mm_out(dst, w2[grp].t(), src);  // [Cg, HW] = [Cg, Kg] @ [Kg, HW]
      else
        at::mm_out(dst, src, w2[grp]);  // [HW, Cg] = [HW, Kg] @ [Kg, Cg]
    }
}

template <class T>
void dgrad_any(const Geo& g, const Tensor& gy, const Tensor& w, const Tensor& gx) {
  if (gx.numel() == 0) return;
  if (gy.numel() == 0) {
    gx.zero_();
    return;
  }
  if (use_nhwc(g, gy, gx))
    dw_dgrad_nhwc<T>(g, gy, w, gx);
  else if (g.sh == 1 && g.sw == 1 && use_gnhwc<T>(g, gy, gx))  // a forward with flipped weights
    fwd_nhwc<T>(dgrad_as_fwd(g), gy, flipped_weight(w, g), Tensor(), false, gx);
  else if (const PwLayout l = use_pointwise(g, gx, gy); l != PwLayout::none)
    dgrad_pointwise<T>(g, l, gy, w, gx);
  else if (use_strided_gemm_nhwc(g, gy, gx))
    dgrad_gemm_nhwc<T>(g, gy, w, gx);
  else if (use_direct(g))
    dgrad_direct<T>(g, gy, w, gx);
  else if (use_taps(g))
    dgrad_taps(g, gy, w, gx);
  else if (gx.stride(1) == 1 && g.C > 1)
    dgrad_gemm_nhwc<T>(g, gy, w, gx);
  else
    dgrad_gemm<T>(g, gy, w, gx);
}

// ------------------------------------------------------------------------------------------
// weight gradient: gw [K, Cg, R, S] contiguous

template <class T>
void wgrad_direct(const Geo& g, const Tensor& gy, const Tensor& x, const Tensor& gw) {
  const auto& K = kern<T>();
  const bool flat = use_dw_flat(g, K.vec);
  const int64_t kc = std::min<int64_t>(g.Kg, g.G >= 2 * threads() ? g.Kg : std::max<int64_t>(1, g.Kg / (2 * threads())));
  const int64_t nk = (g.Kg + kc - 1) / kc;
  const T *gyp = ptr<T>(gy), *xp = ptr<T>(x);
  T* gwp = ptr<T>(gw);
  const Strides gys = strides(gy), xs = strides(x);
  at::parallel_for(0, g.G * nk, 1, [&](int64_t b, int64_t e) {
    Scratch s;
    T* scratch = s.get<T>(flat ? K.dw_flat_wgrad_scratch(g, kc) : K.wgrad_scratch(g, kc));
    for (int64_t u = b; u < e; ++u) {
      const int64_t ki = u % nk, grp = u / nk;
      const int64_t k0 = ki * kc, k1 = std::min(g.Kg, k0 + kc);
      (flat ? K.dw_flat_wgrad : K.wgrad)(g, gyp, gys, xp, xs, gwp, grp, k0, k1, scratch);
    }
  });
}

template <class T>
void wgrad_gemm(const Geo& g, const Tensor& gy_in, const Tensor& x, const Tensor& gw) {
  const Tensor gy = gy_in.contiguous();
  gw.zero_();
  const Tensor gw2 = gw.view({g.G, g.Kg, g.Cg * g.R * g.S});
  each_chunk<T>(g, gy.options(), false,
                [&](int64_t n, int64_t grp, int64_t p0, int64_t p1, const Tensor& col) {
                  im2col_chunk<T>(g, x, n, grp, p0, p1, col);
                  gw2[grp].addmm_(group_rows(gy, g, n, grp, p0, p1), col.t());
                });
}

// wgrad_gemm in channels-last: gw [Kg][R S Cg] += gy [pixels][Kg]^T @ col [pixels][R S Cg].
// On AMD AVX-512 (use_pixels_bcast) by gemm_bcast, each thread summing its own share of the
// output rows into its own partial gw (as wgrad_pixels: the wider of col and gy as B, the other
// read down its columns), a few hundred pixels a step so that both stay in the L2. MKL had run
// the stem's [32, m] x [m, 27] products (3 -> 32 3x3 s2) at 25-35 GFLOP/s.
template <class T>
void wgrad_gemm_nhwc(const Geo& g, const Tensor& gy, const Tensor& x, const Tensor& gw) {
  const auto& K = kern<T>();
  const int64_t rsc = g.R * g.S * g.Cg;
  const int64_t all = g.N * g.P, parts = std::min(threads(), all);
  // MKL's parallel GEMM where gemm_bcast would sum columns one by one (fewer than a vector:
  // 8 -> 3 2x2 s2 2.4x slower) or the threads' partial gradients would pass 8 Mi values (many
  // threads on a wide layer: 64 x 512 x 4608)
  if (!use_pixels_bcast(PwLayout::pixels) || std::max(rsc, g.Kg) < K.vec ||
      parts * g.G * g.Kg * rsc > (int64_t(8) << 20)) {
    Tensor sum = at::zeros({g.G, g.Kg, rsc}, gy.options());
    each_col_nhwc<T>(g, x, [&](int64_t n, int64_t grp, int64_t r0, int64_t m, const Tensor& col) {
      sum[grp].addmm_(pixel_rows(gy, n).narrow(0, r0, m).narrow(1, grp * g.Kg, g.Kg).t(), col);
    });
    gw.view({g.G, g.Kg, g.Cg, g.R, g.S})
        .copy_(sum.view({g.G, g.Kg, g.R, g.S, g.Cg}).permute({0, 1, 4, 2, 3}));
    return;
  }
  const bool cols_col = rsc >= g.Kg;  // the columns: col's taps (rows gy's channels), else gy's
  const int64_t rows_d = cols_col ? g.Kg : rsc, cols_d = cols_col ? rsc : g.Kg;
  const int64_t step = std::clamp<int64_t>(98304 / (g.Kg + rsc) / g.Q, 1, g.P);  // output rows
  Tensor part = at::empty({parts, g.G, rows_d, cols_d}, gw.options());
  const T *xp = ptr<T>(x), *gyp = ptr<T>(gy);
  T* pp = ptr<T>(part);
  const Strides xs = strides(x), gys = strides(gy);
  at::parallel_for(0, parts, 1, [&](int64_t b, int64_t e) {
    std::vector<T> col(step * g.Q * rsc);
    for (int64_t i = b; i < e; ++i) {
      const int64_t begin = all * i / parts, end = all * (i + 1) / parts;
      for (int64_t f = begin; f < end;) {
        const int64_t n = f / g.P, p0 = f % g.P;
        const int64_t p1 = std::min({g.P, p0 + step, p0 + (end - f)}), m = (p1 - p0) * g.Q;
        for (int64_t grp = 0; grp < g.G; ++grp) {
          K.im2col_nhwc(g, xp, xs, n, grp, p0, p0, p1, col.data());
          const T* gq = gyp + n * gys.n + grp * g.Kg * gys.c + p0 * gys.h;
          T* d = pp + (i * g.G + grp) * rows_d * cols_d;
          if (cols_col)
            K.gemm_bcast(gq, gys.c, gys.w, col.data(), rsc, m, nullptr, false, Act(), d, cols_d,
                         0, rows_d, 0, cols_d, f > begin);
          else
            K.gemm_bcast(col.data(), 1, rsc, gq, gys.w, m, nullptr, false, Act(), d, cols_d, 0,
                         rows_d, 0, cols_d, f > begin);
        }
        f += p1 - p0;
      }
    }
  });
  const Tensor sum = part.sum(0);  // [G][rows_d][cols_d]
  const Tensor sk = cols_col ? sum : sum.transpose(1, 2);  // [G][Kg][R S Cg]
  gw.view({g.G, g.Kg, g.Cg, g.R, g.S})
      .copy_(sk.reshape({g.G, g.Kg, g.R, g.S, g.Cg}).permute({0, 1, 4, 2, 3}));
}

template <class T>
void dw_wgrad_nhwc(const Geo& g, const Tensor& gy, const Tensor& x, const Tensor& gw) {
  const auto& K = kern<T>();
  const int64_t rows = g.N * g.P;
  const int64_t parts = std::min(threads(), rows);
  Tensor part = at::zeros({parts, g.R * g.S, g.C}, gy.options());
  const T *gyp = ptr<T>(gy), *xp = ptr<T>(x);
  T* pp = ptr<T>(part);
  const Strides gys = strides(gy), xs = strides(x);
  at::parallel_for(0, parts, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      K.dw_nhwc_wgrad(g, gyp, gys, xp, xs, pp + i * g.R * g.S * g.C, nullptr, rows * i / parts,
                      rows * (i + 1) / parts);
  });
  gw.view({g.C, g.R * g.S}).copy_(part.sum(0).t());
}

template <class T>
void g_wgrad_nhwc(const Geo& g, const Tensor& gy, const Tensor& x, const Tensor& gw) {
  const auto& K = kern<T>();
  const int64_t rows = g.N * g.P, taps = g.R * g.S;
  const int64_t parts = std::min(threads(), rows);
  Tensor part = at::zeros({parts, taps, g.Cg, g.C}, gy.options());
  const T *gyp = ptr<T>(gy), *xp = ptr<T>(x);
  T* pp = ptr<T>(part);
  const Strides gys = strides(gy), xs = strides(x);
  at::parallel_for(0, parts, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      K.g_nhwc_wgrad(g, gyp, gys, xp, xs, pp + i * taps * g.Cg * g.C, rows * i / parts,
                     rows * (i + 1) / parts);
  });
  // (k, j, t) of the sum holds gw[k][(k % Cg + j) % Cg][t]
  gw.view({g.C, g.Cg, taps}).scatter_(1, rotation_index(g, taps), part.sum(0).permute({2, 1, 0}));
}

// NCHW 1x1 weight gradient by gemm_bcast: gw[k][c] = sum over images and pixels of
// gy[n][k][p] x[n][c][p]. Both operands hold the sum's index (the pixels) along their rows;
// gemm_bcast wants the output's columns contiguous in B, so the operand with fewer channels
// (min(Cg, Kg)) is transposed, a chunk of pixels at a time, into [pixels][channels padded to
// whole vectors] and the other one's planes are A's rows. The work splits over (image, chunk of
// pixels) units, each summing into its own partial gradient, summed at the end: over pixels,
// not output rows, so a narrow gradient (16 x 96 channels) still keeps both threads busy.
// Where MKL's GEMMs (the batched call of wgrad_pointwise) ran slower (Zen 4, 2 images, 2
// threads, each call right after MKL's): 16 -> 96 @257^2 8.6 -> 5.7 ms, 32 -> 16 @257^2 2.5 ->
// 2.2, 65^2 maps 144 -> 32 / 32 -> 192 / 192 -> 32 1.1-1.2x, 33^2 maps up to 96 x 576 channels
// 1.05-1.3x; not on wider 33^2 (320 -> 256 0.88x, 960 -> 320 0.97-1.05x) nor 129^2 with more
// than 16 channels a side (304 -> 256 0.87x: transposing 256 planes of 129^2 costs ~13%).
// With DILCONV_CPU_PATH=bcast (tests) wherever gemm_bcast runs.
bool use_wgrad_bcast(const Geo& g) {
  if (g.G != 1) return false;
  if (const char* e = std::getenv("DILCONV_CPU_PATH")) return !std::strcmp(e, "bcast");
  return std::min(g.C, g.K) <= 16 || (g.P * g.Q <= 65 * 65 && g.C * g.K <= 96 * 576);
}

template <class T>
void wgrad_bcast(const Geo& g, const Tensor& gy, const Tensor& x, const Tensor& gw) {
  const auto& K = kern<T>();
  const int64_t hw = g.P * g.Q;
  const bool cols_c = g.C <= g.K;  // the columns: input channels (x transposed), else gy's
  const Tensor& nb = cols_c ? x : gy;  // transposed into B
  const Tensor& na = cols_c ? gy : x;  // A's rows
  const int64_t rows = cols_c ? g.K : g.C, cols = cols_c ? g.C : g.K;
  const int64_t colsp = (cols + K.vec - 1) / K.vec * K.vec;
  const int64_t chunks = std::clamp<int64_t>((2 * threads() + g.N - 1) / g.N, 1,
                                             std::max<int64_t>(1, hw / 256));
  const int64_t units = g.N * chunks, clen = (hw + chunks - 1) / chunks;
  Tensor part = at::empty({units, rows, colsp}, gw.options());
  Tensor bt = at::empty({units, clen, colsp}, gw.options());
  const T *ap = ptr<T>(na), *bp = ptr<T>(nb);
  T *pp = ptr<T>(part), *tp = ptr<T>(bt);
  const int64_t as = na.stride(1), bs = nb.stride(1);
  at::parallel_for(0, units, 1, [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t n = u / chunks, p0 = std::min(hw, u % chunks * clen);
      const int64_t len = std::min(hw, p0 + clen) - p0;
      T* b = tp + u * clen * colsp;
      const T* src = bp + n * nb.stride(0) + p0;
      // blocks of 16 channels x 64 pixels: rows read along, the block's writes within L1
      for (int64_t q0 = 0; q0 < len; q0 += 64) {
        const int64_t q1 = std::min(len, q0 + 64);
        for (int64_t j0 = 0; j0 < cols; j0 += 16)
          for (int64_t j = j0; j < std::min(cols, j0 + 16); ++j)
            for (int64_t q = q0; q < q1; ++q) b[q * colsp + j] = src[j * bs + q];
      }
      if (colsp > cols)  // the padding columns: zero sums
        for (int64_t q = 0; q < len; ++q) std::fill(b + q * colsp + cols, b + (q + 1) * colsp, T(0));
      K.gemm_bcast(ap + n * na.stride(0) + p0, as, 1, b, colsp, len, nullptr, false, Act(),
                   pp + u * rows * colsp, colsp, 0, rows, 0, colsp, false);
    }
  });
  const Tensor sum = part.sum(0).narrow(1, 0, cols);  // [rows][cols]
  gw.view({g.K, g.C}).copy_(cols_c ? sum : sum.t());
}

// Channels-last 1x1 weight gradient by gemm_bcast (use_pixels_bcast): gw[k][c] = sum over images
// and pixels of gy[n][p][k] x[n][p][c]. The pixels are the sum's index: the operand with more
// channels is B as it lies (pixel rows), the other one A read down its channels' columns (as = 1,
// acs = its pixel stride), so nothing is transposed. (image, group, chunk of pixels) units each
// sum into their own partial gradient, summed at the end.
template <class T>
void wgrad_pixels(const Geo& g, const Tensor& gy, const Tensor& x, const Tensor& gw) {
  const auto& K = kern<T>();
  const int64_t hw = g.P * g.Q, mats = g.N * g.G;
  const bool cols_c = g.Cg >= g.Kg;  // the columns: x's channels (rows gy's), else the reverse
  const Tensor& nb = cols_c ? x : gy;
  const Tensor& na = cols_c ? gy : x;
  const int64_t rows = cols_c ? g.Kg : g.Cg, cols = cols_c ? g.Cg : g.Kg;
  const int64_t chunks = std::clamp<int64_t>((2 * threads() + mats - 1) / mats, 1,
                                             std::max<int64_t>(1, hw / 256));
  const int64_t units = mats * chunks;
  Tensor part = at::empty({g.N, g.G, chunks, rows, cols}, gw.options());
  const T *ap = ptr<T>(na), *bp = ptr<T>(nb);
  T* pp = ptr<T>(part);
  // the sum in steps of `sub` pixels, each step's rows of A and B (~384 KiB) in the L2 while
  // every column block passes over them (one call over a whole chunk, its passes inside each
  // column block, had streamed the chunk's rows from memory once per column block: 304 -> 256
  // @129^2 0.89x of BLAS's)
  const int64_t sub = std::clamp<int64_t>(int64_t{98304} / (rows + cols), 32, 384);
  at::parallel_for(0, units, 1, [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t m = u / chunks, i = u % chunks, n = m / g.G, grp = m % g.G;
      const int64_t p0 = hw * i / chunks, p1 = hw * (i + 1) / chunks;
      const T* a = ap + n * na.stride(0) + grp * rows * na.stride(1);
      const T* b = bp + n * nb.stride(0) + grp * cols * nb.stride(1);
      for (int64_t q = p0; q < p1 || q == p0; q += sub)  // (an empty chunk: zeros)
        K.gemm_bcast(a + q * na.stride(3), na.stride(1), na.stride(3), b + q * nb.stride(3),
                     nb.stride(3), std::min(sub, p1 - q), nullptr, false, Act(),
                     pp + u * rows * cols, cols, 0, rows, 0, cols, q > p0);
    }
  });
  const Tensor sum = part.sum(IntArrayRef{0, 2});  // [G][rows][cols]
  gw.view({g.G, g.Kg, g.Cg}).copy_(cols_c ? sum : sum.transpose(1, 2));
}

// pointwise (use_pointwise): gw[group] = sum over n of gy[n, group] x[n, group]^T
template <class T>
void wgrad_pointwise(const Geo& g, PwLayout l, const Tensor& gy, const Tensor& x,
                     const Tensor& gw) {
  const bool planar = l == PwLayout::planar;
  if (use_gemm_bcast(l) && use_wgrad_bcast(g)) return wgrad_bcast<T>(g, gy, x, gw);  // planar
  if (use_pixels_bcast(l)) return wgrad_pixels<T>(g, gy, x, gw);
  const Tensor gw2 = gw.view({g.G, g.Kg, g.Cg});
  // planes up to 129^2 (2 images): one batched GEMM per image's [K, C], then their sum, ran
  // faster than a GEMM accumulating image by image (24 -> 144 at 129^2 2.0 -> 1.7 ms, 32 -> 192
  // at 65^2 0.57 -> 0.40, 64 -> 384 at 33^2 0.51 -> 0.39; 16 -> 96 at 257^2 4.5 -> 5.7: not there)
  if (planar && g.G == 1 && g.N > 1 && g.P * g.Q <= 16641) {
    Tensor part = at::empty({g.N, g.K, g.C}, gw.options());
    at::bmm_out(part, batch_matrices(gy, g.K), batch_matrices(x, g.C).transpose(1, 2));
    Tensor dst = gw2[0];
    at::sum_out(dst, part, {0});
    return;
  }
  for (int64_t grp = 0; grp < g.G; ++grp) {
    Tensor dst = gw2[grp];
    for (int64_t n = 0; n < g.N; ++n) {
      const Tensor a = pix_matrix(gy, l, n, grp * g.Kg, g.Kg);
      const Tensor b = pix_matrix(x, l, n, grp * g.Cg, g.Cg);
      // [Kg, Cg] = [Kg, HW] @ [HW, Cg]
      const Tensor lhs = planar ? a : a.t(), rhs = planar ? b.t() : b;
      if (n == 0)
        at::mm_out(dst, lhs, rhs);
      else
        dst.addmm_(lhs, rhs);
    }
  }
}

template <class T>
void wgrad_any(const Geo& g, const Tensor& gy, const Tensor& x, const Tensor& gw) {
  if (gw.numel() == 0) return;
  if (gy.numel() == 0 || x.numel() == 0) {
    gw.zero_();
    return;
  }
  if (use_nhwc(g, gy, x))
    dw_wgrad_nhwc<T>(g, gy, x, gw);
  else if (use_gnhwc<T>(g, gy, x))
    g_wgrad_nhwc<T>(g, gy, x, gw);
  else if (const PwLayout l = use_pointwise(g, x, gy); l != PwLayout::none)
    wgrad_pointwise<T>(g, l, gy, x, gw);
  else if (use_strided_gemm_nhwc(g, gy, x))
    wgrad_gemm_nhwc<T>(g, gy, x, gw);
  else if (use_direct(g))
    wgrad_direct<T>(g, gy, x, gw);
  else if (use_taps(g))
    wgrad_taps(g, gy, x, gw);
  else if (use_gemm_nhwc(gy, x))
    wgrad_gemm_nhwc<T>(g, gy, x, gw);
  else
    wgrad_gemm<T>(g, gy, x, gw);
}

// ------------------------------------------------------------------------------------------
// ops

Tensor to_compute(const Tensor& t, at::ScalarType ct) {
  return t.scalar_type() == ct ? t : t.to(ct);
}

Tensor finish(const Tensor& r, at::ScalarType dtype) {
  return r.scalar_type() == dtype ? r : r.to(dtype);
}

Tensor conv2d_act(const char* op, const Tensor& input, const Tensor& weight,
                  const std::optional<Tensor>& bias, IntArrayRef stride, IntArrayRef padding,
                  IntArrayRef dilation, int64_t groups, Act act) {
  check_dim(op, input, "input", 4);
  check_dim(op, weight, "weight", 4);
  check_dtype(op, input);
  check_float(op, weight, "weight", input);
  check_pair(op, "stride", stride, 1);
  check_pair(op, "padding", padding, 0);
  check_pair(op, "dilation", dilation, 1);
  TORCH_CHECK(groups > 0, op, ": groups must be positive, got ", groups);
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t K = weight.size(0), R = weight.size(2), S = weight.size(3);
  TORCH_CHECK(K % groups == 0 && C % groups == 0 && weight.size(1) * groups == C, op,
              ": weight ", weight.sizes(), " does not match input ", input.sizes(), " with groups=",
              groups);
  TORCH_CHECK(R > 0 && S > 0, op, ": empty kernel ", weight.sizes());
  check_bias(op, bias, input, K);
  const int64_t P = out_size(H, R, stride[0], padding[0], dilation[0]);
  const int64_t Q = out_size(W, S, stride[1], padding[1], dilation[1]);
  TORCH_CHECK(H + 2 * padding[0] >= dilation[0] * (R - 1) + 1 &&
                  W + 2 * padding[1] >= dilation[1] * (S - 1) + 1,
              op, ": kernel (dilated) larger than the padded input");
  const auto ct = compute_type(input.scalar_type());
  Geo g = make_geo(N, C, H, W, K, P, Q, R, S, stride, padding, dilation, groups);
  Tensor y = empty_fmt({N, K, P, Q}, input.options().dtype(ct), out_format(input));
  with_type(ct, [&](auto t) {
    using T = decltype(t);
    fwd_any<T>(g, to_compute(input, ct), to_compute(weight, ct).contiguous(),
               bias ? to_compute(*bias, ct).contiguous() : Tensor(), act, y);
  });
  return finish(y, input.scalar_type());
}

Tensor conv2d(const Tensor& input, const Tensor& weight, const std::optional<Tensor>& bias,
              IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
  return conv2d_act("dilconv::conv2d", input, weight, bias, stride, padding, dilation, groups,
                    Act());
}

// conv2d then clamp(min, max) (max = inf: ReLU-like), the clamp applied as each output is stored
Tensor conv2d_clamp(const Tensor& input, const Tensor& weight, const std::optional<Tensor>& bias,
                    IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation, int64_t groups,
                    double min, double max) {
  const char* op = "dilconv::conv2d_clamp";
  TORCH_CHECK(!std::isnan(min) && !std::isnan(max) && min <= max, op,
              ": need min <= max (not NaN), got min=", min, ", max=", max);
  return conv2d_act(op, input, weight, bias, stride, padding, dilation, groups, Act(min, max));
}

// Checks shared by the two gradient ops; returns the geometry.
Geo grad_geo(const char* op, const Tensor& gy, IntArrayRef in_size, IntArrayRef w_size,
             IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
  check_pair(op, "stride", stride, 1);
  check_pair(op, "padding", padding, 0);
  check_pair(op, "dilation", dilation, 1);
  TORCH_CHECK(groups > 0, op, ": groups must be positive, got ", groups);
  TORCH_CHECK(in_size.size() == 4 && w_size.size() == 4, op, ": sizes must have 4 elements");
  for (auto v : in_size) TORCH_CHECK(v >= 0, op, ": negative input size ", in_size);
  for (auto v : w_size) TORCH_CHECK(v >= 0, op, ": negative weight size ", w_size);
  const int64_t N = in_size[0], C = in_size[1], H = in_size[2], W = in_size[3];
  const int64_t K = w_size[0], R = w_size[2], S = w_size[3];
  TORCH_CHECK(R > 0 && S > 0, op, ": empty kernel ", w_size);
  TORCH_CHECK(K % groups == 0 && C % groups == 0 && w_size[1] * groups == C, op, ": weight ",
              w_size, " does not match input ", in_size, " with groups=", groups);
  TORCH_CHECK(gy.size(0) == N && gy.size(1) == K, op, ": grad_output ", gy.sizes(),
              " does not match input ", in_size, " and weight ", w_size);
  TORCH_CHECK(H + 2 * padding[0] >= dilation[0] * (R - 1) + 1 &&
                  W + 2 * padding[1] >= dilation[1] * (S - 1) + 1,
              op, ": kernel (dilated) larger than the padded input");
  const int64_t P = out_size(H, R, stride[0], padding[0], dilation[0]);
  const int64_t Q = out_size(W, S, stride[1], padding[1], dilation[1]);
  TORCH_CHECK(gy.size(2) == P && gy.size(3) == Q, op, ": grad_output ", gy.sizes(),
              " does not match the convolution output [", P, ", ", Q, "]");
  return make_geo(N, C, H, W, K, gy.size(2), gy.size(3), R, S, stride, padding, dilation, groups);
}

Tensor conv2d_input_grad(const Tensor& grad_output, const Tensor& weight, IntArrayRef input_size,
                         IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
                         int64_t groups) {
  const char* op = "dilconv::conv2d_input_grad";
  check_dim(op, grad_output, "grad_output", 4);
  check_dim(op, weight, "weight", 4);
  check_dtype(op, grad_output);
  check_float(op, weight, "weight", grad_output);
  Geo g = grad_geo(op, grad_output, input_size, weight.sizes(), stride, padding, dilation, groups);
  const auto ct = compute_type(grad_output.scalar_type());
  Tensor gx = empty_fmt(input_size, grad_output.options().dtype(ct), out_format(grad_output));
  with_type(ct, [&](auto t) {
    using T = decltype(t);
    dgrad_any<T>(g, to_compute(grad_output, ct), to_compute(weight, ct).contiguous(), gx);
  });
  return finish(gx, grad_output.scalar_type());
}

Tensor conv2d_weight_grad(const Tensor& grad_output, const Tensor& input, IntArrayRef weight_size,
                          IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
                          int64_t groups) {
  const char* op = "dilconv::conv2d_weight_grad";
  check_dim(op, grad_output, "grad_output", 4);
  check_dim(op, input, "input", 4);
  check_dtype(op, grad_output);
  check_float(op, input, "input", grad_output);
  Geo g = grad_geo(op, grad_output, input.sizes(), weight_size, stride, padding, dilation, groups);
  const auto ct = compute_type(grad_output.scalar_type());
  Tensor gw = at::empty(weight_size, grad_output.options().dtype(ct));
  with_type(ct, [&](auto t) {
    using T = decltype(t);
    wgrad_any<T>(g, to_compute(grad_output, ct), to_compute(input, ct), gw);
  });
  return finish(gw, grad_output.scalar_type());
}

// The whole backward of conv2d: (grad_input, grad_weight, grad_bias), each only where
// output_mask asks (else undefined). Stride-1 "same" depthwise convs with few taps take the fused
// kernel (gy read once for all three); everything else the separate gradients.
template <class T>
void dw_bwd_fused(const Geo& g, const Tensor& gy, const Tensor& x, const Tensor& w,
                  const Tensor& gx, const Tensor& gw, const Tensor& gb) {
  const auto& K = kern<T>();
  const Tensor wf = flipped_weight(w, g);
  const T *gyp = ptr<T>(gy), *xp = ptr<T>(x), *wfp = ptr<T>(wf);
  T *gxp = ptr<T>(gx), *gwp = ptr<T>(gw), *gbp = ptr<T>(gb);
  const Strides gys = strides(gy), xs = strides(x), gxs = gx.defined() ? strides(gx) : Strides{};
  at::parallel_for(0, g.C, 1, [&](int64_t b, int64_t e) {
    Scratch s;
    T* scratch = s.get<T>(K.dw_flat_bwd_scratch(g));
    K.dw_flat_bwd(g, gyp, gys, xp, xs, wfp, gxp, gxs, gwp, gbp, b, e, scratch);
  });
}

bool use_dw_bwd_fused(const Geo& g, const Tensor& gy, const Tensor& x, int64_t vec) {
  return dw_flat_bwd_ok(g) && use_dw_flat(g, vec) && !use_nhwc(g, gy, x) && use_direct(g);
}

// Channels-last: each thread takes a range of rows (N * P == N * H) and walks it a few rows at a
// time, input gradient (a forward of gy with the flipped weights) then weight and bias gradient
// of the same rows, so the second and third reads of those gy rows hit the L2.
bool use_dw_bwd_nhwc_fused(const Geo& g, const Tensor& gy, const Tensor& x, const Tensor& gx) {
  // gx follows gy's memory format, which a channels-last view (a channel slice: unit channel
  // stride, not channels-last contiguous) does not carry: then gx is NCHW, not for this kernel
  return use_nhwc(g, gy, x) && (!gx.defined() || use_nhwc(g, gy, gx)) && g.sh == 1 &&
         g.sw == 1 && g.P == g.H && g.Q == g.W;
}

template <class T>
void dw_bwd_nhwc_fused(const Geo& g, const Tensor& gy, const Tensor& x, const Tensor& w,
                       const Tensor& gx, const Tensor& gw, const Tensor& gb) {
  const auto& K = kern<T>();
  const Geo f = dgrad_as_fwd(g);
  const Tensor wt = taps_by_channel(flipped_weight(w, g), f);
  const int64_t rs = g.R * g.S, rows = g.N * g.P;
  const int64_t parts = std::min(threads(), rows);
  // per part: [R * S][C] weight-gradient sums (where asked for: rw rows), then [C] bias-gradient
  // sums
  const int64_t rw = gw.defined() ? rs : 0;
  Tensor part = at::zeros({parts, rw + 1, g.C}, gy.options());
  const T *gyp = ptr<T>(gy), *xp = ptr<T>(x), *wtp = ptr<T>(wt);
  T *gxp = ptr<T>(gx), *pp = ptr<T>(part);
  const Strides gys = strides(gy), xs = strides(x), gxs = gx.defined() ? strides(gx) : Strides{};
  // rows a step: gy rows plus halo, and the x rows, within the L2 (2 rows at 728ch x 65)
  const int64_t row_bytes = g.Q * g.C * static_cast<int64_t>(sizeof(T));
  const int64_t chunk = std::clamp<int64_t>((512 << 10) / std::max<int64_t>(1, row_bytes), 1, 8);
  at::parallel_for(0, parts, 1, [&](int64_t b, int64_t e) {
    std::vector<int64_t> taps(4 * rs);
    for (int64_t i = b; i < e; ++i) {
      T* acc = pp + i * (rw + 1) * g.C;
      const int64_t f1 = rows * (i + 1) / parts;
      for (int64_t a = rows * i / parts; a < f1;) {
        const int64_t n = a / g.P, p0 = a % g.P;
        const int64_t p1 = std::min({g.P, p0 + chunk, p0 + (f1 - a)});
        if (gxp) K.dw_nhwc_fwd(f, gyp, gys, wtp, nullptr, false, gxp, gxs, n, p0, p1, taps.data());
        if (gw.defined() || gb.defined())
          K.dw_nhwc_wgrad(g, gyp, gys, xp, xs, gw.defined() ? acc : nullptr,
                          gb.defined() ? acc + rw * g.C : nullptr, a, a + p1 - p0);
        a += p1 - p0;
      }
    }
  });
  const Tensor sums = part.sum(0);
  if (gw.defined()) gw.view({g.C, rs}).copy_(sums.narrow(0, 0, rs).t());
  if (gb.defined()) gb.copy_(sums[rw]);
}

std::tuple<Tensor, Tensor, Tensor> conv2d_backward(const Tensor& grad_output, const Tensor& input,
                                                   const Tensor& weight, IntArrayRef stride,
                                                   IntArrayRef padding, IntArrayRef dilation,
                                                   int64_t groups, std::array<bool, 3> mask) {
  const char* op = "dilconv::conv2d_backward";
  check_dim(op, grad_output, "grad_output", 4);
  check_dim(op, input, "input", 4);
  check_dim(op, weight, "weight", 4);
  check_dtype(op, grad_output);
  check_float(op, input, "input", grad_output);
  check_float(op, weight, "weight", grad_output);
  Geo g = grad_geo(op, grad_output, input.sizes(), weight.sizes(), stride, padding, dilation,
                   groups);
  const auto dtype = grad_output.scalar_type();
  const auto ct = compute_type(dtype);
  const auto opts = grad_output.options().dtype(ct);
  Tensor gx, gw, gb;
  if (mask[0]) gx = empty_fmt(input.sizes(), opts, out_format(grad_output));
  if (mask[1]) gw = at::empty(weight.sizes(), opts);
  if (mask[2]) gb = at::empty({g.K}, opts);
  with_type(ct, [&](auto t) {
    using T = decltype(t);
    const Tensor gy = to_compute(grad_output, ct), x = to_compute(input, ct);
    const Tensor w = to_compute(weight, ct).contiguous();
    const bool fuse = gy.numel() > 0 && (mask[0] || mask[1]);
    if (fuse && use_dw_bwd_nhwc_fused(g, gy, x, gx)) {
      dw_bwd_nhwc_fused<T>(g, gy, x, w, gx, gw, gb);
      return;
    }
    if (fuse && use_dw_bwd_fused(g, gy, x, kern<T>().vec)) {
      dw_bwd_fused<T>(g, gy, x, w, gx, gw, gb);
      return;
    }
    if (mask[0]) dgrad_any<T>(g, gy, w, gx);
    if (mask[1]) wgrad_any<T>(g, gy, x, gw);
    if (mask[2]) at::sum_out(gb, gy, {0, 2, 3});
  });
  auto out = [&](const Tensor& t) { return t.defined() ? finish(t, dtype) : t; };
  return {out(gx), out(gw), out(gb)};
}

Tensor conv_transpose2d(const Tensor& input, const Tensor& weight, const std::optional<Tensor>& bias,
                        IntArrayRef stride, IntArrayRef padding, IntArrayRef output_padding,
                        int64_t groups, IntArrayRef dilation) {
  const char* op = "dilconv::conv_transpose2d";
  check_dim(op, input, "input", 4);
  check_dim(op, weight, "weight", 4);
  check_dtype(op, input);
  check_float(op, weight, "weight", input);
  check_pair(op, "stride", stride, 1);
  check_pair(op, "padding", padding, 0);
  check_pair(op, "output_padding", output_padding, 0);
  check_pair(op, "dilation", dilation, 1);
  TORCH_CHECK(groups > 0, op, ": groups must be positive, got ", groups);
  for (int i = 0; i < 2; ++i)
    TORCH_CHECK(output_padding[i] < stride[i] || output_padding[i] < dilation[i], op,
                ": output padding must be smaller than either stride or dilation");
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t R = weight.size(2), S = weight.size(3);
  TORCH_CHECK(weight.size(0) == C && C % groups == 0, op, ": weight ", weight.sizes(),
              " does not match input ", input.sizes(), " with groups=", groups);
  TORCH_CHECK(R > 0 && S > 0, op, ": empty kernel ", weight.sizes());
  // (as torch: an empty map would otherwise answer with the bias on a map of one row)
  TORCH_CHECK(H > 0 && W > 0, op, ": empty spatial input ", input.sizes());
  const int64_t K = weight.size(1) * groups;
  check_bias(op, bias, input, K);
  const int64_t Ho = (H - 1) * stride[0] - 2 * padding[0] + dilation[0] * (R - 1) + output_padding[0] + 1;
  const int64_t Wo = (W - 1) * stride[1] - 2 * padding[1] + dilation[1] * (S - 1) + output_padding[1] + 1;
  TORCH_CHECK(Ho > 0 && Wo > 0, op, ": output size [", Ho, ", ", Wo, "] is not positive");
  // the input gradient of conv2d(out [N, K, Ho, Wo], weight [C, K/g, R, S]) -> [N, C, H, W]
  Geo g = make_geo(N, K, Ho, Wo, C, H, W, R, S, stride, padding, dilation, groups);
  // output_padding >= stride (allowed when < dilation) leaves conv outputs past the input:
  // they read as zero gradient
  g.P = std::min(H, out_size(Ho, R, stride[0], padding[0], dilation[0]));
  g.Q = std::min(W, out_size(Wo, S, stride[1], padding[1], dilation[1]));
  const auto ct = compute_type(input.scalar_type());
  Tensor y = empty_fmt({N, K, Ho, Wo}, input.options().dtype(ct), out_format(input));
  with_type(ct, [&](auto t) {
    using T = decltype(t);
    Tensor x = to_compute(input, ct);
    if (g.P < H || g.Q < W) x = x.narrow(2, 0, g.P).narrow(3, 0, g.Q);
    dgrad_any<T>(g, x, to_compute(weight, ct).contiguous(), y);
    if (bias && y.numel()) y.add_(to_compute(*bias, ct).view({1, K, 1, 1}));
  });
  return finish(y, input.scalar_type());
}

// ------------------------------------------------------------------------------------------
// separable: mid = act(dw(x) + dw_bias), out = act(pw(mid) + pw_bias)

struct SepArgs {
  Geo dw;  // the depthwise convolution (groups = C, Kg = multiplier)
  int64_t K;  // pointwise outputs
};

SepArgs sep_check(const char* op, const Tensor& input, const Tensor& dw_weight,
                  const std::optional<Tensor>& dw_bias, const Tensor& pw_weight,
                  const std::optional<Tensor>& pw_bias, IntArrayRef stride, IntArrayRef padding,
                  IntArrayRef dilation) {
  check_dim(op, input, "input", 4);
  check_dim(op, dw_weight, "dw_weight", 4);
  check_dim(op, pw_weight, "pw_weight", 4);
  check_dtype(op, input);
  check_float(op, dw_weight, "dw_weight", input);
  check_float(op, pw_weight, "pw_weight", input);
  check_pair(op, "stride", stride, 1);
  check_pair(op, "padding", padding, 0);
  check_pair(op, "dilation", dilation, 1);
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t CM = dw_weight.size(0), R = dw_weight.size(2), S = dw_weight.size(3);
  TORCH_CHECK(C > 0 && dw_weight.size(1) == 1 && CM % C == 0 && CM > 0, op, ": dw_weight ",
              dw_weight.sizes(), " must be [C*M, 1, R, S] for input ", input.sizes());
  TORCH_CHECK(R > 0 && S > 0, op, ": empty kernel ", dw_weight.sizes());
  TORCH_CHECK(pw_weight.size(1) == CM && pw_weight.size(2) == 1 && pw_weight.size(3) == 1, op,
              ": pw_weight ", pw_weight.sizes(), " must be [K, ", CM, ", 1, 1]");
  const int64_t K = pw_weight.size(0);
  check_bias(op, dw_bias, input, CM, "dw_bias");
  check_bias(op, pw_bias, input, K, "pw_bias");
  TORCH_CHECK(H + 2 * padding[0] >= dilation[0] * (R - 1) + 1 &&
                  W + 2 * padding[1] >= dilation[1] * (S - 1) + 1,
              op, ": kernel (dilated) larger than the padded input");
  const int64_t P = out_size(H, R, stride[0], padding[0], dilation[0]);
  const int64_t Q = out_size(W, S, stride[1], padding[1], dilation[1]);
  return {make_geo(N, C, H, W, CM, P, Q, R, S, stride, padding, dilation, C), K};
}

// the pointwise half of a separable conv (g its depthwise half, K outputs) as the 1x1
// convolution it is, for conv2d's pointwise paths
Geo pointwise_geo(const Geo& g, int64_t K) {
  const int64_t one[2] = {1, 1}, zero[2] = {0, 0};
  return make_geo(g.N, g.K, g.P, g.Q, K, g.P, g.Q, 1, 1, one, zero, one, 1);
}

// the unfused forward's depthwise half, mid = act(dw(x) + dw_bias), in memory format fmt
template <class T>
Tensor sep_mid(const Geo& g, const Tensor& x, const Tensor& dw, const Tensor& dwb, bool mid_relu,
               at::MemoryFormat fmt) {
  Tensor mid = empty_fmt({g.N, g.K, g.P, g.Q}, x.options(), fmt);
  fwd_any<T>(g, x, dw, dwb, mid_relu, mid);
  return mid;
}

// Fused forward: per tile of output rows, the depthwise result for all mid channels is computed
// into a cache-sized buffer (never written out as a whole tensor), then multiplied by the
// pointwise weight straight into y. Both steps use all threads (BLAS is not nested inside
// parallel_for: nested BLAS threads oversubscribe the cores).
template <class T>
void sep_fwd_fused(const Geo& g, int64_t K, const Tensor& x, const Tensor& dw, const Tensor& dwb,
                   bool mid_relu, const Tensor& pw, const Tensor& pwb, bool out_relu,
                   const Tensor& y) {
  const auto& ks = kern<T>();
  const bool nhwc = use_nhwc(g, x, y);
  const int64_t row_bytes = g.Q * g.K * static_cast<int64_t>(sizeof(T));
  const int64_t rows = std::clamp<int64_t>((8 << 20) / std::max<int64_t>(1, row_bytes), 1, g.P);
  const Tensor wt = nhwc ? taps_by_channel(dw, g) : dw;
  const Tensor pwc = pw.contiguous();  // [K][CM], gemm_bcast's A (NCHW)
  const Tensor pwt = nhwc ? pw.t().contiguous() : Tensor();  // [CM][K], its B (channels-last)
  const T *xp = ptr<T>(x), *wp = ptr<T>(wt), *bp = ptr<T>(dwb);
  const Strides xs = strides(x);
  // NCHW tile: channel rows mp apart, an odd number of cache lines, so that the GEMM's panel of
  // consecutive rows spreads over the cache sets (a pitch of 1023 floats, 2048 channels at 33^2,
  // put its rows 4092 bytes apart: the same L1 sets, and the fused forward ran 2.5x slower)
  const int64_t line = 64 / int64_t(sizeof(T));
  int64_t mp = (rows * g.Q + line - 1) / line * line;
  if ((mp / line) % 2 == 0) mp += line;
  Tensor tile_t = at::empty({nhwc ? rows * g.Q * g.K : mp * g.K}, x.options());
  T* tile = ptr<T>(tile_t);
  for (int64_t n = 0; n < g.N; ++n)
    for (int64_t p0 = 0; p0 < g.P; p0 += rows) {
      const int64_t p1 = std::min(g.P, p0 + rows), m = (p1 - p0) * g.Q;
      Tensor mid;
      if (nhwc) {
        // tile [m][CM]; the kernel addresses row p at tile + (p - p0) * Q * CM
        const Strides ts{0, 1, g.Q * g.K, g.K};
        at::parallel_for(p0, p1, 1, [&](int64_t b, int64_t e) {
          std::vector<int64_t> taps(4 * g.R * g.S);
          ks.dw_nhwc_fwd(g, xp, xs, wp, bp, mid_relu, tile - p0 * ts.h, ts, n, b, e, taps.data());
        });
        mid = tile_t.narrow(0, 0, m * g.K).as_strided({g.K, m}, {1, g.K});
      } else {
        const Strides ts{0, mp, g.Q, 1};
        at::parallel_for(0, g.C, 1, [&](int64_t b, int64_t e) {
          Scratch sm;
          const bool flat = use_dw_flat(g, ks.vec);
          T* scratch = sm.get<T>(flat ? ks.dw_flat_scratch(g, p1 - p0) : ks.fwd_scratch(g, p1 - p0));
          for (int64_t c = b; c < e; ++c)
            (flat ? ks.dw_flat_fwd : ks.fwd)(g, xp, xs, wp, bp, mid_relu, tile - p0 * ts.h, ts, n,
                                             c, 0, g.Kg, p0, p1, scratch);
        });
        mid = tile_t.as_strided({g.K, m}, {mp, 1});
      }
      const int64_t off = n * y.stride(0) + p0 * y.stride(2);
      T* d = ptr<T>(y) + off;
      const T* b = ptr<T>(pwb);
      const Act act(out_relu);
      if (nhwc && y.stride(1) == 1 && use_pixels_bcast(PwLayout::pixels)) {
        // y rows [m][K] = act(tile [m][CM] @ pw^T + b)
        const T* pwtp = ptr<T>(pwt);
        pixels_bcast<T>(1, m, g.K, K, g.K, y.stride(3), act, [&](int64_t) {
          return std::make_tuple(static_cast<const T*>(tile), pwtp, b, d);
        });
      } else if (y.stride(1) == 1) {
        // y rows [m][K] (channels-last): dst^T = mid^T @ pw^T, so the GEMM writes y in place
        // (a [K, m] destination with strides (1, K) would go through a temporary and a copy)
        Tensor dst_t = y.as_strided({m, K}, {y.stride(3), y.stride(1)}, y.storage_offset() + off);
        at::mm_out(dst_t, mid.t(), pw.t());
        if (b || act)
          at::parallel_for(0, m, 64, [&](int64_t r0, int64_t r1) {
            ks.bias_act(d, y.stride(3), r0, r1, K, b, false, act);
          });
      } else if (use_gemm_bcast(PwLayout::planar)) {
        // y [K][m] = act(pw [K][CM] @ tile [CM][m] + b), the pixels split over the threads
        const int64_t units = ranges_per_matrix(m, 1, 4 * ks.vec);
        const T* pwp = ptr<T>(pwc);
        at::parallel_for(0, units, 1, [&](int64_t u0, int64_t u1) {
          ks.gemm_bcast(pwp, g.K, 1, tile, mp, g.K, b, true, act, d, y.stride(1), 0, K,
                        range_start(m, units, u0, ks.vec), range_start(m, units, u1, ks.vec),
                        false);
        });
      } else {
        Tensor dst = y.as_strided({K, m}, {y.stride(1), y.stride(3)}, y.storage_offset() + off);
        at::mm_out(dst, pw, mid);
        if (b || act)
          at::parallel_for(0, K, 8, [&](int64_t k0, int64_t k1) {
            ks.bias_act(d, y.stride(1), k0, k1, m, b, true, act);
          });
      }
    }
}

Tensor separable_conv2d(const Tensor& input, const Tensor& dw_weight,
                        const std::optional<Tensor>& dw_bias, const Tensor& pw_weight,
                        const std::optional<Tensor>& pw_bias, IntArrayRef stride,
                        IntArrayRef padding, IntArrayRef dilation, bool mid_relu, bool out_relu) {
  const char* op = "dilconv::separable_conv2d";
  const SepArgs a =
      sep_check(op, input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, dilation);
  const Geo& g = a.dw;
  const auto ct = compute_type(input.scalar_type());
  Tensor y = empty_fmt({g.N, a.K, g.P, g.Q}, input.options().dtype(ct), out_format(input));
  if (y.numel() == 0) return finish(y, input.scalar_type());
  with_type(ct, [&](auto t) {
    using T = decltype(t);
    const Tensor x = to_compute(input, ct);
    if (!use_nhwc(g, x, y) && !use_direct(g)) {
      // a window mostly of padding (use_direct): the two convs apart, the depthwise per tap
      const Tensor mid = sep_mid<T>(g, x, to_compute(dw_weight, ct).contiguous(),
                                    dw_bias ? to_compute(*dw_bias, ct).contiguous() : Tensor(),
                                    mid_relu, out_format(input));
      fwd_any<T>(pointwise_geo(g, a.K), mid, to_compute(pw_weight, ct).contiguous(),
                 pw_bias ? to_compute(*pw_bias, ct).contiguous() : Tensor(), out_relu, y);
      return;
    }
    sep_fwd_fused<T>(g, a.K, x, to_compute(dw_weight, ct).contiguous(),
                     dw_bias ? to_compute(*dw_bias, ct).contiguous() : Tensor(), mid_relu,
                     to_compute(pw_weight, ct).reshape({a.K, g.K}),
                     pw_bias ? to_compute(*pw_bias, ct).contiguous() : Tensor(), out_relu, y);
  });
  return finish(y, input.scalar_type());
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> separable_conv2d_backward(
    const Tensor& grad_output, const Tensor& input, const Tensor& dw_weight,
    const std::optional<Tensor>& dw_bias, const Tensor& pw_weight,
    const std::optional<Tensor>& pw_bias, IntArrayRef stride, IntArrayRef padding,
    IntArrayRef dilation, bool mid_relu, bool out_relu) {
  const char* op = "dilconv::separable_conv2d_backward";
  const SepArgs a =
      sep_check(op, input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, dilation);
  const Geo& g = a.dw;
  check_dim(op, grad_output, "grad_output", 4);
  check_float(op, grad_output, "grad_output", input);
  TORCH_CHECK(grad_output.size(0) == g.N && grad_output.size(1) == a.K &&
                  grad_output.size(2) == g.P && grad_output.size(3) == g.Q,
              op, ": grad_output ", grad_output.sizes(), " does not match the output [", g.N, ", ",
              a.K, ", ", g.P, ", ", g.Q, "]");
  const auto dtype = input.scalar_type();
  const auto ct = compute_type(dtype);
  const auto opts = input.options().dtype(ct);
  Tensor gx = empty_fmt(input.sizes(), opts, out_format(grad_output));
  Tensor gdw = at::zeros(dw_weight.sizes(), opts), gdb = at::zeros({g.K}, opts);
  Tensor gpw = at::zeros(pw_weight.sizes(), opts), gpb = at::zeros({a.K}, opts);
  if (g.N * g.P * g.Q == 0) {
    gx.zero_();
  } else {
    with_type(ct, [&](auto t) {
      using T = decltype(t);
      const Tensor x = to_compute(input, ct);
      const Tensor dw = to_compute(dw_weight, ct).contiguous();
      // mid and its gradient in the layout of grad_output, so that channels-last training
      // runs the channel-vectorised depthwise kernels and either layout the pointwise paths
      const Tensor mid =
          sep_mid<T>(g, x, dw, dw_bias ? to_compute(*dw_bias, ct).contiguous() : Tensor(),
                     mid_relu, out_format(grad_output));
      // the pointwise half's forward (when out_relu needs the output's sign) and both gradients
      const Geo pg = pointwise_geo(g, a.K);
      const Tensor pw = to_compute(pw_weight, ct).contiguous();  // [K, CM, 1, 1]
      Tensor gy = to_compute(grad_output, ct).contiguous(out_format(grad_output));
      if (out_relu) {
        Tensor out = empty_fmt({g.N, a.K, g.P, g.Q}, opts, out_format(grad_output));
        fwd_any<T>(pg, mid, pw, pw_bias ? to_compute(*pw_bias, ct).contiguous() : Tensor(),
                   false, out);
        gy = gy * out.gt(0);
      }
      gpb.copy_(gy.sum({0, 2, 3}));
      wgrad_any<T>(pg, gy, mid, gpw);
      Tensor gm4 = empty_fmt({g.N, g.K, g.P, g.Q}, opts, out_format(grad_output));
      dgrad_any<T>(pg, gy, pw, gm4);
      if (mid_relu) gm4.mul_(mid.gt(0));
      // the depthwise backward: one pass over gm4 where the fused kernels apply
      if (use_dw_bwd_nhwc_fused(g, gm4, x, gx)) {
        dw_bwd_nhwc_fused<T>(g, gm4, x, dw, gx, gdw, gdb);
      } else if (use_dw_bwd_fused(g, gm4, x, kern<T>().vec)) {
        dw_bwd_fused<T>(g, gm4, x, dw, gx, gdw, gdb);
      } else {
        gdb.copy_(gm4.sum({0, 2, 3}));
        wgrad_any<T>(g, gm4, x, gdw);
        dgrad_any<T>(g, gm4, dw, gx);
      }
    });
  }
  return {finish(gx, dtype), finish(gdw, dtype), finish(gdb, dtype), finish(gpw, dtype),
          finish(gpb, dtype)};
}

}  // namespace
}  // namespace dilconv::cpu

TORCH_LIBRARY_IMPL(dilconv, CPU, m) {
  m.impl("conv2d", &dilconv::cpu::conv2d);
  m.impl("conv2d_clamp", &dilconv::cpu::conv2d_clamp);
  m.impl("conv2d_input_grad", &dilconv::cpu::conv2d_input_grad);
  m.impl("conv2d_weight_grad", &dilconv::cpu::conv2d_weight_grad);
  m.impl("conv2d_backward", &dilconv::cpu::conv2d_backward);
  m.impl("conv_transpose2d", &dilconv::cpu::conv_transpose2d);
  m.impl("separable_conv2d", &dilconv::cpu::separable_conv2d);
  m.impl("separable_conv2d_backward", &dilconv::cpu::separable_conv2d_backward);
}
