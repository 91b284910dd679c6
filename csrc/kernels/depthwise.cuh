// Depthwise convolution kernels (fprop, dgrad, deterministic wgrad) and the shared-memory tile
// machinery the separable kernels (separable.cuh) reuse. One source for nvcc (backend "cuda") and
// the host compiler against the CUDA emulation (backend "cuda-emu"); see platform.cuh.
//
// Design
//  * Every activation is contiguous NCHW or NHWC (the glue makes it so); 32-bit indexing.
//  * A block owns an output tile (TH x TW pixels, and for NHWC a block of CB channels). It first
//    copies the input window the tile needs (its halo, zero-filled outside the image) into shared
//    memory, so each input element is read from global memory once per tile, then computes from
//    shared memory. The tile shape is chosen on the host to minimise (window area / tile area)
//    under a 48 KiB shared-memory budget; a tile that covers whole rows makes the window one
//    contiguous range of an NCHW plane.
//  * Global accesses are organised in warp "pieces": 32 lanes reading 32 consecutive elements
//    starting at a 32-element boundary of the tensor (hence at a 128/64-byte boundary), so a warp
//    request touches the fewest sectors. Lanes whose element lies outside the wanted range still
//    execute the load (clamped to an element of the range: same sectors, value discarded): every
//    lane of a warp executes every load, as on the GPU with a converged warp, which is also what
//    the emulation's per-warp request counters assume.
//  * Weight gradients never use atomics: each block accumulates its (channel block, chunk of
//    tiles) in a fixed order into a workspace slot, and a second kernel sums the slots in order.
//    Two runs are bitwise identical.
//  * Problems whose window does not fit shared memory (huge dilation) take direct kernels that
//    read global memory per tap: correct everywhere, tiled where it matters.
#pragma once
#include "kernels/platform.cuh"
#include "kernels/depthwise_api.h"

namespace DC_TARGET_NS {
namespace dw {

using ::dc::acc_t;
using ::dc::from_acc;
using ::dc::to_acc;

inline constexpr int kThreads = 256;
inline constexpr int kWarps = kThreads / 32;
inline constexpr size_t kSmemBudget = 48 * 1024;

DC_HD int floor_div(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// Kernel-side description of a tiled launch (host fills it, see choose_* below).
struct DwTile {
  DwShape s;
  int th, tw, cb;      // tile: rows, cols (of the tile's own domain), channels per block
  int ih, iw;          // source window rows/cols held in shared memory
  int tiles_h, tiles_w, cblocks;
  int per_chunk, chunks;  // wgrad: (image, tile) items per block, number of blocks per cblock
  int relu;
};

// ---------------------------------------------------------------------------------------------
// Windows of an image in global memory.
//
// The image is laid out as src[(a * B + b) * Cd + c] from element `off0` of its tensor (a: rows,
// b: cols, c: the contiguous dimension — channels for NHWC, Cd = 1 for an NCHW plane; or, for a
// stack of NCHW planes, a: channel, b: row, c: col). A window is a in [a0,a1), b in [b0,b1),
// c in [c0,c1). Its contiguous runs ("segments") are merged: the whole window when it spans
// full inner dimensions, else one per row, else one per pixel.
//
// window_pieces calls f(e, own) once per lane per warp piece, e the element's tensor offset.
// Long segments are cut into 32-element chunks aligned to the tensor's 32-element boundaries
// (one warp request covers the fewest sectors); short segments (<= 16 elements, e.g. the
// channel block of an NHWC pixel) are packed several per piece. Every lane of a warp executes f
// for every piece of the warp (own = false: a clamped duplicate element of the same window), so
// a load can be issued by all lanes — as a converged warp does, and as the emulation's per-warp
// request counters assume.
// Strided windows (window_pieces_s / copy_window_s / for_window_s): a = a0 + sa*i for i < na,
// b = b0 + sb*j for j < nb (steps > 1: the dilation lattices of separable.cuh); runs merge only
// along unit steps.
#if DC_KERNEL_BODIES
template <typename F>
__device__ __forceinline__ void window_pieces_s(int off0, int B, int Cd, int a0, int na, int sa,
                                                int b0, int nb, int sb, int c0, int c1, F f) {
  if (na <= 0 || nb <= 0 || c0 >= c1) return;
  const bool full_c = c0 == 0 && c1 == Cd;
  const bool row_run = full_c && (sb == 1 || nb == 1);
  const bool full_b = row_run && b0 == 0 && nb == B && (sa == 1 || na == 1);
  const int nseg = full_b ? 1 : (row_run ? na : na * nb);
  const int seglen = full_b ? na * B * Cd : (row_run ? nb * Cd : c1 - c0);
  auto seg_start = [&](int seg) {
    if (full_b) return off0 + a0 * B * Cd;
    if (row_run) return off0 + ((a0 + sa * seg) * B + b0) * Cd;
    const int ia = seg / nb, ib = seg - ia * nb;
    return off0 + ((a0 + sa * ia) * B + b0 + sb * ib) * Cd + c0;
  };
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int nwarps = blockDim.x / 32;
  if (seglen <= 16) {
    int L = 1;
    while (L < seglen) L *= 2;
    const int spp = 32 / L, sub = lane / L, el = lane % L;
    const int npieces = (nseg + spp - 1) / spp;
    for (int piece = warp; piece < npieces; piece += nwarps) {
      const int seg = piece * spp + sub;
      const bool own = seg < nseg && el < seglen;
      f(seg_start(::dc::min(seg, nseg - 1)) + ::dc::min(el, seglen - 1), own);
    }
    return;
  }
  const int vch = seglen / 32 + 2;  // upper bound on 32-aligned chunks covering a segment
  for (int piece = warp; piece < nseg * vch; piece += nwarps) {
    const int seg = piece / vch, ch = piece - seg * vch;
    const int start = seg_start(seg), end = start + seglen;
    const int first = (start & ~31) + ch * 32;
    if (first >= end) continue;  // warp-uniform
    const int e = first + lane;
    const bool own = e >= start && e < end;
    f(own ? e : ::dc::min(::dc::max(e, start), end - 1), own);
  }
}

template <typename F>
__device__ __forceinline__ void window_pieces(int off0, int B, int Cd, int a0, int a1, int b0,
                                              int b1, int c0, int c1, F f) {
  window_pieces_s(off0, B, Cd, a0, a1 - a0, 1, b0, b1 - b0, 1, c0, c1, f);
}

// Decomposes a tensor offset of a window element into (a, b, c).
DC_HD void window_coords(int e, int off0, int B, int Cd, int& a, int& b, int& c) {
  int rel = e - off0;
  c = 0;
  if (Cd != 1) {
    c = rel % Cd;
    rel /= Cd;
  }
  a = rel / B;
  b = rel - a * B;
}

// Copies a window to shared memory: element (a, b, c) -> dst[(a-ra)*da + (b-rb)*db + (c-rc)*dcs].
template <typename T, typename A>
__device__ __forceinline__ void copy_window(const T* __restrict__ base, int off0, int B, int Cd,
                                            int a0, int a1, int b0, int b1, int c0, int c1,
                                            A* __restrict__ dst, int da, int db, int dcs, int ra,
                                            int rb, int rc) {
  window_pieces(off0, B, Cd, a0, a1, b0, b1, c0, c1, [&](int e, bool own) {
    const A v = to_acc(::dc::ldg(base + e));
    if (own) {
      int a, b, c;
      window_coords(e, off0, B, Cd, a, b, c);
      dst[(a - ra) * da + (b - rb) * db + (c - rc) * dcs] = v;
    }
  });
}

// Strided copy: element (a0 + sa*i, b0 + sb*j, c) -> dst[i*da + j*db + (c - c0)*dcs].
template <typename T, typename A>
__device__ __forceinline__ void copy_window_s(const T* __restrict__ base, int off0, int B, int Cd,
                                              int a0, int na, int sa, int b0, int nb, int sb,
                                              int c0, int c1, A* __restrict__ dst, int da, int db,
                                              int dcs) {
  window_pieces_s(off0, B, Cd, a0, na, sa, b0, nb, sb, c0, c1, [&](int e, bool own) {
    const A v = to_acc(::dc::ldg(base + e));
    if (own) {
      int a, b, c;
      window_coords(e, off0, B, Cd, a, b, c);
      dst[(a - a0) / sa * da + (b - b0) / sb * db + (c - c0) * dcs] = v;
    }
  });
}

// Zeroes the entries of a shared box [na][nb][nc] (strides da, db, dc) whose (row, col) =
// (a_org + ia, b_org + ib) lies outside [0,H) x [0,W). Disjoint from what copy_window writes.
template <typename A>
__device__ __forceinline__ void zero_outside(A* dst, int na, int nb, int nch, int da, int db,
                                             int dcs, int a_org, int b_org, int H, int W) {
  if (a_org >= 0 && b_org >= 0 && a_org + na <= H && b_org + nb <= W) return;
  const int total = na * nb * nch;
  for (int i = threadIdx.x; i < total; i += blockDim.x) {
    const int ic = i % nch, pix = i / nch;
    const int ia = pix / nb, ib = pix - ia * nb;
    const int a = a_org + ia, b = b_org + ib;
    if (a < 0 || a >= H || b < 0 || b >= W) dst[ia * da + ib * db + ic * dcs] = A(0);
  }
}

// for_window over a strided window (see window_pieces_s).
template <typename F>
__device__ __forceinline__ void for_window_s(int off0, int B, int Cd, int a0, int na, int sa,
                                             int b0, int nb, int sb, int c0, int c1, F f) {
  window_pieces_s(off0, B, Cd, a0, na, sa, b0, nb, sb, c0, c1, [&](int e, bool own) {
    if (!own) return;
    int a, b, c;
    window_coords(e, off0, B, Cd, a, b, c);
    f(e, a, b, c);
  });
}

// Runs f(i, a, b, c) for every element of a window (i: its tensor offset), for stores: the
// same pieces as copy_window, lanes without an element skip (a store cannot be duplicated).
template <typename F>
__device__ __forceinline__ void for_window(int off0, int B, int Cd, int a0, int a1, int b0,
                                           int b1, int c0, int c1, F f) {
  window_pieces(off0, B, Cd, a0, a1, b0, b1, c0, c1, [&](int e, bool own) {
    if (!own) return;
    int a, b, c;
    window_coords(e, off0, B, Cd, a, b, c);
    f(e, a, b, c);
  });
}

// Weights of output channels [k0, k0 + nk) of a [K, 1, R, S] tensor, stored as dst[tap*nk + j].
template <typename T, typename A>
__device__ __forceinline__ void load_dw_weights(const T* __restrict__ w, int k0, int nk, int rs,
                                                A* dst) {
  // source rows j, contiguous taps: a = j, b = tap
  copy_window(w, k0 * rs, rs, 1, 0, nk, 0, rs, 0, 1, dst, 1, nk, 0, 0, 0, 0);
}

template <typename T, typename A>
__device__ __forceinline__ void load_vec(const T* __restrict__ v, int i0, int n, A* dst) {
  copy_window(v, i0, n, 1, 0, 1, 0, n, 0, 1, dst, 0, 1, 0, 0, 0, 0);
}

// Sums a warp's values in a fixed (butterfly) order: deterministic.
template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, o);
  return v;
}

// ---------------------------------------------------------------------------------------------
// Forward, tiled. Block = (image n, channel block, output tile).
template <typename T, bool CL>
__global__ void __launch_bounds__(kThreads, 1)
    dw_fwd_tiled(DwTile t, const T* __restrict__ x, const T* __restrict__ w,
                 const T* __restrict__ bias, T* __restrict__ y) {
  using A = acc_t<T>;
  DC_DYNAMIC_SHARED(A, sm);
  const DwShape& s = t.s;
  const int ntiles = t.tiles_h * t.tiles_w;
  int b = blockIdx.x;
  const int tile = b % ntiles;
  b /= ntiles;
  const int cbk = b % t.cblocks, n = b / t.cblocks;
  const int oy0 = (tile / t.tiles_w) * t.th, ox0 = (tile % t.tiles_w) * t.tw;
  const int c0 = cbk * t.cb, nc = ::dc::min(t.cb, s.c - c0);
  const int M = s.m, K = s.c * M, RS = s.r * s.s, nk = nc * M;
  const int iy0 = oy0 * s.sh - s.ph, ix0 = ox0 * s.sw - s.pw;
  const int cs = CL ? nc : 1;  // channel stride of the window in shared memory
  A* xs = sm;                                // CL: [ih][iw][nc], else [ih][iw]
  A* ws = xs + t.ih * t.iw * t.cb;           // [RS][nk]
  A* bs = ws + RS * t.cb * M;                // [nk]
  load_dw_weights(w, c0 * M, nk, RS, ws);
  if (bias != nullptr) load_vec(bias, c0 * M, nk, bs);
  const int a0 = ::dc::max(iy0, 0), a1 = ::dc::min(iy0 + t.ih, s.h);
  const int b0 = ::dc::max(ix0, 0), b1 = ::dc::min(ix0 + t.iw, s.w);
  if (CL) {
    zero_outside(xs, t.ih, t.iw, nc, t.iw * cs, cs, 1, iy0, ix0, s.h, s.w);
    copy_window(x, n * s.h * s.w * s.c, s.w, s.c, a0, a1, b0, b1, c0, c0 + nc, xs, t.iw * cs, cs, 1,
                iy0, ix0, c0);
  } else {
    zero_outside(xs, t.ih, t.iw, 1, t.iw, 1, 0, iy0, ix0, s.h, s.w);
    copy_window(x, (n * s.c + c0) * s.h * s.w, s.w, 1, a0, a1, b0, b1, 0, 1, xs, t.iw, 1, 0, iy0,
                ix0, 0);
  }
  __syncthreads();
  const bool has_bias = bias != nullptr, relu = t.relu != 0;
  const int oy1 = ::dc::min(oy0 + t.th, s.p), ox1 = ::dc::min(ox0 + t.tw, s.q);
  if (CL) {
    // channel fastest: consecutive lanes read consecutive shared words and store contiguously
    for_window(n * s.p * s.q * K, s.q, K, oy0, oy1, ox0, ox1, c0 * M, c0 * M + nk,
               [&](int i, int oy, int ox, int k) {
                 const int j = k - c0 * M, cl = j / M;
                 A acc = has_bias ? bs[j] : A(0);
                 const A* xp = xs + ((oy - oy0) * s.sh * t.iw + (ox - ox0) * s.sw) * cs + cl;
                 for (int kr = 0; kr < s.r; ++kr)
                   for (int ks = 0; ks < s.s; ++ks)
                     acc += xp[(kr * s.dh * t.iw + ks * s.dw) * cs] * ws[(kr * s.s + ks) * nk + j];
                 if (relu) acc = acc > A(0) ? acc : A(0);
                 ::dc::store(y + i, from_acc<T>(acc));
               });
  } else {
    for (int j = 0; j < M; ++j) {
      const int k = c0 * M + j;
      for_window((n * K + k) * s.p * s.q, s.q, 1, oy0, oy1, ox0, ox1, 0, 1,
                 [&](int i, int oy, int ox, int) {
                   A acc = has_bias ? bs[j] : A(0);
                   const A* xp = xs + (oy - oy0) * s.sh * t.iw + (ox - ox0) * s.sw;
                   for (int kr = 0; kr < s.r; ++kr)
                     for (int ks = 0; ks < s.s; ++ks)
                       acc += xp[kr * s.dh * t.iw + ks * s.dw] * ws[(kr * s.s + ks) * nk + j];
                   if (relu) acc = acc > A(0) ? acc : A(0);
                   ::dc::store(y + i, from_acc<T>(acc));
                 });
    }
  }
}

// Element offset of (n, c, y, x) in a [N, C, H, W] tensor stored NCHW or NHWC.
DC_HD int offset4(bool cl, int n, int c, int y, int x, int C, int H, int W) {
  return cl ? ((n * H + y) * W + x) * C + c : ((n * C + c) * H + y) * W + x;
}

// Forward, direct (window too large for shared memory): one thread per output element.
template <typename T, bool CL>
__global__ void __launch_bounds__(kThreads, 2)
    dw_fwd_direct(DwShape s, int relu, const T* __restrict__ x, const T* __restrict__ w,
                  const T* __restrict__ bias, T* __restrict__ y) {
  using A = acc_t<T>;
  const int K = s.c * s.m;
  const int total = s.n * K * s.p * s.q;
  // 64-bit loop counter: i + grid stride may pass 2^31 near the end of a large tensor
  for (long long li = 1LL * blockIdx.x * blockDim.x + threadIdx.x; li < total;
       li += 1LL * gridDim.x * blockDim.x) {
    const int i = int(li);
    int k, oy, ox, n, r = i;
    if (CL) {
      k = r % K; r /= K; ox = r % s.q; r /= s.q; oy = r % s.p; n = r / s.p;
    } else {
      ox = r % s.q; r /= s.q; oy = r % s.p; r /= s.p; k = r % K; n = r / K;
    }
    const int c = k / s.m;
    A acc = bias != nullptr ? to_acc(::dc::ldg(bias + k)) : A(0);
    for (int kr = 0; kr < s.r; ++kr) {
      const int iy = oy * s.sh - s.ph + kr * s.dh;
      if (iy < 0 || iy >= s.h) continue;
      for (int ks = 0; ks < s.s; ++ks) {
        const int ix = ox * s.sw - s.pw + ks * s.dw;
        if (ix < 0 || ix >= s.w) continue;
        acc += to_acc(::dc::ldg(x + offset4(CL, n, c, iy, ix, s.c, s.h, s.w))) *
               to_acc(::dc::ldg(w + (k * s.r + kr) * s.s + ks));
      }
    }
    if (relu) acc = acc > A(0) ? acc : A(0);
    ::dc::store(y + i, from_acc<T>(acc));
  }
}

// One input-gradient element from the shared grad_output window (see dw_dgrad_tiled).
template <typename A, bool CL>
__device__ __forceinline__ A dgrad_point(const DwShape& s, int ih, int iw, const A* gs,
                                         const A* ws, int nk, int iy, int ix, int cl, int ybase,
                                         int xbase) {
  const int M = s.m;
  A acc = A(0);
  for (int kr = 0; kr < s.r; ++kr) {
    const int ty = iy + ybase - kr * s.dh;  // >= 0 by the choice of the window origin
    if (ty % s.sh != 0) continue;
    const int gyr = ty / s.sh;
    for (int ks = 0; ks < s.s; ++ks) {
      const int tx = ix + xbase - ks * s.dw;
      if (tx % s.sw != 0) continue;
      const int gxc = tx / s.sw;
      const A* wp = ws + (kr * s.s + ks) * nk + cl * M;
      if (CL) {
        const A* gp = gs + (gyr * iw + gxc) * nk + cl * M;
        for (int j = 0; j < M; ++j) acc += gp[j] * wp[j];
      } else {
        for (int j = 0; j < M; ++j) acc += gs[(j * ih + gyr) * iw + gxc] * wp[j];
      }
    }
  }
  return acc;
}

// ---------------------------------------------------------------------------------------------
// Input gradient, tiled. Block = (image n, channel block, tile of gx). The shared window holds
// the grad_output rows/cols [wy0, wy0 + ih) x [wx0, wx0 + iw) of the block's nk = nc*M channels.
template <typename T, bool CL>
__global__ void __launch_bounds__(kThreads, 1)
    dw_dgrad_tiled(DwTile t, const T* __restrict__ gy, const T* __restrict__ w,
                   T* __restrict__ gx) {
  using A = acc_t<T>;
  DC_DYNAMIC_SHARED(A, sm);
  const DwShape& s = t.s;
  const int ntiles = t.tiles_h * t.tiles_w;
  int b = blockIdx.x;
  const int tile = b % ntiles;
  b /= ntiles;
  const int cbk = b % t.cblocks, n = b / t.cblocks;
  const int iy0 = (tile / t.tiles_w) * t.th, ix0 = (tile % t.tiles_w) * t.tw;
  const int c0 = cbk * t.cb, nc = ::dc::min(t.cb, s.c - c0);
  const int M = s.m, K = s.c * M, RS = s.r * s.s, nk = nc * M;
  const int wy0 = floor_div(iy0 + s.ph - (s.r - 1) * s.dh, s.sh);
  const int wx0 = floor_div(ix0 + s.pw - (s.s - 1) * s.dw, s.sw);
  A* gs = sm;                          // CL: [ih][iw][nk]; else [M][ih][iw]
  A* ws = gs + t.ih * t.iw * t.cb * M;  // [RS][nk]
  load_dw_weights(w, c0 * M, nk, RS, ws);
  const int a0 = ::dc::max(wy0, 0), a1 = ::dc::min(wy0 + t.ih, s.p);
  const int b0 = ::dc::max(wx0, 0), b1 = ::dc::min(wx0 + t.iw, s.q);
  if (CL) {
    zero_outside(gs, t.ih, t.iw, nk, t.iw * nk, nk, 1, wy0, wx0, s.p, s.q);
    copy_window(gy, n * s.p * s.q * K, s.q, K, a0, a1, b0, b1, c0 * M, c0 * M + nk, gs, t.iw * nk,
                nk, 1, wy0, wx0, c0 * M);
  } else {
    for (int j = 0; j < M; ++j) {
      A* g = gs + j * t.ih * t.iw;
      zero_outside(g, t.ih, t.iw, 1, t.iw, 1, 0, wy0, wx0, s.p, s.q);
      copy_window(gy, (n * K + c0 * M + j) * s.p * s.q, s.q, 1, a0, a1, b0, b1, 0, 1, g, t.iw, 1,
                  0, wy0, wx0, 0);
    }
  }
  __syncthreads();
  const int ybase = s.ph - wy0 * s.sh, xbase = s.pw - wx0 * s.sw;  // >= (R-1)*dh - iy0 etc.
  const int iy1 = ::dc::min(iy0 + t.th, s.h), ix1 = ::dc::min(ix0 + t.tw, s.w);
  if (CL) {
    for_window(n * s.h * s.w * s.c, s.w, s.c, iy0, iy1, ix0, ix1, c0, c0 + nc,
               [&](int i, int iy, int ix, int c) {
                 ::dc::store(gx + i, from_acc<T>(dgrad_point<A, CL>(s, t.ih, t.iw, gs, ws, nk, iy,
                                                                     ix, c - c0, ybase, xbase)));
               });
  } else {
    for_window((n * s.c + c0) * s.h * s.w, s.w, 1, iy0, iy1, ix0, ix1, 0, 1,
               [&](int i, int iy, int ix, int) {
                 ::dc::store(gx + i, from_acc<T>(dgrad_point<A, CL>(s, t.ih, t.iw, gs, ws, nk, iy,
                                                                     ix, 0, ybase, xbase)));
               });
  }
}

// Input gradient, direct: one thread per gx element.
template <typename T, bool CL>
__global__ void __launch_bounds__(kThreads, 2)
    dw_dgrad_direct(DwShape s, const T* __restrict__ gy, const T* __restrict__ w,
                    T* __restrict__ gx) {
  using A = acc_t<T>;
  const int K = s.c * s.m;
  const int total = s.n * s.c * s.h * s.w;
  // 64-bit loop counter: i + grid stride may pass 2^31 near the end of a large tensor
  for (long long li = 1LL * blockIdx.x * blockDim.x + threadIdx.x; li < total;
       li += 1LL * gridDim.x * blockDim.x) {
    const int i = int(li);
    int c, iy, ix, n, r = i;
    if (CL) {
      c = r % s.c; r /= s.c; ix = r % s.w; r /= s.w; iy = r % s.h; n = r / s.h;
    } else {
      ix = r % s.w; r /= s.w; iy = r % s.h; r /= s.h; c = r % s.c; n = r / s.c;
    }
    A acc = A(0);
    for (int kr = 0; kr < s.r; ++kr) {
      const int ty = iy + s.ph - kr * s.dh;
      if (ty < 0 || ty % s.sh != 0 || ty / s.sh >= s.p) continue;
      for (int ks = 0; ks < s.s; ++ks) {
        const int tx = ix + s.pw - ks * s.dw;
        if (tx < 0 || tx % s.sw != 0 || tx / s.sw >= s.q) continue;
        for (int j = 0; j < s.m; ++j) {
          const int k = c * s.m + j;
          acc += to_acc(::dc::ldg(gy + offset4(CL, n, k, ty / s.sh, tx / s.sw, K, s.p, s.q))) *
                 to_acc(::dc::ldg(w + (k * s.r + kr) * s.s + ks));
        }
      }
    }
    ::dc::store(gx + i, from_acc<T>(acc));
  }
}

// ---------------------------------------------------------------------------------------------
// Weight gradient, tiled, stage 1. Block = (channel block, chunk of (image, tile) items). For
// each item it stages the grad_output tile and the input window in shared memory and adds the
// tile's contribution to per-(channel, tap) accumulators in shared memory, each owned by one
// thread (NHWC) or one warp (NCHW): a fixed summation order. Writes its sums to
// ws[chunk][K][R*S].
template <typename T, bool CL>
__global__ void __launch_bounds__(kThreads, 2)
    dw_wgrad_tiled(DwTile t, const T* __restrict__ gy, const T* __restrict__ x,
                   acc_t<T>* __restrict__ wsum) {
  using A = acc_t<T>;
  DC_DYNAMIC_SHARED(A, sm);
  const DwShape& s = t.s;
  const int cbk = blockIdx.x % t.cblocks, chunk = blockIdx.x / t.cblocks;
  const int c0 = cbk * t.cb, nc = ::dc::min(t.cb, s.c - c0);
  const int M = s.m, K = s.c * M, RS = s.r * s.s, nk = nc * M;
  const int npix = t.th * t.tw, npairs = nk * RS;
  const int cs = CL ? nc : 1;
  A* acc = sm;                       // [npairs]: CL [tap][nk]; else [nk][tap]
  A* gs = acc + t.cb * M * RS;       // CL: [th*tw][nk]; else [M][th*tw]
  A* xs = gs + npix * t.cb * M;      // CL: [ih][iw][nc]; else [ih][iw]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (CL) {
    for (int q = threadIdx.x; q < npairs; q += blockDim.x) acc[q] = A(0);
  } else if (lane == 0) {
    for (int q = warp; q < npairs; q += kWarps) acc[q] = A(0);
  }
  const int ntiles = t.tiles_h * t.tiles_w, items = s.n * ntiles;
  const int it0 = chunk * t.per_chunk, it1 = ::dc::min(items, it0 + t.per_chunk);
  for (int item = it0; item < it1; ++item) {
    const int n = item / ntiles, tile = item - n * ntiles;
    const int oy0 = (tile / t.tiles_w) * t.th, ox0 = (tile % t.tiles_w) * t.tw;
    const int oy1 = ::dc::min(oy0 + t.th, s.p), ox1 = ::dc::min(ox0 + t.tw, s.q);
    const int iy0 = oy0 * s.sh - s.ph, ix0 = ox0 * s.sw - s.pw;
    const int a0 = ::dc::max(iy0, 0), a1 = ::dc::min(iy0 + t.ih, s.h);
    const int b0 = ::dc::max(ix0, 0), b1 = ::dc::min(ix0 + t.iw, s.w);
    if (CL) {
      zero_outside(gs, t.th, t.tw, nk, t.tw * nk, nk, 1, oy0, ox0, s.p, s.q);
      copy_window(gy, n * s.p * s.q * K, s.q, K, oy0, oy1, ox0, ox1, c0 * M, c0 * M + nk, gs,
                  t.tw * nk, nk, 1, oy0, ox0, c0 * M);
      zero_outside(xs, t.ih, t.iw, nc, t.iw * cs, cs, 1, iy0, ix0, s.h, s.w);
      copy_window(x, n * s.h * s.w * s.c, s.w, s.c, a0, a1, b0, b1, c0, c0 + nc, xs, t.iw * cs, cs,
                  1, iy0, ix0, c0);
    } else {
      for (int j = 0; j < M; ++j) {
        A* g = gs + j * npix;
        zero_outside(g, t.th, t.tw, 1, t.tw, 1, 0, oy0, ox0, s.p, s.q);
        copy_window(gy, (n * K + c0 * M + j) * s.p * s.q, s.q, 1, oy0, oy1, ox0, ox1, 0, 1, g, t.tw,
                    1, 0, oy0, ox0, 0);
      }
      zero_outside(xs, t.ih, t.iw, 1, t.iw, 1, 0, iy0, ix0, s.h, s.w);
      copy_window(x, (n * s.c + c0) * s.h * s.w, s.w, 1, a0, a1, b0, b1, 0, 1, xs, t.iw, 1, 0, iy0,
                  ix0, 0);
    }
    __syncthreads();
    const int th = oy1 - oy0, tw = ox1 - ox0;
    if (CL) {
      for (int q = threadIdx.x; q < npairs; q += blockDim.x) {
        const int j = q % nk, tap = q / nk, kr = tap / s.s, ks = tap - kr * s.s, cl = j / M;
        A a = A(0);
        for (int py = 0; py < th; ++py) {
          const A* xr = xs + ((py * s.sh + kr * s.dh) * t.iw + ks * s.dw) * cs + cl;
          const A* gr = gs + py * t.tw * nk + j;
          for (int px = 0; px < tw; ++px) a += gr[px * nk] * xr[px * s.sw * cs];
        }
        acc[q] += a;
      }
    } else {
      for (int q = warp; q < npairs; q += kWarps) {
        const int j = q / RS, tap = q - j * RS, kr = tap / s.s, ks = tap - kr * s.s;
        const A* g = gs + j * npix;
        A a = A(0);
        for (int p = lane; p < th * tw; p += 32) {
          const int py = p / tw, px = p - py * tw;
          a += g[py * t.tw + px] * xs[(py * s.sh + kr * s.dh) * t.iw + px * s.sw + ks * s.dw];
        }
        a = warp_sum(a);
        if (lane == 0) acc[q] += a;
      }
    }
    __syncthreads();
  }
  // workspace row of this chunk: [K][RS]; the block's channels are [c0*M, c0*M + nk)
  for_window(chunk * K * RS + c0 * M * RS, 1, nk * RS, 0, 1, 0, 1, 0, nk * RS,
             [&](int i, int, int, int e) {
               const int j = e / RS, tap = e - j * RS;
               ::dc::store(wsum + i, CL ? acc[tap * nk + j] : acc[e]);
             });
}

// Stage 2: out[e] = sum over chunks of ws[chunk][e], in chunk order.
template <typename T>
__global__ void __launch_bounds__(kThreads, 2)
    reduce_chunks(const acc_t<T>* __restrict__ ws, int chunks, int count, T* __restrict__ out) {
  using A = acc_t<T>;
  const int e = blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= count) return;
  A a = A(0);
  for (int c = 0; c < chunks; ++c) a += ::dc::ldg(ws + c * count + e);
  ::dc::store(out + e, from_acc<T>(a));
}

// Weight gradient, direct: one block per (output channel, tap), fixed-order block reduction.
template <typename T, bool CL>
__global__ void __launch_bounds__(kThreads, 2)
    dw_wgrad_direct(DwShape s, const T* __restrict__ gy, const T* __restrict__ x,
                    T* __restrict__ gw) {
  using A = acc_t<T>;
  __shared__ A part[kWarps];
  const int RS = s.r * s.s, K = s.c * s.m;
  const int k = blockIdx.x / RS, tap = blockIdx.x - k * RS, kr = tap / s.s, ks = tap - kr * s.s;
  const int c = k / s.m;
  const int total = s.n * s.p * s.q;
  A a = A(0);
  for (int i = threadIdx.x; i < total; i += blockDim.x) {
    const int ox = i % s.q, oy = (i / s.q) % s.p, n = i / (s.p * s.q);
    const int iy = oy * s.sh - s.ph + kr * s.dh, ix = ox * s.sw - s.pw + ks * s.dw;
    if (iy < 0 || iy >= s.h || ix < 0 || ix >= s.w) continue;
    a += to_acc(::dc::ldg(gy + offset4(CL, n, k, oy, ox, K, s.p, s.q))) *
         to_acc(::dc::ldg(x + offset4(CL, n, c, iy, ix, s.c, s.h, s.w)));
  }
  a = warp_sum(a);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = a;
  __syncthreads();
  if (threadIdx.x == 0) {
    A sum = A(0);
    for (int i = 0; i < kWarps; ++i) sum += part[i];
    ::dc::store(gw + blockIdx.x, from_acc<T>(sum));
  }
}
#endif  // DC_KERNEL_BODIES

// ---------------------------------------------------------------------------------------------
// Host side: tile choice and launches.

inline size_t acc_bytes(DType t) { return t == DType::f64 ? 8 : 4; }
inline size_t elem_bytes(DType t) {
  return t == DType::f64 ? 8 : (t == DType::f32 ? 4 : 2);
}

// Geometry of one axis of a tiled op: output extent `out` cut into tiles; each tile reads a
// window of the source axis (extent `src`). dgrad reads grad_output windows of a gx tile.
struct AxisGeo {
  int out, src, stride, pad, dil, k;
  bool dgrad;
  int win(int t) const {
    return dgrad ? ((t - 1) + (k - 1) * dil + stride - 1) / stride + 1
                 : (t - 1) * stride + (k - 1) * dil + 1;
  }
  int origin(int o0) const {
    return dgrad ? floor_div(o0 + pad - (k - 1) * dil, stride) : o0 * stride - pad;
  }
};

// Modelled 32-byte sectors one channel group of one image reads over all its tiles of th x tw:
// the clipped windows, with `e` contiguous elements per source pixel (1 for NCHW, the channel
// block for NHWC) and `merged` when a window row is one contiguous run (NCHW, or NHWC with all
// channels). Whole-width windows merge across rows. Used to choose tiles (a model, no timing).
inline double model_sectors(const AxisGeo& gy, const AxisGeo& gx, int th, int tw, int e,
                            bool merged, size_t es) {
  const int wy = gy.win(th), wx = gx.win(tw);
  double rows = 0, colterm = 0, full_rows = 0;
  bool full_width = true;
  for (int o0 = 0; o0 < gx.out; o0 += tw) {
    const int org = gx.origin(o0);
    const int lo = ::dc::max(org, 0), hi = ::dc::min(org + wx, gx.src);
    if (hi <= lo) continue;
    full_width = full_width && lo == 0 && hi == gx.src && tw >= gx.out;
    colterm += merged ? double(hi - lo) * e * es / 32.0 + 0.5
                      : double(hi - lo) * ((e * es + 31) / 32);
  }
  for (int o0 = 0; o0 < gy.out; o0 += th) {
    const int org = gy.origin(o0);
    const int lo = ::dc::max(org, 0), hi = ::dc::min(org + wy, gy.src);
    if (hi <= lo) continue;
    rows += hi - lo;
    full_rows += double(hi - lo) * gx.src * e * es / 32.0 + 0.5;
  }
  return merged && full_width ? full_rows : rows * colterm;
}

// Tile choice common to the three ops: among the tiles whose shared-memory footprint
// `smem(th, tw, ih, iw, cb)` fits the budget, the one with the fewest modelled global sectors
// (model_sectors over the source windows, plus a per-block overhead), over tile widths (whole
// rows first) and, for NHWC, channel blocks from 32 down to one 32-byte sector. `rows`/`cols`:
// the tile domain; `mult`: source channels per block channel (M for dgrad's grad_output).
template <typename Smem>
inline bool choose_tile(const DwShape& s, DType dt, const AxisGeo& gy, const AxisGeo& gx,
                        int mult, Smem smem, DwTile& t) {
  const int rows = gy.out, cols = gx.out;
  double best = 1e300;
  int cbs[3] = {1, 0, 0};
  if (s.channels_last) {
    const int min_cb = int(32 / elem_bytes(dt));
    cbs[0] = ::dc::min(s.c, 32);
    if (s.c > min_cb) {
      cbs[1] = ::dc::max(16, min_cb);
      cbs[2] = min_cb;
    }
  }
  const size_t es = elem_bytes(dt);
  const int cand_w[] = {cols, 256, 128, 64, 32, 16, 8, 4, 2, 1};
  for (int cb : cbs) {
    if (cb <= 0) continue;
    const int max_pix = ::dc::max(64, 4096 / (cb * s.m));  // <= 16 outputs per thread
    const int cblocks = (s.c + cb - 1) / cb;
    for (int tw : cand_w) {
      if (tw > cols || tw < 1 || (tw != cols && tw > 256)) continue;
      int lo = 0, hi = ::dc::min(rows, ::dc::max(1, max_pix / tw));
      while (lo < hi) {  // largest th that fits
        const int mid = (lo + hi + 1) / 2;
        if (smem(mid, tw, gy.win(mid), gx.win(tw), cb) <= kSmemBudget)
          lo = mid;
        else
          hi = mid - 1;
      }
      if (lo == 0) continue;
      // balance rows across tiles so that the last tile is not a sliver
      const int tiles_h = (rows + lo - 1) / lo;
      const int th = (rows + tiles_h - 1) / tiles_h;
      const int tiles_w = (cols + tw - 1) / tw;
      double cost;
      if (s.channels_last)
        cost = cblocks * model_sectors(gy, gx, th, tw, cb == s.c ? s.c * mult : cb * mult,
                                       cb == s.c, es);
      else
        cost = s.c * mult * model_sectors(gy, gx, th, tw, 1, true, es);
      cost += 4.0 * tiles_h * tiles_w * cblocks;
      if (cost < best - 1e-9) {
        best = cost;
        t.th = th;
        t.tw = tw;
        t.ih = gy.win(th);
        t.iw = gx.win(tw);
        t.cb = cb;
      }
    }
  }
  if (best >= 1e300) return false;
  t.tiles_h = (rows + t.th - 1) / t.th;
  t.tiles_w = (cols + t.tw - 1) / t.tw;
  t.cblocks = (s.c + t.cb - 1) / t.cb;
  return true;
}

inline void fwd_window(const DwShape& s, int th, int tw, int& ih, int& iw) {
  ih = (th - 1) * s.sh + (s.r - 1) * s.dh + 1;
  iw = (tw - 1) * s.sw + (s.s - 1) * s.dw + 1;
}
inline AxisGeo fwd_axis_h(const DwShape& s) { return {s.p, s.h, s.sh, s.ph, s.dh, s.r, false}; }
inline AxisGeo fwd_axis_w(const DwShape& s) { return {s.q, s.w, s.sw, s.pw, s.dw, s.s, false}; }

inline bool plan_fwd(const DwShape& s, DType dt, DwTile& t) {
  t = DwTile{};
  t.s = s;
  const size_t ab = acc_bytes(dt);
  auto smem = [&](int, int, int ih, int iw, int cb) {
    return (size_t(ih) * iw * cb + size_t(s.r) * s.s * cb * s.m + size_t(cb) * s.m) * ab;
  };
  return choose_tile(s, dt, fwd_axis_h(s), fwd_axis_w(s), 1, smem, t);
}

inline bool plan_dgrad(const DwShape& s, DType dt, DwTile& t) {
  t = DwTile{};
  t.s = s;
  const size_t ab = acc_bytes(dt);
  auto smem = [&](int, int, int ih, int iw, int cb) {
    return (size_t(ih) * iw * cb * s.m + size_t(s.r) * s.s * cb * s.m) * ab;
  };
  const AxisGeo gy{s.h, s.p, s.sh, s.ph, s.dh, s.r, true}, gx{s.w, s.q, s.sw, s.pw, s.dw, s.s, true};
  return choose_tile(s, dt, gy, gx, s.m, smem, t);
}

inline bool plan_wgrad(const DwShape& s, DType dt, DwTile& t) {
  t = DwTile{};
  t.s = s;
  const size_t ab = acc_bytes(dt);
  auto smem = [&](int th, int tw, int ih, int iw, int cb) {
    return (size_t(ih) * iw * cb + size_t(th) * tw * cb * s.m + size_t(s.r) * s.s * cb * s.m) * ab;
  };
  if (!choose_tile(s, dt, fwd_axis_h(s), fwd_axis_w(s), 1, smem, t)) return false;
  // spread the (image, tile) items over enough blocks to fill a GPU, no more (fewer partials)
  const int items = s.n * t.tiles_h * t.tiles_w;
  const int want_blocks = 1024;
  const long long per_slot = 1LL * s.c * s.m * s.r * s.s;  // workspace stays int32-indexable
  const int max_chunks = int(::dc::max(1LL, (2147483647LL - 4096) / ::dc::max(1LL, per_slot)));
  const int chunks = ::dc::max(
      1, ::dc::min(::dc::min(items, max_chunks), (want_blocks + t.cblocks - 1) / t.cblocks));
  t.per_chunk = (items + chunks - 1) / chunks;
  t.chunks = items == 0 ? 0 : (items + t.per_chunk - 1) / t.per_chunk;
  return true;
}

inline size_t fwd_smem(const DwTile& t, DType dt) {
  const DwShape& s = t.s;
  return (size_t(t.ih) * t.iw * t.cb + size_t(s.r) * s.s * t.cb * s.m + size_t(t.cb) * s.m) *
         acc_bytes(dt);
}
inline size_t dgrad_smem(const DwTile& t, DType dt) {
  const DwShape& s = t.s;
  return (size_t(t.ih) * t.iw * t.cb * s.m + size_t(s.r) * s.s * t.cb * s.m) * acc_bytes(dt);
}
inline size_t wgrad_smem(const DwTile& t, DType dt) {
  const DwShape& s = t.s;
  return (size_t(t.ih) * t.iw * t.cb + size_t(t.th) * t.tw * t.cb * s.m +
          size_t(s.r) * s.s * t.cb * s.m) * acc_bytes(dt);
}

inline int direct_blocks(long long total) {
  return int(::dc::max(1LL, ::dc::min((total + kThreads - 1) / kThreads, 65535LL * 8)));
}

#if DC_KERNEL_BODIES
inline ::dc::Stream to_stream(void* stream) {
#if defined(DC_MODE_EMU)
  (void)stream;
  return ::dc::Stream{};
#else
  return static_cast<::dc::Stream>(stream);
#endif
}

// Calls f(T*) with the storage type of `dt` (dc::half etc. for the 16-bit types).
template <typename F>
inline void dispatch(DType dt, F f) {
  switch (dt) {
    case DType::f32: f(static_cast<float*>(nullptr)); break;
    case DType::f64: f(static_cast<double*>(nullptr)); break;
    case DType::f16: f(static_cast<::dc::half*>(nullptr)); break;
    case DType::bf16: f(static_cast<::dc::bfloat16*>(nullptr)); break;
  }
}

template <typename F>
inline void dispatch_cl(bool cl, F f) {
  if (cl)
    f(std::true_type{});
  else
    f(std::false_type{});
}

#endif  // DC_KERNEL_BODIES

}  // namespace dw
}  // namespace DC_TARGET_NS
