// Implicit-GEMM conv kernels (csrc/kernels/gemm_conv.cuh) in the sanitizer matrix: every tile
// config the selection can pick (SIMT 64x64 with and without 16-byte vectors, packed narrow
// groups, fp64, tensor cores when dc::wmma exists), NCHW and NHWC, fprop / dgrad (with bias, as
// conv_transpose2d) / wgrad with and without split-K, against naive float64 loops.
#include <array>

#include "sanitize/harness.h"  // first: selects the emulation (DC_TARGET_NS = dc_emu)
#include "kernels/gemm_api.h"

namespace {

using namespace dc_emu::igemm;

struct Geo {
  int n, c, h, w, k, r, s, st, pd, dl, g;
  int p() const { return (h + 2 * pd - dl * (r - 1) - 1) / st + 1; }
  int q() const { return (w + 2 * pd - dl * (s - 1) - 1) / st + 1; }
  ConvShape shape() const { return {n, c, h, w, k, p(), q(), r, s, st, st, pd, pd, dl, dl, g}; }
};

// element offset of (n, c, y, x) in an NCHW or NHWC tensor of the given sizes
struct Layout {
  int64_t sn, sc, sh, sw;
  Layout(int c, int h, int w, bool cl) {
    if (cl) sn = int64_t(h) * w * c, sc = 1, sh = int64_t(w) * c, sw = c;
    else sn = int64_t(c) * h * w, sc = int64_t(h) * w, sh = w, sw = 1;
  }
  int64_t at(int n, int c, int y, int x) const { return n * sn + c * sc + y * sh + x * sw; }
};

template <typename T>
DType dtype_of() {
  if constexpr (std::is_same_v<T, float>) return DType::f32;
  else if constexpr (std::is_same_v<T, double>) return DType::f64;
  else if constexpr (std::is_same_v<T, dc::half>) return DType::f16;
  else return DType::bf16;
}

// naive conv: calls f(n, k, p, q, c, y, x, r, s) for every in-range tap
template <typename F>
void each_tap(const Geo& g, F&& f) {
  const int cg = g.c / g.g, kg = g.k / g.g;
  for (int n = 0; n < g.n; ++n)
    for (int k = 0; k < g.k; ++k)
      for (int p = 0; p < g.p(); ++p)
        for (int q = 0; q < g.q(); ++q)
          for (int c = 0; c < cg; ++c)
            for (int r = 0; r < g.r; ++r)
              for (int s = 0; s < g.s; ++s) {
                const int y = p * g.st - g.pd + r * g.dl, x = q * g.st - g.pd + s * g.dl;
                if (y < 0 || y >= g.h || x < 0 || x >= g.w) continue;
                f(n, k, p, q, (k / kg) * cg + c, y, x, c, r, s);
              }
}

template <typename T>
void run_case(const Geo& g, bool cl, int config, double tol, uint64_t seed) {
  const int p = g.p(), q = g.q(), cg = g.c / g.g;
  const Layout lx(g.c, g.h, g.w, cl), ly(g.k, p, q, cl);
  auto x = dcs::random<T>(size_t(g.n) * g.c * g.h * g.w, seed);
  auto w = dcs::random<T>(size_t(g.k) * cg * g.r * g.s, seed + 1);  // [K][C/g][R][S]
  auto b = dcs::random<T>(size_t(g.k), seed + 2);
  auto dy = dcs::random<T>(size_t(g.n) * g.k * p * q, seed + 3);
  auto widx = [&](int k, int c, int r, int s) { return ((size_t(k) * cg + c) * g.r + r) * g.s + s; };
  const Wt wt{w.data(), int64_t(g.k / g.g) * cg * g.r * g.s, int64_t(cg) * g.r * g.s, g.r * g.s, g.s, 1};
  const ConvShape sh = g.shape();
  const DType dt = dtype_of<T>();

  // fprop (+ bias)
  std::vector<double> ref(size_t(g.n) * g.k * p * q, 0.0);
  for (int n = 0; n < g.n; ++n)
    for (int k = 0; k < g.k; ++k)
      for (int i = 0; i < p * q; ++i) ref[ly.at(n, k, i / q, i % q)] = dcs::to_double(b[k]);
  each_tap(g, [&](int n, int k, int pp, int qq, int ci, int y, int xx, int c, int r, int s) {
    ref[ly.at(n, k, pp, qq)] += dcs::to_double(x[lx.at(n, ci, y, xx)]) * dcs::to_double(w[widx(k, c, r, s)]);
  });
  std::vector<T> y(ref.size());
  conv_fprop(sh, dt, Act{x.data(), lx.sn, lx.sc, lx.sh, lx.sw}, wt, b.data(),
             Act{y.data(), ly.sn, ly.sc, ly.sh, ly.sw}, nullptr, config);
  dcs::expect_close(y, ref, tol, tol, "igemm fprop");

  // dgrad (+ bias on the computed tensor, as conv_transpose2d)
  std::vector<double> rdx(x.size(), 0.0);
  for (int n = 0; n < g.n; ++n)
    for (int c = 0; c < g.c; ++c)
      for (int i = 0; i < g.h * g.w; ++i) rdx[lx.at(n, c, i / g.w, i % g.w)] = dcs::to_double(b[c % g.k]);
  each_tap(g, [&](int n, int k, int pp, int qq, int ci, int yy, int xx, int c, int r, int s) {
    rdx[lx.at(n, ci, yy, xx)] += dcs::to_double(dy[ly.at(n, k, pp, qq)]) * dcs::to_double(w[widx(k, c, r, s)]);
  });
  std::vector<T> bc(g.c);
  for (int c = 0; c < g.c; ++c) bc[c] = b[c % g.k];
  std::vector<T> dx(x.size());
  conv_dgrad(sh, dt, Act{dy.data(), ly.sn, ly.sc, ly.sh, ly.sw}, wt, bc.data(),
             Act{dx.data(), lx.sn, lx.sc, lx.sh, lx.sw}, nullptr, config);
  dcs::expect_close(dx, rdx, tol, tol, "igemm dgrad");

  // wgrad (deterministic split-K when the problem is long enough)
  std::vector<double> rdw(w.size(), 0.0);
  each_tap(g, [&](int n, int k, int pp, int qq, int ci, int yy, int xx, int c, int r, int s) {
    rdw[widx(k, c, r, s)] += dcs::to_double(dy[ly.at(n, k, pp, qq)]) * dcs::to_double(x[lx.at(n, ci, yy, xx)]);
  });
  std::vector<unsigned char> ws(conv_wgrad_workspace_bytes(sh, dt));
  std::vector<T> dw(w.size());
  const int64_t dws[4] = {int64_t(cg) * g.r * g.s, g.r * g.s, g.s, 1};
  conv_wgrad(sh, dt, Act{dy.data(), ly.sn, ly.sc, ly.sh, ly.sw}, Act{x.data(), lx.sn, lx.sc, lx.sh, lx.sw},
             dw.data(), dws, ws.empty() ? nullptr : ws.data(), ws.size(), nullptr);
  dcs::expect_close(dw, rdw, tol, tol, "igemm wgrad");
}

}  // namespace

// 3x3 dilated, channels_last aligned: 16-byte vector cp.async path
DC_SANITIZE_CASE(igemm_f32_nhwc_vec) { run_case<float>({1, 8, 7, 7, 8, 3, 3, 1, 2, 2, 1}, true, kAuto, 1e-4, 11); }
// NCHW (pixel-fastest loaders), strided, 1x3 kernel, split-K wgrad (n*p*q = 2*9*9)
DC_SANITIZE_CASE(igemm_f32_nchw_splitk) {
  const Geo g{2, 4, 9, 9, 6, 1, 3, 1, 0, 1, 1};
  if (conv_wgrad_splits(g.shape(), DType::f32) < 2) throw std::runtime_error("expected split-K");
  run_case<float>(g, false, kAuto, 1e-4, 21);
}
// ResNeXt-style narrow groups packed in one tile (4 channels per group), stride 2
DC_SANITIZE_CASE(igemm_f32_narrow_groups) { run_case<float>({1, 16, 8, 8, 16, 3, 3, 2, 1, 1, 4}, true, kAuto, 1e-4, 31); }
// float64, grouped, NCHW
DC_SANITIZE_CASE(igemm_f64) { run_case<double>({1, 4, 6, 6, 6, 3, 3, 1, 1, 1, 2}, false, kAuto, 1e-10, 41); }
// fp16 / bf16: the heuristic's tensor-core config (SIMT where dc::wmma is absent)
DC_SANITIZE_CASE(igemm_f16_nhwc) { run_case<dc::half>({1, 16, 5, 5, 32, 3, 3, 1, 1, 1, 1}, true, kAuto, 3e-2, 51); }
DC_SANITIZE_CASE(igemm_bf16_nchw) { run_case<dc::bfloat16>({1, 16, 5, 5, 32, 3, 3, 1, 1, 1, 1}, false, kAuto, 6e-2, 61); }
// every other config of fp16 on one small problem
DC_SANITIZE_CASE(igemm_f16_all_configs) {
  int cfgs[8];
  const int n = conv_configs(DType::f16, cfgs, 8);
  for (int i = 0; i < n; ++i) run_case<dc::half>({1, 16, 4, 4, 32, 3, 3, 1, 1, 1, 2}, true, cfgs[i], 3e-2, 71 + i);
}
// strided dgrad by output phases: stride 3 / dilation 2 (taps every 3rd), stride 2 / dilation 2
// (phases with all taps and phases with none: bias only)
DC_SANITIZE_CASE(igemm_f32_dgrad_phases) {
  run_case<float>({1, 4, 11, 10, 6, 3, 3, 3, 2, 2, 1}, true, kAuto, 1e-4, 81);
  run_case<float>({2, 4, 9, 9, 4, 3, 3, 2, 1, 2, 2}, false, kAuto, 1e-4, 91);
}
