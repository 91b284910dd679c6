// The depthwise kernels of csrc/cpu (torch-free, every instruction-set variant: set
// DILCONV_CPU_ISA=avx2|base) under AddressSanitizer + UBSan, with every buffer, the scratch
// included, allocated at exactly the size the kernel asks for, against a naive float64
// reference: dw_flat_bwd (the fused stride-1 backward, worked in chunks of rows) with each
// subset of gradients, the planar weight gradient (stride 1 and 2), and the channels-last
// forward and weight gradient (dw_nhwc_fwd, dw_nhwc_wgrad: column runs by taps, more than 9
// taps, pixels that read only padding, overlapping last vectors, the streaming path; the bias
// gradient folded into the weight gradient's pass, and alone); and the
// small GEMM of the 1x1 convolutions (gemm_bcast: row and column remainders, column sub-ranges,
// both bias kinds, with inputs and output ending exactly where the last row's range ends).
// Prints "bad N" (N results outside the tolerance); exits non-zero on any.
// --broken: gx one element short, which the sanitizer must catch (proves the harness can fail).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <utility>
#include <vector>

#include "cpu/kernels.h"

using namespace dilconv::cpu;

namespace {

std::mt19937 rng(1);

template <class T>
std::vector<T> randn(size_t n) {
  std::normal_distribution<double> d;
  std::vector<T> v(n);
  for (auto& e : v) e = T(d(rng));
  return v;
}

// heap buffers of exactly n elements (a std::vector may hold spare capacity)
template <class T>
std::unique_ptr<T[]> exact(int64_t n) {
  return std::unique_ptr<T[]>(new T[n]);
}

// -1 where got matches ref within T's tolerance (relative to ref's largest magnitude, at least
// 1), else the largest absolute error (NaN counts as outside)
template <class T>
double max_error(const T* got, const std::vector<double>& ref) {
  double m = 0, e = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    m = std::fmax(m, std::fabs(ref[i]));
    const double d = std::fabs(got[i] - ref[i]);
    e = d == d ? std::fmax(e, d) : d;
    if (e != e) break;
  }
  const double tol = sizeof(T) == 4 ? 1e-5 : 1e-12;
  return e <= tol * (m + 1) ? -1 : e;
}

struct Case {
  int N, C, H, W, R, S, stride, dh, dw;
};

template <class T>
int run(const Kernels<T>& K, const Case& k, bool broken) {
  Geo g{};
  g.N = k.N, g.C = k.C, g.H = k.H, g.W = k.W, g.K = k.C, g.R = k.R, g.S = k.S;
  g.sh = g.sw = k.stride, g.dh = k.dh, g.dw = k.dw;
  g.ph = k.dh * (k.R - 1) / 2, g.pw = k.dw * (k.S - 1) / 2;  // "same" at stride 1
  g.P = (k.H + 2 * g.ph - k.dh * (k.R - 1) - 1) / k.stride + 1;
  g.Q = (k.W + 2 * g.pw - k.dw * (k.S - 1) - 1) / k.stride + 1;
  g.G = k.C, g.Cg = 1, g.Kg = 1;
  const int64_t RS = k.R * k.S, xn = int64_t(k.N) * k.C * k.H * k.W;
  const auto x = randn<T>(xn), gy = randn<T>(size_t(k.N) * k.C * g.P * g.Q), w = randn<T>(k.C * RS);
  const Strides xs{k.C * k.H * k.W, k.H * k.W, k.W, 1}, gys{k.C * g.P * g.Q, g.P * g.Q, g.Q, 1};
  std::vector<double> gxr(xn, 0), gwr(w.size(), 0), gbr(k.C, 0);
  for (int n = 0; n < k.N; ++n)
    for (int c = 0; c < k.C; ++c)
      for (int p = 0; p < g.P; ++p)
        for (int q = 0; q < g.Q; ++q) {
          const double v = gy[((size_t(n) * k.C + c) * g.P + p) * g.Q + q];
          gbr[c] += v;
          for (int r = 0; r < k.R; ++r)
            for (int s = 0; s < k.S; ++s) {
              const int64_t ih = p * g.sh + r * g.dh - g.ph, iw = q * g.sw + s * g.dw - g.pw;
              if (ih < 0 || ih >= k.H || iw < 0 || iw >= k.W) continue;
              const size_t xi = ((size_t(n) * k.C + c) * k.H + ih) * k.W + iw;
              gwr[c * RS + r * k.S + s] += v * x[xi];
              gxr[xi] += v * w[c * RS + r * k.S + s];
            }
        }
  int bad = 0;
  auto check = [&](const char* what, const T* got, const std::vector<double>& ref) {
    const double e = max_error(got, ref);
    if (e < 0) return;
    std::printf("BAD %s N%d C%d %dx%d %dx%d stride %d dilation %d: max error %g\n", what, k.N,
                k.C, k.H, k.W, k.R, k.S, k.stride, k.dh, e);
    ++bad;
  };
  if (dw_flat_bwd_ok(g)) {
    std::vector<T> wf(w.size());  // flipped taps
    for (int c = 0; c < k.C; ++c)
      for (int t = 0; t < RS; ++t) wf[c * RS + t] = w[c * RS + RS - 1 - t];
    auto gx = exact<T>(broken ? xn - 1 : xn);
    auto gw = exact<T>(w.size()), gb = exact<T>(k.C);
    auto scratch = exact<T>(K.dw_flat_bwd_scratch(g));
    K.dw_flat_bwd(g, gy.data(), gys, x.data(), xs, wf.data(), gx.get(), xs, gw.get(), gb.get(), 0,
                  k.C, scratch.get());
    check("gx", gx.get(), gxr), check("gw", gw.get(), gwr), check("gb", gb.get(), gbr);
    K.dw_flat_bwd(g, gy.data(), gys, x.data(), xs, wf.data(), gx.get(), xs, nullptr, gb.get(), 0,
                  k.C, scratch.get());
    check("gx (gx, gb)", gx.get(), gxr), check("gb (gx, gb)", gb.get(), gbr);
    K.dw_flat_bwd(g, gy.data(), gys, x.data(), xs, wf.data(), nullptr, xs, gw.get(), nullptr, 0,
                  k.C, scratch.get());
    check("gw (gw)", gw.get(), gwr);
    K.dw_flat_bwd(g, gy.data(), gys, x.data(), xs, wf.data(), nullptr, xs, nullptr, gb.get(), 0,
                  k.C, scratch.get());
    check("gb (gb)", gb.get(), gbr);
  }
  auto gw = exact<T>(w.size());
  for (int c = 0; c < k.C; ++c) {  // one channel a unit, as conv_cpu.cpp may split them
    auto scratch = exact<T>(K.wgrad_scratch(g, 1));
    K.wgrad(g, gy.data(), gys, x.data(), xs, gw.get(), c, 0, 1, scratch.get());
  }
  check("wgrad", gw.get(), gwr);
  return bad;
}

struct ClCase {
  int N, C, H, W, R, S, stride, dil, pad;
};

// channels-last: x [N][H][W][C], y [N][P][Q][C], weights as the kernels take them ([R * S][C])
template <class T>
int run_nhwc(const Kernels<T>& K, const ClCase& k) {
  Geo g{};
  g.N = k.N, g.C = k.C, g.H = k.H, g.W = k.W, g.K = k.C, g.R = k.R, g.S = k.S;
  g.sh = g.sw = k.stride, g.dh = g.dw = k.dil, g.ph = g.pw = k.pad;
  g.P = (k.H + 2 * k.pad - k.dil * (k.R - 1) - 1) / k.stride + 1;
  g.Q = (k.W + 2 * k.pad - k.dil * (k.S - 1) - 1) / k.stride + 1;
  g.G = k.C, g.Cg = 1, g.Kg = 1;
  const int64_t RS = k.R * k.S, xn = int64_t(k.N) * k.H * k.W * k.C;
  const int64_t yn = int64_t(k.N) * g.P * g.Q * k.C;
  const auto x = randn<T>(xn), gy = randn<T>(yn), wt = randn<T>(RS * k.C), bias = randn<T>(k.C);
  const Strides xs{int64_t(k.H) * k.W * k.C, 1, int64_t(k.W) * k.C, k.C};
  const Strides ys{g.P * g.Q * k.C, 1, g.Q * k.C, k.C};
  std::vector<double> yr(yn), gwr(RS * k.C, 0), gbr(k.C, 0);
  for (int n = 0; n < k.N; ++n)
    for (int p = 0; p < g.P; ++p)
      for (int q = 0; q < g.Q; ++q)
        for (int c = 0; c < k.C; ++c) {
          const size_t yi = ((size_t(n) * g.P + p) * g.Q + q) * k.C + c;
          gbr[c] += gy[yi];
          double a = bias[c];
          for (int r = 0; r < k.R; ++r)
            for (int s = 0; s < k.S; ++s) {
              const int64_t ih = p * g.sh + r * g.dh - g.ph, iw = q * g.sw + s * g.dw - g.pw;
              if (ih < 0 || ih >= k.H || iw < 0 || iw >= k.W) continue;
              const double xv = x[((size_t(n) * k.H + ih) * k.W + iw) * k.C + c];
              a += wt[(r * k.S + s) * k.C + c] * xv;
              gwr[(r * k.S + s) * k.C + c] += gy[yi] * xv;
            }
          yr[yi] = a;
        }
  int bad = 0;
  auto check = [&](const char* what, const T* got, const std::vector<double>& ref) {
    const double e = max_error(got, ref);
    if (e < 0) return;
    std::printf("BAD %s N%d C%d %dx%d %dx%d stride %d dilation %d padding %d: max error %g\n",
                what, k.N, k.C, k.H, k.W, k.R, k.S, k.stride, k.dil, k.pad, e);
    ++bad;
  };
  // the inputs too in buffers of exactly their size (a vector's spare capacity would hide a read
  // past the end)
  auto copy = [](const std::vector<T>& v) {
    auto b = exact<T>(int64_t(v.size()));
    std::copy(v.begin(), v.end(), b.get());
    return b;
  };
  const auto xb = copy(x), gyb = copy(gy), wtb = copy(wt), bb = copy(bias);
  auto y = exact<T>(yn);
  auto taps = exact<int64_t>(4 * RS);
  for (int n = 0; n < k.N; ++n)  // two row ranges an image, as conv_cpu.cpp may split them
    for (const auto& [p0, p1] : {std::pair<int64_t, int64_t>{0, g.P / 2}, {g.P / 2, g.P}})
      K.dw_nhwc_fwd(g, xb.get(), xs, wtb.get(), bb.get(), false, y.get(), ys, n, p0, p1,
                    taps.get());
  check("nhwc forward", y.get(), yr);
  // the weight gradient alone, with the bias gradient, and the bias gradient alone (part null)
  auto part = exact<T>(RS * k.C);
  auto gb = exact<T>(k.C);
  const int64_t rows = int64_t(k.N) * g.P;
  std::fill(part.get(), part.get() + RS * k.C, T(0));
  K.dw_nhwc_wgrad(g, gyb.get(), ys, xb.get(), xs, part.get(), nullptr, 0, rows);
  check("nhwc weight gradient", part.get(), gwr);
  std::fill(part.get(), part.get() + RS * k.C, T(0));
  std::fill(gb.get(), gb.get() + k.C, T(0));
  K.dw_nhwc_wgrad(g, gyb.get(), ys, xb.get(), xs, part.get(), gb.get(), 0, rows / 2);
  K.dw_nhwc_wgrad(g, gyb.get(), ys, xb.get(), xs, part.get(), gb.get(), rows / 2, rows);
  check("nhwc weight gradient (with the bias's)", part.get(), gwr);
  check("nhwc bias gradient", gb.get(), gbr);
  std::fill(gb.get(), gb.get() + k.C, T(0));
  K.dw_nhwc_wgrad(g, gyb.get(), ys, xb.get(), xs, nullptr, gb.get(), 0, rows);
  check("nhwc bias gradient alone", gb.get(), gbr);
  return bad;
}

// gemm_bcast on rows [i0, i1), columns [j0, j1) of D = act(bias + A B), A [i1][kd] (row pitch
// as = kd + 1) or, a_cols, stored by columns [kd][i1] (as = 1, column pitch acs = i1 + 1: the
// channels-last weight gradient), B rows bs apart, D rows ds apart; B and D end where their last
// row's range ends (a vector load or store past j1 is out of bounds); D outside the range must
// stay untouched; accumulate: the sums start from D's values (a column tail recomputed over
// finished columns must not add twice)
template <class T>
int run_gemm(const Kernels<T>& K, int64_t i0, int64_t i1, int64_t kd, int64_t j0, int64_t j1,
             int64_t bs, int64_t ds, bool per_row, bool act, bool a_cols, bool accumulate) {
  const int64_t as = a_cols ? 1 : kd + 1, acs = a_cols ? i1 + 1 : 1;
  const int64_t an = a_cols ? (kd - 1) * acs + i1 : i1 * as;
  const int64_t bn = (kd - 1) * bs + j1, dn = (i1 - 1) * ds + j1;
  const auto a = randn<T>(an), b = randn<T>(bn), bias = randn<T>(per_row ? i1 : j1);
  auto ab = exact<T>(an), bb = exact<T>(bn), biasb = exact<T>(int64_t(bias.size()));
  auto d = exact<T>(dn);
  std::copy(a.begin(), a.end(), ab.get());
  std::copy(b.begin(), b.end(), bb.get());
  std::copy(bias.begin(), bias.end(), biasb.get());
  std::fill(d.get(), d.get() + dn, T(-7));
  auto start = [&](int64_t i, int64_t j) { return T(0.25 * double((i * 3 + j) % 7) - 0.5); };
  for (int64_t i = i0; i < i1 && accumulate; ++i)
    for (int64_t j = j0; j < j1; ++j) d[i * ds + j] = start(i, j);
  const Act clamp = act ? Act(-0.5, 1.0) : Act();
  K.gemm_bcast(ab.get(), as, acs, bb.get(), bs, kd, biasb.get(), per_row, clamp, d.get(), ds, i0,
               i1, j0, j1, accumulate);
  std::vector<double> ref(dn, -7.0);
  for (int64_t i = i0; i < i1; ++i)
    for (int64_t j = j0; j < j1; ++j) {
      double s = accumulate ? double(start(i, j)) : per_row ? bias[i] : bias[j];
      for (int64_t c = 0; c < kd; ++c) s += double(a[i * as + c * acs]) * b[c * bs + j];
      ref[i * ds + j] = act ? std::fmin(std::fmax(s, -0.5), 1.0) : s;
    }
  const double e = max_error(d.get(), ref);
  if (e < 0) return 0;
  std::printf("BAD gemm_bcast rows [%ld, %ld) kd %ld columns [%ld, %ld): max error %g\n",
              long(i0), long(i1), long(kd), long(j0), long(j1), e);
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  const bool broken = argc > 1 && !std::strcmp(argv[1], "--broken");
  // N, C, H, W, R, S, stride, dilation (rows, columns): planes in one chunk and in several
  // (whole bands, the last with a one-row tail), rows narrower than a block's overrun, 1 x N,
  // N x 1, 5x5 (whole planes), large dilation, stride 2 (weight gradient only)
  const Case cases[] = {
      {2, 3, 129, 129, 3, 3, 1, 1, 1}, {1, 2, 65, 65, 3, 3, 1, 2, 2},
      {2, 2, 47, 61, 3, 3, 1, 2, 2},   {1, 2, 300, 5, 3, 3, 1, 1, 1},
      {1, 2, 9, 300, 3, 3, 1, 1, 1},   {1, 2, 33, 33, 3, 3, 1, 2, 2},
      {1, 2, 40, 17, 3, 3, 1, 3, 3},   {2, 2, 20, 20, 5, 5, 1, 1, 1},
      {1, 2, 30, 1, 3, 3, 1, 1, 1},    {1, 2, 1, 30, 3, 3, 1, 1, 1},
      {1, 2, 12, 7, 1, 3, 1, 1, 2},    {1, 2, 70, 90, 3, 3, 1, 18, 18},
      {2, 3, 129, 129, 3, 3, 2, 1, 1}, {1, 2, 65, 64, 3, 3, 2, 1, 1},
      {1, 2, 8, 8, 3, 3, 2, 1, 1},
  };
  int bad = 0;
  for (const Case& c : cases) {
    bad += run<float>(kernels_f32(), c, broken);
    bad += run<double>(kernels_f64(), c, broken);
    if (broken) break;
  }
  // channels-last: N, C, H, W, R, S, stride, dilation, padding: narrower than a vector, an
  // overlapping last vector, wide pixels (300 floats), 7x7 (more than 9 taps), 1x3, padding
  // beyond the kernel's reach (pixels that read only padding), stride 2, and x + y over 20 MiB
  // (the prefetching path; float only), 3x11 (rows of more than 9 taps: the weight gradient 9
  // taps of a row at a time)
  const ClCase cl_cases[] = {
      {2, 5, 9, 11, 3, 3, 1, 2, 2},   {2, 40, 9, 11, 3, 3, 1, 2, 2},  {1, 300, 13, 12, 3, 3, 1, 2, 2},
      {1, 24, 11, 10, 7, 7, 1, 1, 3}, {1, 40, 6, 17, 1, 3, 1, 1, 1},  {1, 40, 4, 5, 3, 3, 1, 1, 3},
      {2, 40, 10, 13, 3, 3, 2, 1, 1}, {1, 40, 264, 260, 3, 3, 1, 2, 2}, {1, 40, 7, 16, 3, 11, 1, 1, 5},
  };
  for (const ClCase& c : cl_cases) {
    if (!broken) bad += run_nhwc<float>(kernels_f32(), c);
    if (!broken && c.H * c.W * c.C < (1 << 20)) bad += run_nhwc<double>(kernels_f64(), c);
  }
  // gemm_bcast: i0, i1, kd, j0, j1, row pitches of B and D: remainders of 1-5 rows, columns
  // leaving whole tiles, 1-3 vectors and a scalar tail, fewer columns than a vector, a sum
  // long enough for several column panels, a range starting inside a row
  const int64_t gemm_cases[][7] = {
      {0, 7, 5, 0, 93, 93, 97},     {0, 6, 1, 0, 64, 64, 64},    {2, 11, 24, 3, 150, 160, 151},
      {0, 3, 3, 0, 5, 5, 5},        {0, 25, 300, 0, 200, 210, 200}, {1, 4, 17, 40, 41, 41, 50},
      {0, 9, 8, 0, 112, 112, 115},  {0, 8, 9, 10, 111, 120, 120},
  };
  if (!broken)
    for (const auto& c : gemm_cases)
      for (int variant = 0; variant < 16; ++variant) {
        bad += run_gemm<float>(kernels_f32(), c[0], c[1], c[2], c[3], c[4], c[5], c[6],
                               variant & 1, variant & 2, variant & 4, variant & 8);
        bad += run_gemm<double>(kernels_f64(), c[0], c[1], c[2], c[3], c[4], c[5], c[6],
                                variant & 1, variant & 2, variant & 4, variant & 8);
      }
  std::printf("isa %s: bad %d\n", kernels_f32().isa, bad);
  return bad != 0;
}
