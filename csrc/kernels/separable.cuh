// Fused atrous-separable convolution (depthwise, possibly dilated, then pointwise 1x1) and the
// pieces of its backward. Same two-compiler rules as depthwise.cuh.
//
// Forward (sep_fwd): a block owns a tile of output pixels of one image and all (up to 256)
// output channels. It walks the input channels in chunks: stage the chunk's input window in
// shared memory, compute the chunk's depthwise outputs for the tile into shared memory (bias,
// ReLU), then accumulate the pointwise product into registers (each thread a PPM x OOM block of
// pixels x output channels). The intermediate never touches global memory; the output is staged
// through shared memory so that its stores are coalesced in either layout.
//
// Backward pieces (orchestrated by aten_glue.h): `pw_gemm` (1x1 conv with a fused ReLU-gradient
// epilogue), `outer_sum` (pointwise weight gradient) and `channel_sum` (bias gradients), both
// deterministic: fixed-order partial sums per chunk of pixels, then reduce_chunks.
#pragma once
#include "kernels/depthwise.cuh"

#if defined(__CUDACC__)
#define DW_UNROLL _Pragma("unroll")
#else
#define DW_UNROLL
#endif

namespace DC_TARGET_NS {
namespace dw {

inline constexpr int kTP = 32;  // threads along pixels
inline constexpr int kTO = 8;   // threads along output channels
// sep_fwd's registers (> 128 per thread) allow one 256-thread block per SM anyway, so it may use
// more shared memory than the other kernels (dc::launch opts in above 48 KiB).
inline constexpr size_t kSepSmemBudget = 96 * 1024;

struct SepTile {
  DwShape s;
  int o;
  int th, tw, ih, iw, tiles_h, tiles_w;
  // Dilation lattices (stride 1 only): ly > 1 makes a tile's output rows oy0, oy0+ly, ... with
  // ly = dh, so the rows they read are one lattice of input rows (th + R - 1 of them, not
  // th + (R-1)*dh): the halo of a dilated conv shrinks to that of an undilated one. lx likewise
  // for columns (NHWC only: NCHW keeps columns contiguous for coalescing). tpr_*: tiles per
  // residue class of the lattice (tiles_h = ly * tpr_h).
  int ly, lx, tpr_h, tpr_w;
  int cic;            // input channels per chunk
  int oblk, oblocks;  // output channels per block, blocks along output channels
  int has_dwb, has_pwb, mid_relu, out_relu;
};

// Window indices k in [0, count) whose coordinate org + step*k lies in [0, size): [lo, hi).
DC_HD void lattice_clip(int org, int step, int count, int size, int& lo, int& hi) {
  lo = org >= 0 ? 0 : (-org + step - 1) / step;
  hi = org < size ? ::dc::min(count, (size - 1 - org) / step + 1) : 0;
  if (hi < lo) hi = lo;
}

#if DC_KERNEL_BODIES
// Zeroes the window entries [na][nb][nch] outside rows [ka0,ka1) x cols [kb0,kb1).
template <typename A>
__device__ __forceinline__ void zero_outside_k(A* dst, int na, int nb, int nch, int da, int db,
                                               int dcs, int ka0, int ka1, int kb0, int kb1) {
  if (ka0 == 0 && ka1 == na && kb0 == 0 && kb1 == nb) return;
  const int total = na * nb * nch;
  for (int i = threadIdx.x; i < total; i += blockDim.x) {
    const int ic = i % nch, pix = i / nch;
    const int ia = pix / nb, ib = pix - ia * nb;
    if (ia < ka0 || ia >= ka1 || ib < kb0 || ib >= kb1) dst[ia * da + ib * db + ic * dcs] = A(0);
  }
}

// (kThreads, 1): ptxas otherwise aims at 128 registers and spills a few accumulators
template <typename T, bool CL, int OOM, int PPM>
__global__ void __launch_bounds__(kThreads, 1)
    sep_fwd(SepTile t, const T* __restrict__ x, const T* __restrict__ dww,
            const T* __restrict__ dwb, const T* __restrict__ pww, const T* __restrict__ pwb,
            T* __restrict__ out) {
  using A = acc_t<T>;
  DC_DYNAMIC_SHARED(A, sm);
  const DwShape& s = t.s;
  const int ntiles = t.tiles_h * t.tiles_w;
  int b = blockIdx.x;
  const int tile = b % ntiles;
  b /= ntiles;
  const int ob = b % t.oblocks, n = b / t.oblocks;
  const int thi = tile / t.tiles_w, twi = tile - thi * t.tiles_w;
  const int ry = thi / t.tpr_h, rx = twi / t.tpr_w;
  const int oy0 = ry + t.ly * (thi - ry * t.tpr_h) * t.th;  // first output row/col of the tile
  const int ox0 = rx + t.lx * (twi - rx * t.tpr_w) * t.tw;
  const int nh = oy0 < s.p ? ::dc::min(t.th, (s.p - 1 - oy0) / t.ly + 1) : 0;  // valid rows/cols
  const int nw = ox0 < s.q ? ::dc::min(t.tw, (s.q - 1 - ox0) / t.lx + 1) : 0;
  // window row k reads input row iy0 + wy*k; output row i, tap kr use window row i*ysm + kr*ydm
  const int wy = t.ly > 1 ? s.dh : 1, wx = t.lx > 1 ? s.dw : 1;
  const int ysm = t.ly > 1 ? 1 : s.sh, ydm = t.ly > 1 ? 1 : s.dh;
  const int xsm = t.lx > 1 ? 1 : s.sw, xdm = t.lx > 1 ? 1 : s.dw;
  const int iy0 = oy0 * s.sh - s.ph, ix0 = ox0 * s.sw - s.pw;
  int ka0, ka1, kb0, kb1;  // the window rows/cols inside the image
  lattice_clip(iy0, wy, t.ih, s.h, ka0, ka1);
  lattice_clip(ix0, wx, t.iw, s.w, kb0, kb1);
  const int o0 = ob * t.oblk, no = ::dc::min(t.oblk, t.o - o0);
  const int M = s.m, CM = s.c * M, RS = s.r * s.s, pt = t.th * t.tw, jcmax = t.cic * M;
  A* pbs = sm;                          // [oblk]
  A* xs = pbs + t.oblk;                 // CL: [ih][iw][nci]; else [nci][ih][iw]
  A* dws = xs + t.cic * t.ih * t.iw;    // [RS][jc]
  A* dbs = dws + RS * jcmax;            // [jc]
  A* ms = dbs + jcmax;                  // the depthwise tile, on chip only: NCHW [jc][pt],
                                        // NHWC [pt][jcmax | 1] (odd stride: no bank conflicts)
  const int msw = jcmax | 1;
  auto MS = [&](int j, int p) { return CL ? p * msw + j : j * pt + p; };
  A* pws = ms + (jcmax + 1) * pt;       // [jc][no]
  A* st = xs;                           // after the loop: [no][pt] output staging
  const int tp = threadIdx.x % kTP, to = threadIdx.x / kTP;
  if (t.has_pwb) load_vec(pwb, o0, no, pbs);
  A acc[PPM][OOM];
DW_UNROLL
  for (int i = 0; i < PPM; ++i)
DW_UNROLL
    for (int jj = 0; jj < OOM; ++jj) acc[i][jj] = A(0);
  for (int ci0 = 0; ci0 < s.c; ci0 += t.cic) {
    const int nci = ::dc::min(t.cic, s.c - ci0), jc = nci * M, j0 = ci0 * M;
    if (CL) {
      zero_outside_k(xs, t.ih, t.iw, nci, t.iw * nci, nci, 1, ka0, ka1, kb0, kb1);
      copy_window_s(x, n * s.h * s.w * s.c, s.w, s.c, iy0 + wy * ka0, ka1 - ka0, wy, ix0 + wx * kb0,
                    kb1 - kb0, wx, ci0, ci0 + nci, xs + (ka0 * t.iw + kb0) * nci, t.iw * nci, nci, 1);
    } else {
      zero_outside_k(xs, t.ih, t.iw, nci, t.iw, 1, t.ih * t.iw, ka0, ka1, kb0, kb1);
      // (channel, row, col) of the image as one window: whole planes merge into one run
      copy_window_s(x, n * s.c * s.h * s.w, s.h, s.w, ci0, nci, 1, iy0 + wy * ka0, ka1 - ka0, wy,
                    ix0 + kb0, ix0 + kb1, xs + ka0 * t.iw + kb0, t.ih * t.iw, t.iw, 1);
    }
    load_dw_weights(dww, j0, jc, RS, dws);
    if (t.has_dwb) load_vec(dwb, j0, jc, dbs);
    // pw[o][j] for o in the block, j in the chunk -> pws[(j - j0) * no + (o - o0)]
    copy_window(pww, 0, CM, 1, o0, o0 + no, j0, j0 + jc, 0, 1, pws, 1, no, 0, o0, j0, 0);
    __syncthreads();
    for (int i = threadIdx.x; i < jc * pt; i += blockDim.x) {
      // NCHW: lanes along pixels; NHWC: lanes along channels (consecutive shared words)
      const int j = CL ? i % jc : i / pt, pix = CL ? i / jc : i - j * pt;
      const int py = pix / t.tw, px = pix - py * t.tw, cl = j / M;
      A v = t.has_dwb ? dbs[j] : A(0);
      if (CL) {
        const A* xp = xs + (py * ysm * t.iw + px * xsm) * nci + cl;
        for (int kr = 0; kr < s.r; ++kr)
          for (int ks = 0; ks < s.s; ++ks)
            v += xp[(kr * ydm * t.iw + ks * xdm) * nci] * dws[(kr * s.s + ks) * jc + j];
      } else {
        const A* xp = xs + (cl * t.ih + py * ysm) * t.iw + px * xsm;
        for (int kr = 0; kr < s.r; ++kr)
          for (int ks = 0; ks < s.s; ++ks)
            v += xp[kr * ydm * t.iw + ks * xdm] * dws[(kr * s.s + ks) * jc + j];
      }
      if (t.mid_relu) v = v > A(0) ? v : A(0);
      ms[MS(j, pix)] = v;
    }
    __syncthreads();
    // hold the shorter of the two operand vectors in registers
    for (int j = 0; j < jc; ++j) {
      if constexpr (PPM <= OOM) {
        A mv[PPM];
DW_UNROLL
        for (int i = 0; i < PPM; ++i) {
          const int p = tp + kTP * i;
          mv[i] = p < pt ? ms[MS(j, p)] : A(0);
        }
DW_UNROLL
        for (int jj = 0; jj < OOM; ++jj) {
          const int o = to + kTO * jj;
          const A wv = o < no ? pws[j * no + o] : A(0);
DW_UNROLL
          for (int i = 0; i < PPM; ++i) acc[i][jj] += mv[i] * wv;
        }
      } else {
        A wv[OOM];
DW_UNROLL
        for (int jj = 0; jj < OOM; ++jj) {
          const int o = to + kTO * jj;
          wv[jj] = o < no ? pws[j * no + o] : A(0);
        }
DW_UNROLL
        for (int i = 0; i < PPM; ++i) {
          const int p = tp + kTP * i;
          const A mv = p < pt ? ms[MS(j, p)] : A(0);
DW_UNROLL
          for (int jj = 0; jj < OOM; ++jj) acc[i][jj] += mv * wv[jj];
        }
      }
    }
    __syncthreads();
  }
DW_UNROLL
  for (int i = 0; i < PPM; ++i)
DW_UNROLL
    for (int jj = 0; jj < OOM; ++jj) {
      const int o = to + kTO * jj, p = tp + kTP * i;
      if (o < no && p < pt) {
        A v = acc[i][jj] + (t.has_pwb ? pbs[o] : A(0));
        if (t.out_relu) v = v > A(0) ? v : A(0);
        st[o * pt + p] = v;
      }
    }
  __syncthreads();
  if (CL) {
    for_window_s(n * s.p * s.q * t.o, s.q, t.o, oy0, nh, t.ly, ox0, nw, t.lx, o0, o0 + no,
                 [&](int i, int oy, int ox, int oc) {
                   const int p = (oy - oy0) / t.ly * t.tw + (ox - ox0) / t.lx;
                   ::dc::store(out + i, from_acc<T>(st[(oc - o0) * pt + p]));
                 });
  } else {
    for_window_s(n * t.o * s.p * s.q, s.p, s.q, o0, no, 1, oy0, nh, t.ly, ox0, ox0 + nw,
                 [&](int i, int oc, int oy, int ox) {
                   const int p = (oy - oy0) / t.ly * t.tw + (ox - ox0);
                   ::dc::store(out + i, from_acc<T>(st[(oc - o0) * pt + p]));
                 });
  }
}

// out[n, r, pix] = epilogue(sum_j W[r*w_si + j*w_sj] * in[n, j, pix]). Block: 64 rows x 64
// pixels of one image, 4x4 per thread, inner dimension in steps of 16 through shared memory.
template <typename T, bool CL, int EP>
__global__ void __launch_bounds__(kThreads, 2)
    pw_gemm(PwShape ps, const T* __restrict__ in, const T* __restrict__ w,
            const T* __restrict__ bias, const T* __restrict__ aux, T* __restrict__ out) {
  using A = acc_t<T>;
  __shared__ A Ws[16 * 64];
  __shared__ A Is[16 * 64];
  const int rt = (ps.rows + 63) / 64, pt = (ps.pixels + 63) / 64;
  int b = blockIdx.x;
  const int r0 = (b % rt) * 64;
  b /= rt;
  const int p0 = (b % pt) * 64, n = b / pt;
  const int rn = ::dc::min(64, ps.rows - r0), pn = ::dc::min(64, ps.pixels - p0);
  // lanes along pixels (NCHW) or rows (NHWC): the stores' contiguous dimension
  const int tr = CL ? threadIdx.x % 16 : threadIdx.x / 16;
  const int tc = CL ? threadIdx.x / 16 : threadIdx.x % 16;
  A acc[4][4];
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) acc[i][j] = A(0);
  for (int k0 = 0; k0 < ps.inner; k0 += 16) {
    const int kn = ::dc::min(16, ps.inner - k0);
    for (int i = threadIdx.x; i < 16 * 64; i += blockDim.x) {
      const int k = i / 64, e = i - k * 64;
      if (k >= kn || e >= pn) Is[i] = A(0);
      Ws[i] = (k < kn && e < rn) ? to_acc(::dc::ldg(w + (r0 + e) * ps.w_si + (k0 + k) * ps.w_sj)) : A(0);
    }
    if (CL)
      copy_window(in, n * ps.pixels * ps.inner, ps.inner, 1, p0, p0 + pn, k0, k0 + kn, 0, 1, Is, 1,
                  64, 0, p0, k0, 0);
    else
      copy_window(in, n * ps.inner * ps.pixels, ps.pixels, 1, k0, k0 + kn, p0, p0 + pn, 0, 1, Is, 64,
                  1, 0, k0, p0, 0);
    __syncthreads();
    for (int k = 0; k < kn; ++k) {
      A wa[4], ia[4];
      for (int i = 0; i < 4; ++i) wa[i] = Ws[k * 64 + tr + 16 * i];
      for (int j = 0; j < 4; ++j) ia[j] = Is[k * 64 + tc + 16 * j];
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] += wa[i] * ia[j];
    }
    __syncthreads();
  }
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) {
      const int r = tr + 16 * i, p = tc + 16 * j;
      if (r >= rn || p >= pn) continue;
      const int idx = CL ? (n * ps.pixels + p0 + p) * ps.rows + r0 + r
                         : (n * ps.rows + r0 + r) * ps.pixels + p0 + p;
      A v = acc[i][j];
      if (EP == int(PwEpilogue::relu_grad)) {
        const A z = v + (bias != nullptr ? to_acc(::dc::ldg(bias + r0 + r)) : A(0));
        v = z > A(0) ? to_acc(::dc::ldg(aux + idx)) : A(0);
      } else if (EP == int(PwEpilogue::mask_pos)) {
        v = to_acc(::dc::ldg(aux + idx)) > A(0) ? v : A(0);
      } else if (EP == int(PwEpilogue::bias) || EP == int(PwEpilogue::bias_relu)) {
        v += bias != nullptr ? to_acc(::dc::ldg(bias + r0 + r)) : A(0);
        if (EP == int(PwEpilogue::bias_relu)) v = v > A(0) ? v : A(0);
      }
      ::dc::store(out + idx, from_acc<T>(v));
    }
}

// Stages a [32 pixels][32 channels] tile of a[n] (channels [c0, c0+cn), pixels [p0, p0+pn)) as
// dst[pix * 32 + ch], zero beyond the ranges.
template <typename T, typename A>
__device__ __forceinline__ void stage_pc(const T* __restrict__ a, bool cl, int n, int pixels,
                                         int rows, int c0, int cn, int p0, int pn, A* dst) {
  for (int i = threadIdx.x; i < 32 * 32; i += blockDim.x)
    if (i / 32 >= pn || i % 32 >= cn) dst[i] = A(0);
  if (cl)
    copy_window(a, n * pixels * rows, rows, 1, p0, p0 + pn, c0, c0 + cn, 0, 1, dst, 32, 1, 0, p0, c0, 0);
  else
    copy_window(a, n * rows * pixels, pixels, 1, c0, c0 + cn, p0, p0 + pn, 0, 1, dst, 1, 32, 0, c0, p0, 0);
}

struct ReduceTile {
  int n, pixels, rows_a, rows_b;  // rows_b = 0: channel sum of a
  int pblocks;                    // 32-pixel blocks per image
  int per_chunk, chunks, atiles, btiles;
};

// gw partial[chunk][i][j] = sum over the chunk's pixels of a[i, pix] * b[j, pix], in a fixed
// order (each thread owns 4 (i, j) pairs).
template <typename T, bool CL>
__global__ void __launch_bounds__(kThreads, 2)
    outer_sum_partial(ReduceTile rt, const T* __restrict__ a, const T* __restrict__ bm,
                      acc_t<T>* __restrict__ ws) {
  using A = acc_t<T>;
  __shared__ A As[32 * 32];
  __shared__ A Bs[32 * 32];
  int b = blockIdx.x;
  const int it = b % rt.atiles;
  b /= rt.atiles;
  const int jt = b % rt.btiles, chunk = b / rt.btiles;
  const int i0 = it * 32, j0 = jt * 32;
  const int in = ::dc::min(32, rt.rows_a - i0), jn = ::dc::min(32, rt.rows_b - j0);
  const int jl = threadIdx.x % 32, il = threadIdx.x / 32;
  A acc[4] = {A(0), A(0), A(0), A(0)};
  const int items = rt.n * rt.pblocks;
  const int e1 = ::dc::min(items, (chunk + 1) * rt.per_chunk);
  for (int item = chunk * rt.per_chunk; item < e1; ++item) {
    const int n = item / rt.pblocks, p0 = (item - n * rt.pblocks) * 32;
    const int pn = ::dc::min(32, rt.pixels - p0);
    stage_pc(a, CL, n, rt.pixels, rt.rows_a, i0, in, p0, pn, As);
    stage_pc(bm, CL, n, rt.pixels, rt.rows_b, j0, jn, p0, pn, Bs);
    __syncthreads();
    for (int p = 0; p < pn; ++p) {
      const A bv = Bs[p * 32 + jl];
      for (int q = 0; q < 4; ++q) acc[q] += As[p * 32 + il + 8 * q] * bv;
    }
    __syncthreads();
  }
  for (int q = 0; q < 4; ++q) {
    const int i = il + 8 * q;
    if (i < in && jl < jn)
      ::dc::store(ws + (chunk * rt.rows_a + i0 + i) * rt.rows_b + j0 + jl, acc[q]);
  }
}

// partial[chunk][c] = sum over the chunk's pixels of a[c, pix], in a fixed order.
template <typename T, bool CL>
__global__ void __launch_bounds__(kThreads, 2)
    channel_sum_partial(ReduceTile rt, const T* __restrict__ a, acc_t<T>* __restrict__ ws) {
  using A = acc_t<T>;
  __shared__ A As[32 * 32];
  __shared__ A part[kWarps * 32];
  const int it = blockIdx.x % rt.atiles, chunk = blockIdx.x / rt.atiles;
  const int c0 = it * 32, cn = ::dc::min(32, rt.rows_a - c0);
  const int cl = threadIdx.x % 32, g = threadIdx.x / 32;
  A acc = A(0);
  const int items = rt.n * rt.pblocks;
  const int e1 = ::dc::min(items, (chunk + 1) * rt.per_chunk);
  for (int item = chunk * rt.per_chunk; item < e1; ++item) {
    const int n = item / rt.pblocks, p0 = (item - n * rt.pblocks) * 32;
    const int pn = ::dc::min(32, rt.pixels - p0);
    stage_pc(a, CL, n, rt.pixels, rt.rows_a, c0, cn, p0, pn, As);
    __syncthreads();
    for (int p = g; p < pn; p += kWarps) acc += As[p * 32 + cl];
    __syncthreads();
  }
  part[g * 32 + cl] = acc;
  __syncthreads();
  if (g == 0 && cl < cn) {
    A sum = A(0);
    for (int i = 0; i < kWarps; ++i) sum += part[i * 32 + cl];
    ::dc::store(ws + chunk * rt.rows_a + c0 + cl, sum);
  }
}
#endif  // DC_KERNEL_BODIES

// ---------------------------------------------------------------------------------------------
// Host side

// Register blocking of sep_fwd per thread: OOM output channels x PPM pixels (the block covers
// kTO*OOM channels x kTP*PPM pixels). Narrow layers get taller tiles (less halo re-reading).
inline int sep_oom(int o) { return o <= kTO ? 1 : (o <= 4 * kTO ? 4 : (o <= 8 * kTO ? 8 : 32)); }
inline int sep_ppm(int oom) { return oom == 1 ? 32 : (oom == 4 ? 16 : (oom == 8 ? 8 : 1)); }

inline size_t sep_smem(const SepTile& t, DType dt) {
  const DwShape& s = t.s;
  const size_t jc = size_t(t.cic) * s.m, pt = size_t(t.th) * t.tw;
  const size_t loop = size_t(t.cic) * t.ih * t.iw + size_t(s.r) * s.s * jc + jc + (jc + 1) * pt + jc * t.oblk;
  const size_t stage = size_t(t.oblk) * pt;
  return (t.oblk + (loop > stage ? loop : stage)) * acc_bytes(dt);
}

// Clipped window extents of the tiles along one axis of sep_fwd: f(count, full) per tile, with
// `count` window positions inside the source and `full` when they are the whole source axis.
template <typename F>
inline void sep_axis_tiles(int out, int src, int stride, int pad, int dil, int k, int step, int t,
                           F f) {
  const int per_res = (out + step - 1) / step, tpr = (per_res + t - 1) / t;
  const int wstep = step > 1 ? dil : 1;
  const int win = step > 1 ? t + k - 1 : (t - 1) * stride + (k - 1) * dil + 1;
  for (int r = 0; r < step; ++r)
    for (int ti = 0; ti < tpr; ++ti) {
      const int o0 = r + step * ti * t;
      if (o0 >= out) continue;
      int lo, hi;
      lattice_clip(o0 * stride - pad, wstep, win, src, lo, hi);
      f(hi - lo, hi - lo == src && wstep == 1);
    }
}

// Tile choice of the fused forward: the fewest modelled global sectors (input windows, re-read
// once per output-channel block; pointwise weights, read once per tile; a per-block overhead)
// over lattice (dilated, stride 1) and contiguous tiles within the register blocking and the
// shared-memory budget. A model of DRAM sectors with no cache reuse, not a timing.
inline bool plan_sep(const DwShape& s, int o, DType dt, SepTile& t) {
  t = SepTile{};
  t.s = s;
  t.o = o;
  const int oom = sep_oom(o);
  t.oblk = ::dc::min(o, kTO * oom);
  t.oblocks = (o + t.oblk - 1) / t.oblk;
  const int pt_max = kTP * sep_ppm(oom);
  const size_t es = elem_bytes(dt);
  const double pw_sectors = double(o) * s.c * s.m * es / 32.0;
  double best = 1e300;
  const int lys[2] = {1, s.sh == 1 && s.dh > 1 ? s.dh : 0};
  const int lxs[2] = {1, s.channels_last && s.sw == 1 && s.dw > 1 ? s.dw : 0};
  const int cand_c[] = {16, 8, 4, 2, 1};
  for (int ly : lys) {
    if (ly == 0 || (ly > 1 && ly >= s.p)) continue;
    for (int lx : lxs) {
      if (lx == 0 || (lx > 1 && lx >= s.q)) continue;
      const int rows = (s.p + ly - 1) / ly, cols = (s.q + lx - 1) / lx;  // per residue class
      const int cand_w[] = {cols, 64, 32, 16, 8, 4, 2, 1};
      for (int tw : cand_w) {
        if (tw < 1 || tw > cols || tw > pt_max) continue;
        const int th0 = ::dc::min(rows, pt_max / tw);
        const int th = (rows + (rows + th0 - 1) / th0 - 1) / ((rows + th0 - 1) / th0);
        SepTile c = t;
        c.th = th;
        c.tw = tw;
        c.ly = ly;
        c.lx = lx;
        c.tpr_h = (rows + th - 1) / th;
        c.tpr_w = (cols + tw - 1) / tw;
        c.ih = ly > 1 ? th + s.r - 1 : (th - 1) * s.sh + (s.r - 1) * s.dh + 1;
        c.iw = lx > 1 ? tw + s.s - 1 : (tw - 1) * s.sw + (s.s - 1) * s.dw + 1;
        for (int cic : cand_c) {
          if (cic > s.c && cic != 1) continue;
          c.cic = ::dc::min(cic, s.c);
          if (sep_smem(c, dt) > kSepSmemBudget) continue;
          // modelled sectors of the input windows
          double rows_sum = 0, full_rows = 0, colterm = 0;
          int tiles_h = 0, tiles_w = 0;
          bool all_full = true;
          const int run = s.channels_last ? c.cic : 1;  // contiguous elements per pixel
          const bool merge = !s.channels_last || (c.cic == s.c && lx == 1);
          sep_axis_tiles(s.q, s.w, s.sw, s.pw, s.dw, s.s, lx, tw, [&](int n, bool full) {
            ++tiles_w;
            all_full = all_full && full;
            colterm += merge ? double(n) * (s.channels_last ? s.c : 1) * es / 32.0 + 0.5
                             : double(n) * ((run * es + 31) / 32);
          });
          sep_axis_tiles(s.p, s.h, s.sh, s.ph, s.dh, s.r, ly, th, [&](int n, bool) {
            ++tiles_h;
            rows_sum += n;
            full_rows += double(n) * s.w * (s.channels_last ? s.c : 1) * es / 32.0 + 0.5;
          });
          const double groups = s.channels_last ? (merge ? 1.0 : double((s.c + c.cic - 1) / c.cic))
                                                : double(s.c);
          const double xs = groups * (merge && all_full && tiles_w == 1 ? full_rows : rows_sum * colterm);
          const double cost = t.oblocks * (xs + double(tiles_h) * tiles_w * (pw_sectors + 4.0));
          if (cost < best - 1e-9) {
            best = cost;
            t = c;
          }
          break;  // the largest chunk that fits
        }
      }
    }
  }
  if (best >= 1e300) return false;
  t.tiles_h = t.ly * t.tpr_h;
  t.tiles_w = t.lx * t.tpr_w;
  return true;
}

inline ReduceTile plan_reduce(int n, int pixels, int rows_a, int rows_b) {
  ReduceTile r{};
  r.n = n;
  r.pixels = pixels;
  r.rows_a = rows_a;
  r.rows_b = rows_b;
  r.pblocks = (pixels + 31) / 32;
  r.atiles = (rows_a + 31) / 32;
  r.btiles = rows_b > 0 ? (rows_b + 31) / 32 : 1;
  const int items = n * r.pblocks;
  const long long slot = 1LL * rows_a * (rows_b > 0 ? rows_b : 1);
  const int max_chunks = int(::dc::max(1LL, (2147483647LL - 4096) / ::dc::max(1LL, slot)));
  const int tiles = r.atiles * r.btiles;
  const int chunks = ::dc::max(1, ::dc::min(::dc::min(items, max_chunks), (1024 + tiles - 1) / tiles));
  r.per_chunk = items == 0 ? 1 : (items + chunks - 1) / chunks;
  r.chunks = items == 0 ? 0 : (items + r.per_chunk - 1) / r.per_chunk;
  return r;
}

#if DC_KERNEL_BODIES
inline bool launch_separable_fwd(const DwShape& s, int o, DType dt, const void* x,
                                 const void* dww, const void* dwb, const void* pww,
                                 const void* pwb, void* out, bool mid_relu, bool out_relu,
                                 void* stream) {
  SepTile t;
  if (!plan_sep(s, o, dt, t)) return false;
  if (s.n == 0) return true;
  t.has_dwb = dwb != nullptr;
  t.has_pwb = pwb != nullptr;
  t.mid_relu = mid_relu;
  t.out_relu = out_relu;
  const unsigned blocks = unsigned(s.n * t.oblocks * t.tiles_h * t.tiles_w);
  dispatch(dt, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    dispatch_cl(s.channels_last, [&](auto cl) {
      constexpr bool CL = decltype(cl)::value;
      auto go = [&](auto kernel) {
        ::dc::launch(kernel, dim3(blocks), dim3(kThreads), sep_smem(t, dt), to_stream(stream), t,
                     static_cast<const T*>(x), static_cast<const T*>(dww),
                     static_cast<const T*>(dwb), static_cast<const T*>(pww),
                     static_cast<const T*>(pwb), static_cast<T*>(out));
      };
      switch (sep_oom(o)) {
        case 1: go(sep_fwd<T, CL, 1, 32>); break;
        case 4: go(sep_fwd<T, CL, 4, 16>); break;
        case 8: go(sep_fwd<T, CL, 8, 8>); break;
        default: go(sep_fwd<T, CL, 32, 1>); break;
      }
    });
  });
  return true;
}

inline void launch_pointwise(const PwShape& ps, DType dt, const void* in, const void* w,
                             const void* bias, const void* aux, void* out, PwEpilogue ep,
                             void* stream) {
  const long long blocks = 1LL * ((ps.rows + 63) / 64) * ((ps.pixels + 63) / 64) * ps.n;
  if (blocks == 0) return;
  dispatch(dt, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    dispatch_cl(ps.channels_last, [&](auto cl) {
      constexpr bool CL = decltype(cl)::value;
      auto go = [&](auto kernel) {
        ::dc::launch(kernel, dim3(unsigned(blocks)), dim3(kThreads), 0, to_stream(stream), ps,
                     static_cast<const T*>(in), static_cast<const T*>(w),
                     static_cast<const T*>(bias), static_cast<const T*>(aux),
                     static_cast<T*>(out));
      };
      switch (ep) {
        case PwEpilogue::plain: go(pw_gemm<T, CL, 0>); break;
        case PwEpilogue::relu_grad: go(pw_gemm<T, CL, 1>); break;
        case PwEpilogue::mask_pos: go(pw_gemm<T, CL, 2>); break;
        case PwEpilogue::bias: go(pw_gemm<T, CL, 3>); break;
        case PwEpilogue::bias_relu: go(pw_gemm<T, CL, 4>); break;
      }
    });
  });
}

inline void launch_outer_sum(int n, int pixels, int rows_a, int rows_b, bool cl, DType dt,
                             const void* a, const void* b, void* gw, void* ws, void* stream) {
  const ReduceTile r = plan_reduce(n, pixels, rows_a, rows_b);
  const int count = rows_a * rows_b;
  dispatch(dt, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    using A = acc_t<T>;
    dispatch_cl(cl, [&](auto clv) {
      constexpr bool CL = decltype(clv)::value;
      ::dc::launch(outer_sum_partial<T, CL>, dim3(unsigned(r.atiles * r.btiles * r.chunks)),
                   dim3(kThreads), 0, to_stream(stream), r, static_cast<const T*>(a),
                   static_cast<const T*>(b), static_cast<A*>(ws));
    });
    ::dc::launch(reduce_chunks<T>, dim3(unsigned((count + kThreads - 1) / kThreads)),
                 dim3(kThreads), 0, to_stream(stream), static_cast<const A*>(ws), r.chunks, count,
                 static_cast<T*>(gw));
  });
}

inline void launch_channel_sum(int n, int pixels, int channels, bool cl, DType dt, const void* a,
                               void* out, void* ws, void* stream) {
  const ReduceTile r = plan_reduce(n, pixels, channels, 0);
  dispatch(dt, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    using A = acc_t<T>;
    dispatch_cl(cl, [&](auto clv) {
      constexpr bool CL = decltype(clv)::value;
      ::dc::launch(channel_sum_partial<T, CL>, dim3(unsigned(r.atiles * r.chunks)),
                   dim3(kThreads), 0, to_stream(stream), r, static_cast<const T*>(a),
                   static_cast<A*>(ws));
    });
    ::dc::launch(reduce_chunks<T>, dim3(unsigned((channels + kThreads - 1) / kThreads)),
                 dim3(kThreads), 0, to_stream(stream), static_cast<const A*>(ws), r.chunks,
                 channels, static_cast<T*>(out));
  });
}
#endif  // DC_KERNEL_BODIES

inline size_t launch_outer_sum_workspace_bytes(int n, int pixels, int rows_a, int rows_b, DType dt) {
  const ReduceTile r = plan_reduce(n, pixels, rows_a, rows_b);
  return size_t(r.chunks) * rows_a * rows_b * acc_bytes(dt);
}
inline size_t launch_channel_sum_workspace_bytes(int n, int pixels, int channels, DType dt) {
  const ReduceTile r = plan_reduce(n, pixels, channels, 0);
  return size_t(r.chunks) * channels * acc_bytes(dt);
}

}  // namespace dw
}  // namespace DC_TARGET_NS
