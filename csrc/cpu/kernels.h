// dilconv CPU kernels: the raw, torch-free part (compiled once per instruction set in
// kernels.cpp and picked at run time, so the wheel runs on any x86-64 and uses AVX-512 where
// present). The torch-facing part (argument checks, layouts, dtypes, threading, GEMMs) is
// conv_cpu.cpp; it calls these per "unit" of work from at::parallel_for.
#pragma once
#include <cstdint>

namespace dilconv::cpu {

struct Strides {
  int64_t n, c, h, w;
};

// One convolution in conv2d (fprop) terms: input [N, C, H, W], weight [K, Cg, R, S],
// output [N, K, P, Q], G groups of Cg input and Kg output channels.
struct Geo {
  int64_t N, C, H, W, K, P, Q, R, S;
  int64_t sh, sw, ph, pw, dh, dw;
  int64_t G, Cg, Kg;
};

// The padded input window a unit reads is packed row by row, each row split by column phase
// (column mod sw) so that every tap of a strided convolution reads contiguous memory:
// padded element (i, j) lives at i * sw * Wph + (j % sw) * Wph + j / sw, zero outside the input.
// Wph includes one vector of slack so vector loads past the last output column stay in bounds.
inline int64_t packed_width(const Geo& g, int64_t vec) {
  const int64_t wp = (g.Q - 1) * g.sw + (g.S - 1) * g.dw + 1;
  return (wp + g.sw - 1) / g.sw + vec;
}
inline int64_t packed_rows(const Geo& g, int64_t rows) {
  return (rows - 1) * g.sh + (g.R - 1) * g.dh + 1;
}

inline bool dw_flat_ok(const Geo& g) {
  return g.Cg == 1 && g.sh == 1 && g.sw == 1 && g.R * g.S <= 9;
}

inline bool dw_flat_bwd_ok(const Geo& g) {
  return dw_flat_ok(g) && g.Kg == 1 && g.P == g.H && g.Q == g.W && g.ph >= 0 && g.pw >= 0;
}

// depthwise input gradient by gathering (dw_s2_dgrad): stride 2, dilation 1, multiplier 1, taps
// <= 3x3 (at most 2 x 2 of them per output phase)
inline bool dw_s2_dgrad_ok(const Geo& g) {
  return g.Cg == 1 && g.Kg == 1 && g.sh == 2 && g.sw == 2 && g.dh == 1 && g.dw == 1 &&
         g.R <= 3 && g.S <= 3 && g.ph >= 0 && g.pw >= 0;
}

// grouped channels-last kernels: as many inputs as outputs a group, a group size that divides
// the vector (vec elements) and at least one vector of channels
inline bool g_nhwc_ok(const Geo& g, int64_t vec) {
  const int64_t c = g.Cg;
  return c == g.Kg && (c == 2 || c == 4 || c == 8 || c == 16) && vec % c == 0 && g.C >= vec;
}

// The activation applied to a forward output after the bias: clamp to [lo, hi] (ReLU: [0, inf),
// ReLU6: [0, 6]) or nothing. NaN stays NaN, as in torch's clamp/hardtanh. Constructible from a
// bool (ReLU or nothing).
struct Act {
  bool on = false;
  double lo = 0.0, hi = __builtin_inf();
  Act(bool relu = false) : on(relu) {}  // NOLINT: implicit on purpose
  Act(double lo_, double hi_) : on(true), lo(lo_), hi(hi_) {}
  explicit operator bool() const { return on; }
};

template <class T>
struct Kernels {
  int64_t vec;  // elements per vector register
  // Forward, one unit: batch n, group grp, output channels [k0, k1) of the group, output rows
  // [p0, p1). w is [K, Cg, R, S] contiguous; bias nullable; the activation applied after the bias.
  void (*fwd)(const Geo&, const T* x, Strides xs, const T* w, const T* bias, Act act, T* y,
              Strides ys, int64_t n, int64_t grp, int64_t k0, int64_t k1, int64_t p0, int64_t p1,
              T* scratch);
  int64_t (*fwd_scratch)(const Geo&, int64_t rows);
  // The same for depthwise (Cg == 1), stride 1, R * S <= 9 (dw_flat_ok): the stencil over the
  // flattened padded window with the weights in registers.
  void (*dw_flat_fwd)(const Geo&, const T* x, Strides xs, const T* w, const T* bias, Act act,
                      T* y, Strides ys, int64_t n, int64_t grp, int64_t k0, int64_t k1, int64_t p0,
                      int64_t p1, T* scratch);
  int64_t (*dw_flat_scratch)(const Geo&, int64_t rows);
  // its weight gradient (same contract as wgrad)
  void (*dw_flat_wgrad)(const Geo&, const T* gy, Strides gys, const T* x, Strides xs, T* gw,
                        int64_t grp, int64_t k0, int64_t k1, T* scratch);
  int64_t (*dw_flat_wgrad_scratch)(const Geo&, int64_t channels);
  // the whole backward of such a depthwise conv with multiplier 1 and P == H, Q == W
  // (dw_flat_bwd_ok): input, weight and bias gradients of channels [c0, c1) from one packing of
  // gy per channel; wf the flipped weights; gx, gw, gb nullable (not wanted)
  void (*dw_flat_bwd)(const Geo&, const T* gy, Strides gys, const T* x, Strides xs, const T* wf,
                      T* gx, Strides gxs, T* gw, T* gb, int64_t c0, int64_t c1, T* scratch);
  int64_t (*dw_flat_bwd_scratch)(const Geo&);
  // Input gradient by scattering gy rows into a packed window (any stride): batch n, group grp,
  // input channels [c0, c1) of the group; writes those channels of gx completely.
  void (*dgrad_scatter)(const Geo&, const T* gy, Strides gys, const T* w, T* gx, Strides gxs,
                        int64_t n, int64_t grp, int64_t c0, int64_t c1, T* scratch);
  int64_t (*dgrad_scatter_scratch)(const Geo&, int64_t channels);
  // Depthwise input gradient by gathering (dw_s2_dgrad_ok: stride 2, dilation 1, multiplier 1,
  // taps <= 3x3; gx rows contiguous): channel c of batch n of gx written completely.
  void (*dw_s2_dgrad)(const Geo&, const T* gy, Strides gys, const T* w, T* gx, Strides gxs,
                      int64_t n, int64_t c, T* scratch);
  int64_t (*dw_s2_dgrad_scratch)(const Geo&);
  // Weight gradient of group grp, output channels [k0, k1) of the group, summed over the batch;
  // writes gw (contiguous [K, Cg, R, S]) rows of those channels.
  void (*wgrad)(const Geo&, const T* gy, Strides gys, const T* x, Strides xs, T* gw, int64_t grp,
                int64_t k0, int64_t k1, T* scratch);
  int64_t (*wgrad_scratch)(const Geo&, int64_t channels);
  // im2col of channel c of group grp, batch n, output rows [p0, p1) into col rows
  // [(c * R + r) * S + s] of length (p1 - p0) * Q.
  void (*im2col)(const Geo&, const T* x, Strides xs, int64_t n, int64_t grp, int64_t c, int64_t p0,
                 int64_t p1, T* col);
  // the reverse: adds col rows of channel c into gx (col2im, for the GEMM input gradient)
  void (*col2im)(const Geo&, const T* col, T* gx, Strides gxs, int64_t n, int64_t grp, int64_t c,
                 int64_t p0, int64_t p1);
  // channels-last (xs.c == 1): col rows of the pixels of rows [pa, pb) (within the chunk of
  // rows [p0, ...) that col holds, Q pixels a row) of image n and group grp, each the Cg-channel
  // vectors of its taps ([pixel][r][s][Cg], zeros for padding)
  void (*im2col_nhwc)(const Geo&, const T* x, Strides xs, int64_t n, int64_t grp, int64_t p0,
                      int64_t pa, int64_t pb, T* col);
  // channels-last (gxs.c == 1): col holds, for gy rows [p0, p1) of image n and group grp, every
  // tap's vector of Cg channels ([pixel][r][s][Cg]); adds into gx rows [i0, i1) of the group
  // the vectors that land there (each gx row from one call: no two threads add to a pixel)
  void (*col2im_nhwc)(const Geo&, const T* col, T* gx, Strides gxs, int64_t n, int64_t grp,
                      int64_t p0, int64_t p1, int64_t i0, int64_t i1);
  // Depthwise with channel multiplier 1 in channels-last (channel stride 1 everywhere), vectors
  // along the channels; wt is the weight as [R * S][C]; taps: 4 * R * S int64 of scratch.
  // forward: output rows [p0, p1) of batch n
  void (*dw_nhwc_fwd)(const Geo&, const T* x, Strides xs, const T* wt, const T* bias, Act act,
                      T* y, Strides ys, int64_t n, int64_t p0, int64_t p1, int64_t* taps);
  // input gradient (any stride): gx rows [i0, i1) of batch n
  void (*dw_nhwc_dgrad)(const Geo&, const T* gy, Strides gys, const T* wt, T* gx, Strides gxs,
                        int64_t n, int64_t i0, int64_t i1, int64_t* taps);
  // weight gradient: adds the sums over output rows [f0, f1) (flattened n * P + p) to part
  // ([R * S][C]; nullable), and with gb (nullable) the bias gradient's (gy summed over those
  // pixels) to gb ([C])
  void (*dw_nhwc_wgrad)(const Geo&, const T* gy, Strides gys, const T* x, Strides xs, T* part,
                        T* gb, int64_t f0, int64_t f1);
  // Grouped with Cg == Kg (g_nhwc_ok), channels-last: forward rows [p0, p1) of batch n (as
  // dw_nhwc_fwd) and weight-gradient partial sums over output rows [f0, f1) (as dw_nhwc_wgrad).
  // Weights and weight gradient are stored rotated, [R * S][Cg][C] with element (t, j, k) =
  // w[k][(k % Cg + j) % Cg][t] (see kernels_impl.h).
  void (*g_nhwc_fwd)(const Geo&, const T* x, Strides xs, const T* wt, const T* bias, Act act,
                     T* y, Strides ys, int64_t n, int64_t p0, int64_t p1, int64_t* taps);
  void (*g_nhwc_wgrad)(const Geo&, const T* gy, Strides gys, const T* x, Strides xs, T* part,
                       int64_t f0, int64_t f1);
  // GEMM epilogue: rows [r0, r1) of a [rows][cols] block with row pitch `pitch` get
  // act(y + bias), the bias per row (bias[r]) or per column (bias[j]); bias nullable
  void (*bias_act)(T* y, int64_t pitch, int64_t r0, int64_t r1, int64_t cols, const T* bias,
                   bool bias_per_row, Act act);
  // small GEMM with the epilogue fused (1x1 convolutions with a short sum or few outputs):
  // D[i][j] = act(bias + sum_c A[i * as + c * acs] * B[c * bs + j]) for rows [i0, i1) and
  // columns [j0, j1) (D, A, B at row / column 0; D rows ds apart); bias per row or per column,
  // nullable; accumulate: D's values instead of the bias start the sums
  void (*gemm_bcast)(const T* A, int64_t as, int64_t acs, const T* B, int64_t bs, int64_t kd,
                     const T* bias, bool bias_per_row, Act act, T* D, int64_t ds, int64_t i0,
                     int64_t i1, int64_t j0, int64_t j1, bool accumulate);
  // bilinear resize of one image (channels-last: rows of W * C values, cc = C) or one plane
  // (cc = 1); xo/xl (2 per output column: input offsets in values, weights) and yi/yl (2 per
  // output row: input rows, weights) are torch's coefficients. Forward: output rows [r0, r1),
  // scratch 2 * OW * cc. Backward: input-gradient rows [i0, i1) written completely, olo/ohi the
  // output rows that read each input row, scratch OW * cc.
  void (*resize_fwd)(const T* x, int64_t xp, int64_t cc, const int64_t* xo, const T* xl,
                     int64_t OW, const int64_t* yi, const T* yl, T* y, int64_t yp, int64_t r0,
                     int64_t r1, T* scratch);
  void (*resize_bwd)(const T* g, int64_t gp, int64_t cc, const int64_t* xo, const T* xl,
                     int64_t OW, const int64_t* yi, const T* yl, const int64_t* olo,
                     const int64_t* ohi, T* gx, int64_t xp, int64_t W, int64_t i0, int64_t i1,
                     T* scratch);
  // Batch norm with batch statistics + clamp(lo, hi), over a block: one plane (planar: len
  // values of one channel, per-channel arguments at index 0) or len channels-last pixels of
  // C <= 4096 channels. moments: s1/s2 += sums of (x - shift) and its square; apply:
  // y = clamp(x * scale + bias); grad_sums: s1/s2 += sums of gz and gz * (x - mean), gz = g
  // where lo < x * scale + bias < hi (the forward's pre-clamp value, recomputed bit for bit:
  // the output is not read); grad_apply: gx = k1 * gz - k2 - k3 * (x - mean). moments and the
  // applies take the planes read next (nullable), prefetched while they read / write.
  void (*bn_moments)(const T* x, int64_t len, int64_t C, bool planar, const T* shift, double* s1,
                     double* s2, const T* pf);
  void (*bn_apply)(const T* x, int64_t len, int64_t C, bool planar, const T* scale, const T* bias,
                   T lo, T hi, T* y, const T* pf, bool stream);
  void (*bn_grad_sums)(const T* g, const T* x, int64_t len, int64_t C, bool planar,
                       const T* mean, const T* scale, const T* bias, T lo, T hi, double* s1,
                       double* s2);
  void (*bn_grad_apply)(const T* g, const T* x, int64_t len, int64_t C, bool planar,
                        const T* mean, const T* scale, const T* bias, const T* k1, const T* k2,
                        const T* k3, T lo, T hi, T* gx, const T* pg, const T* px,
                        bool stream);
  // Cross-entropy over C classes of m pixels: x the logits (class c of pixel p at
  // x[p * ps + c * cs]: plain NCHW ps = 1, channels-last cs = 1), t the int64 targets.
  // Forward: per pixel lsum = log(sum_c exp(x_c - max)) and loss = (max - x_t) + lsum (0 where
  // t == ignore); returns how many targets are neither ignore nor in [0, C) (the caller raises).
  // Backward, the max recomputed: gx_c = g * (exp((x_c - max) - lsum) - [c == t]), 0 where
  // t == ignore (at gx[p * gps + c * gcs]);
  // returns the bad targets likewise (their one-hot term is not written). scratch: C * vec
  // values forward, 2 * C * vec backward (used where a stride is not 1).
  int64_t (*ce_fwd)(const T* x, int64_t cs, int64_t ps, int64_t C, const int64_t* t, int64_t m,
                    int64_t ignore, T* loss, T* lsum, T* scratch);
  int64_t (*ce_bwd)(const T* x, int64_t cs, int64_t ps, int64_t C, const int64_t* t, const T* g,
                    const T* lsum, int64_t m, int64_t ignore, T* gx, int64_t gcs, int64_t gps,
                    T* scratch);
  const char* isa;
};

// The kernels for this CPU (AVX-512, AVX2+FMA or baseline SSE2); DILCONV_CPU_ISA=avx2|base
// forces a lower level (used by the tests to cover every variant).
const Kernels<float>& kernels_f32();
const Kernels<double>& kernels_f64();
// the CPU's maker, "intel", "amd" or "other": the auto policy's GEMM-based choices rest on
// torch's BLAS GEMM (MKL), which was measured fast against oneDNN on Intel only
const char* cpu_vendor();
// cpu_vendor() is "intel" (read once): a few kernel loop shapes were measured to differ by maker
bool cpu_is_intel();

// the same, by element type (for the host code's templates)
template <class T>
const Kernels<T>& kern();
template <>
inline const Kernels<float>& kern<float>() { return kernels_f32(); }
template <>
inline const Kernels<double>& kern<double>() { return kernels_f64(); }

}  // namespace dilconv::cpu
