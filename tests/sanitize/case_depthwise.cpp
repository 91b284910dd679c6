// The depthwise family (csrc/kernels/depthwise.cuh, separable.cuh) in the sanitizer matrix: every
// kernel variant the selection code picks (tiled fprop/dgrad/wgrad in both layouts, the direct
// fallbacks, the fused separable forward with each register blocking, the backward's pointwise
// GEMM, outer and channel sums), on tiny problems against naive double references.
#include <functional>

#include "sanitize/harness.h"
#include "kernels/depthwise_api.h"

namespace {

namespace dwn = dc_emu::dw;
using dwn::DType;
using dwn::DwShape;

DwShape shape(int n, int c, int h, int w, int m, int r, int s, int st, int pd, int dl, bool cl) {
  DwShape sh{};
  sh.n = n; sh.c = c; sh.h = h; sh.w = w; sh.m = m; sh.r = r; sh.s = s;
  sh.sh = st; sh.sw = st; sh.ph = pd; sh.pw = pd; sh.dh = dl; sh.dw = dl;
  sh.p = (h + 2 * pd - dl * (r - 1) - 1) / st + 1;
  sh.q = (w + 2 * pd - dl * (s - 1) - 1) / st + 1;
  sh.channels_last = cl;
  return sh;
}

// offset of (n, c, y, x) in [N, C, H, W] stored NCHW or NHWC
size_t at(const DwShape& s, bool out, int n, int c, int y, int x) {
  const int C = out ? s.c * s.m : s.c, H = out ? s.p : s.h, W = out ? s.q : s.w;
  return s.channels_last ? ((size_t(n) * H + y) * W + x) * C + c : ((size_t(n) * C + c) * H + y) * W + x;
}

// Calls f(n, k, oy, ox, c, tap, iy, ix) for every in-bounds (output, tap) pair.
void each_tap(const DwShape& s, const std::function<void(int, int, int, int, int, int, int, int)>& f) {
  for (int n = 0; n < s.n; ++n)
    for (int k = 0; k < s.c * s.m; ++k)
      for (int oy = 0; oy < s.p; ++oy)
        for (int ox = 0; ox < s.q; ++ox)
          for (int kr = 0; kr < s.r; ++kr)
            for (int ks = 0; ks < s.s; ++ks) {
              const int iy = oy * s.sh - s.ph + kr * s.dh, ix = ox * s.sw - s.pw + ks * s.dw;
              if (iy >= 0 && iy < s.h && ix >= 0 && ix < s.w) f(n, k, oy, ox, k / s.m, kr * s.s + ks, iy, ix);
            }
}

template <typename T>
void depthwise_case(const DwShape& s, DType dt, double tol) {
  const size_t nx = size_t(s.n) * s.c * s.h * s.w, ny = size_t(s.n) * s.c * s.m * s.p * s.q;
  const size_t nw = size_t(s.c) * s.m * s.r * s.s;
  auto x = dcs::random<T>(nx, 11), w = dcs::random<T>(nw, 12), b = dcs::random<T>(s.c * s.m, 13);
  auto gy = dcs::random<T>(ny, 14);
  auto d = [](T v) { return dcs::to_double(v); };
  std::vector<double> y_ref(ny, 0.0), gx_ref(nx, 0.0), gw_ref(nw, 0.0);
  for (int n = 0; n < s.n; ++n)
    for (int k = 0; k < s.c * s.m; ++k)
      for (int oy = 0; oy < s.p; ++oy)
        for (int ox = 0; ox < s.q; ++ox) y_ref[at(s, true, n, k, oy, ox)] = d(b[k]);
  each_tap(s, [&](int n, int k, int oy, int ox, int c, int tap, int iy, int ix) {
    const size_t yo = at(s, true, n, k, oy, ox), xo = at(s, false, n, c, iy, ix);
    y_ref[yo] += d(x[xo]) * d(w[size_t(k) * s.r * s.s + tap]);
    gx_ref[xo] += d(gy[yo]) * d(w[size_t(k) * s.r * s.s + tap]);
    gw_ref[size_t(k) * s.r * s.s + tap] += d(gy[yo]) * d(x[xo]);
  });
  std::vector<T> y(ny), gx(nx), gw(nw);
  dwn::depthwise_fwd(s, dt, x.data(), w.data(), b.data(), y.data(), false, nullptr);
  dcs::expect_close(y, y_ref, tol, tol, "depthwise fwd");
  dwn::depthwise_dgrad(s, dt, gy.data(), w.data(), gx.data(), nullptr);
  dcs::expect_close(gx, gx_ref, tol, tol, "depthwise dgrad");
  std::vector<unsigned char> ws(dwn::depthwise_wgrad_workspace_bytes(s, dt));
  dwn::depthwise_wgrad(s, dt, gy.data(), x.data(), gw.data(), ws.data(), nullptr);
  dcs::expect_close(gw, gw_ref, tol, tol, "depthwise wgrad");
}

template <typename T>
void separable_case(const DwShape& s, int o, DType dt, double tol) {
  const int cm = s.c * s.m, pix = s.p * s.q;
  const size_t nx = size_t(s.n) * s.c * s.h * s.w, nmid = size_t(s.n) * cm * pix, ny = size_t(s.n) * o * pix;
  auto x = dcs::random<T>(nx, 21), dw = dcs::random<T>(size_t(cm) * s.r * s.s, 22);
  auto db = dcs::random<T>(cm, 23), pw = dcs::random<T>(size_t(o) * cm, 24), pb = dcs::random<T>(o, 25);
  auto d = [](T v) { return dcs::to_double(v); };
  std::vector<double> mid(nmid, 0.0);
  for (int n = 0; n < s.n; ++n)
    for (int k = 0; k < cm; ++k)
      for (int y = 0; y < s.p; ++y)
        for (int xx = 0; xx < s.q; ++xx) mid[at(s, true, n, k, y, xx)] = d(db[k]);
  each_tap(s, [&](int n, int k, int oy, int ox, int c, int tap, int iy, int ix) {
    mid[at(s, true, n, k, oy, ox)] += d(x[at(s, false, n, c, iy, ix)]) * d(dw[size_t(k) * s.r * s.s + tap]);
  });
  for (auto& v : mid) v = std::max(v, 0.0);  // mid ReLU
  auto mo = [&](int n, int i, int p) {  // offset of (n, channel i of o, pixel p)
    return s.channels_last ? (size_t(n) * pix + p) * o + i : (size_t(n) * o + i) * pix + p;
  };
  auto mm = [&](int n, int j, int p) {
    return s.channels_last ? (size_t(n) * pix + p) * cm + j : (size_t(n) * cm + j) * pix + p;
  };
  std::vector<double> out_ref(ny);
  for (int n = 0; n < s.n; ++n)
    for (int i = 0; i < o; ++i)
      for (int p = 0; p < pix; ++p) {
        double a = d(pb[i]);
        for (int j = 0; j < cm; ++j) a += d(pw[size_t(i) * cm + j]) * mid[mm(n, j, p)];
        out_ref[mo(n, i, p)] = std::max(a, 0.0);
      }
  std::vector<T> out(ny);
  if (!dwn::separable_fwd(s, o, dt, x.data(), dw.data(), db.data(), pw.data(), pb.data(), out.data(), true, true,
                          nullptr))
    throw std::runtime_error("separable_fwd refused a tiny problem");
  dcs::expect_close(out, out_ref, tol, tol, "separable fwd");

  // backward pieces on the reference intermediate: gmid = pw^T gy, gpw = gy mid^T, sums
  std::vector<T> midT(nmid);
  for (size_t i = 0; i < nmid; ++i) midT[i] = dc::from_float<T>(float(mid[i]));
  auto gy = dcs::random<T>(ny, 26);
  std::vector<T> gmid(nmid), gpw(size_t(o) * cm), gpb(o);
  const dwn::PwShape ps{s.n, pix, cm, o, 1, cm, s.channels_last};
  dwn::pointwise(ps, dt, gy.data(), pw.data(), nullptr, midT.data(), gmid.data(), dwn::PwEpilogue::mask_pos, nullptr);
  std::vector<double> gmid_ref(nmid, 0.0), gpw_ref(size_t(o) * cm, 0.0), gpb_ref(o, 0.0);
  for (int n = 0; n < s.n; ++n)
    for (int p = 0; p < pix; ++p)
      for (int i = 0; i < o; ++i) {
        const double g = d(gy[mo(n, i, p)]);
        gpb_ref[i] += g;
        for (int j = 0; j < cm; ++j) {
          gmid_ref[mm(n, j, p)] += d(pw[size_t(i) * cm + j]) * g;
          gpw_ref[size_t(i) * cm + j] += g * d(midT[mm(n, j, p)]);
        }
      }
  for (size_t i = 0; i < nmid; ++i)
    if (!(d(midT[i]) > 0)) gmid_ref[i] = 0.0;
  dcs::expect_close(gmid, gmid_ref, tol, tol, "pointwise (mask_pos)");
  std::vector<unsigned char> ws(dwn::outer_sum_workspace_bytes(s.n, pix, o, cm, dt));
  dwn::outer_sum(s.n, pix, o, cm, s.channels_last, dt, gy.data(), midT.data(), gpw.data(), ws.data(), nullptr);
  dcs::expect_close(gpw, gpw_ref, tol, tol, "outer_sum");
  std::vector<unsigned char> ws2(dwn::channel_sum_workspace_bytes(s.n, pix, o, dt));
  dwn::channel_sum(s.n, pix, o, s.channels_last, dt, gy.data(), gpb.data(), ws2.data(), nullptr);
  dcs::expect_close(gpb, gpb_ref, tol, tol, "channel_sum");
}

}  // namespace

DC_SANITIZE_CASE(depthwise_nchw_f32) { depthwise_case<float>(shape(2, 3, 7, 9, 2, 3, 3, 2, 2, 2, false), DType::f32, 1e-5); }
DC_SANITIZE_CASE(depthwise_nhwc_f32) { depthwise_case<float>(shape(1, 5, 6, 7, 1, 3, 3, 1, 3, 2, true), DType::f32, 1e-5); }
DC_SANITIZE_CASE(depthwise_nhwc_f16_1x7) {
  depthwise_case<dc::half>(shape(1, 16, 3, 9, 2, 1, 7, 1, 3, 1, true), DType::f16, 2e-2);
}
DC_SANITIZE_CASE(depthwise_direct_huge_dilation) {
  // a 3x3 tap window of 121x121 pixels: beyond shared memory even for a 1-pixel tile
  depthwise_case<float>(shape(1, 2, 5, 6, 1, 3, 3, 1, 60, 60, false), DType::f32, 1e-5);
  depthwise_case<float>(shape(1, 2, 5, 6, 2, 3, 3, 1, 60, 60, true), DType::f32, 1e-5);
}
DC_SANITIZE_CASE(separable_nchw_small_o) { separable_case<float>(shape(1, 3, 6, 7, 2, 3, 3, 1, 2, 2, false), 5, DType::f32, 1e-5); }
DC_SANITIZE_CASE(separable_nhwc_mid_o) { separable_case<float>(shape(1, 4, 5, 5, 1, 3, 3, 2, 1, 1, true), 20, DType::f32, 1e-5); }
DC_SANITIZE_CASE(separable_nhwc_lattice) {
  // stride 1, dilation 2, larger than one tile: tiles on the dilation lattice (rows); 50 outputs
  separable_case<float>(shape(1, 2, 20, 18, 1, 3, 3, 1, 2, 2, true), 50, DType::f32, 1e-5);
}
DC_SANITIZE_CASE(separable_nchw_wide_o) {
  separable_case<dc::bfloat16>(shape(1, 2, 4, 5, 1, 3, 3, 1, 1, 1, false), 40, DType::bf16, 3e-2);
}
