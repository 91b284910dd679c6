// Implicit-GEMM convolution: fprop (conv2d), dgrad (conv2d_input_grad, and conv_transpose2d,
// which is the same gather plus a bias) and wgrad (conv2d_weight_grad), dense and grouped, any
// kernel size / stride / padding / dilation. No im2col buffer exists anywhere: the operand tiles
// are gathered from the activation tensors straight into shared memory, and dilation, stride and
// padding live only in the address computation of that gather (so a dilated conv costs the same
// as an undilated one of the same FLOPs).
//
// GEMM views (per group g; "pixel" = (n, y, x)):
//   fprop  C[m = out pixel][co] = sum_{r,s,cr} X[pixel(m) * stride - pad + (r,s)*dil][g*CR+cr] * W[g][r][s][cr][co]
//   dgrad  C[m = in pixel ][c ] = sum_{r,s,k } DY[(pixel(m) + pad - (r,s)*dil) / stride][g*K/g+k] * W[g][r][s][k][c]
//          (a gather, no atomics. With stride > 1 the grid runs one slice per output phase
//          (y mod stride, x mod stride); within a phase exactly the taps of an arithmetic
//          progression reach the input, and the K loop runs over those only: no MACs on the
//          zeros a naive strided gather multiplies)
//   wgrad  C[k][(r,s,cr)] = sum_{npq} DY[npq][g*K/g+k] * X[pixel(npq) * stride - pad + (r,s)*dil][g*CR+cr]
// fprop and dgrad share one kernel (igemm_conv_kernel<.., DGRAD>), whose K loop runs over
// (r, s, channel chunk); wgrad has its own (igemm_wgrad_kernel), whose K loop runs over N*P*Q.
//
// Groups are grid dimension z. When a group's output channels fill the N tile (or the tensor-core
// path runs), a CTA computes one group (blockIdx.y walks its output-channel tiles). When they do
// not (ResNeXt: 4-8 channels per group), a CTA packs `gt` whole groups side by side in its N tile:
// the A tile then holds gt channel slices (contiguous in channels_last memory), each thread's
// TN columns belong to one group and it reads only that group's slice, so no FLOPs are spent on
// the zero blocks of the block-diagonal weight.
//
// Layouts: every operand is addressed through its four element strides, so NCHW, channels_last
// and strided views all run without a transposing copy. The tile loaders pick their thread
// mapping from the strides: channels fastest when the channel stride is 1 (channels_last; 16-byte
// vector copies when the channel counts and alignment allow), pixels fastest otherwise (NCHW:
// consecutive threads read consecutive x). The epilogue stages the accumulator tile in shared
// memory and writes it out with the mapping that is coalesced for the output's layout. The weight
// operand is read through (g, k, c, r, s) strides; the ATen glue passes it permuted to
// [g][r][s][reduction][output] (a weight-sized copy, as cuDNN's NHWC path also makes) so the B
// tile loads are coalesced 16-byte vectors.
//
// Pipelining: STAGES shared-memory buffers filled with dc::cp_async (cp.async with zero fill on
// sm_80+; synchronous in the emulation), one __syncthreads per K step.
// Kernel selection (select_conv_config, below): fp64 SIMT; fp16/bf16 with >= 32 output and >= 16
// reduction channels per group on tensor cores (128x64 tiles, 64x64 when the 128-row grid would
// leave an H100 with < 2 CTAs per SM); grouped convs with <= 32 output channels per group on the
// packing SIMT tile; the rest SIMT 64x64. A 1x1 conv is the plain GEMM case of the same kernel
// (one tap, K loop over channel chunks, no halo). Loads that cannot be 16-byte vectors (NCHW,
// odd channel counts) switch to a sibling tile with at most 8 scalar loads per thread so the
// per-load address state stays in registers. Depthwise conv2d ops never get here (the ATen glue
// sends them to the depthwise kernels); depthwise *transposed* convs do, as packed groups.
// dilconv.autotune can replace the backend choice per shape.
// Tensor cores: fp16/bf16 with fp32 accumulation through dc::wmma 16x16x16 fragments; fp32 and
// fp64 run the SIMT path (register-blocked TM x TN outer products).
//
// wgrad is deterministic: split-K over N*P*Q into `splits` CTAs per output tile, each writing its
// fp32 partial tile to a workspace, then a second kernel sums the splits in a fixed order. The
// split count is a function of the shape only, so results are bitwise reproducible run to run.
//
// Offsets are 32-bit: the launchers throw std::invalid_argument unless every tensor's largest
// element offset fits in int32 (the ATen glue makes a contiguous copy first when it does not).
#pragma once

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/platform.cuh"
#include "kernels/gemm_api.h"

#if !defined(__CUDACC__)
#pragma GCC diagnostic ignored "-Wunknown-pragmas"  // `#pragma unroll` is for nvcc
#endif

#if DC_KERNEL_BODIES
#include "kernels/cp_async.cuh"
#endif

// Tensor cores through dc::wmma (csrc/kernels/wmma.cuh: nvcuda::wmma under nvcc, emulated
// fragments in the emulation). Until that header exists the emulation builds SIMT-only.
// The host-only glue mode must agree with nvcc (workspace sizes depend on the config choice).
#if defined(DC_MODE_EMU)
#if __has_include("kernels/wmma.cuh")
#include "kernels/wmma.cuh"
#define DC_IGEMM_WMMA 1
#else
#define DC_IGEMM_WMMA 0
#endif
#else
#define DC_IGEMM_WMMA 1
#if defined(__CUDACC__)
#if __has_include("kernels/wmma.cuh")
#include "kernels/wmma.cuh"
#else
#include <mma.h>
namespace dc {
namespace wmma = nvcuda::wmma;
}
#endif
#endif
#endif

namespace DC_TARGET_NS {
namespace igemm {

// The public host API (shapes, tensor views, config ids, type-erased entry points) is in
// kernels/gemm_api.h; the templates below implement it.

template <typename T>
int conv_configs(int* out, int cap);
template <typename T>
void fprop(const ConvShape& sh, Act x, Wt w, const void* bias, Act y, dc::Stream stream,
           int config = kAuto);
template <typename T>
void dgrad(const ConvShape& sh, Act dy, Wt w, const void* bias, Act dx, dc::Stream stream,
           int config = kAuto);
template <typename T>
size_t wgrad_workspace_bytes(const ConvShape& sh);
template <typename T>
void wgrad(const ConvShape& sh, Act dy, Act x, void* dw, const int64_t dw_s[4], void* workspace,
           size_t workspace_bytes, dc::Stream stream);
template <typename T>
int select_conv_config(const ConvShape& sh, bool dgrad);
int wgrad_splits(const ConvShape& sh, int bm, int bn, int bk);

// ---------------------------------------------------------------------------------------------
// numeric helpers

using dc::acc_t;
using dc::from_acc;
using dc::to_acc;

template <typename T>
constexpr bool is_16bit() {
  return sizeof(T) == 2;
}

// ---------------------------------------------------------------------------------------------
// tile configurations

// SIMT: THREADS = (BM/TM)*(BN/TN) threads, each computing TM x TN outputs. The A tile is
// BM x BKA (pixels x channels of up to BKA/kc packed groups), the B tile BKB x BN.
template <int BM_, int BN_, int BKA_, int BKB_, int TM_, int TN_, int STAGES_>
struct SimtTile {
  static constexpr int BM = BM_, BN = BN_, BKA = BKA_, BKB = BKB_, TM = TM_, TN = TN_;
  static constexpr int STAGES = STAGES_;
  static constexpr int THREADS = (BM / TM) * (BN / TN);
  static constexpr bool WMMA = false;
  static constexpr int WM = 0, WN = 0;
};

// Tensor cores: warps of WM x WN (multiples of 16) cover BM x BN; K step BK (multiple of 16).
template <int BM_, int BN_, int BK_, int WM_, int WN_, int STAGES_>
struct WmmaTile {
  static constexpr int BM = BM_, BN = BN_, BKA = BK_, BKB = BK_, TM = 0, TN = 0;
  static constexpr int STAGES = STAGES_;
  static constexpr int THREADS = (BM / WM_) * (BN / WN_) * 32;
  static constexpr bool WMMA = true;
  static constexpr int WM = WM_, WN = WN_;
};

using TileSimt64 = SimtTile<64, 64, 16, 16, 4, 4, 3>;
using TileSimtNarrow = SimtTile<64, 64, 64, 8, 4, 4, 2>;
using TileSimtNarrowScalar = SimtTile<64, 64, 32, 8, 4, 4, 2>;
using TileWmma128 = WmmaTile<128, 64, 32, 32, 32, 3>;
using TileWmma64 = WmmaTile<64, 64, 32, 32, 32, 3>;
using TileWmma64Scalar = WmmaTile<64, 64, 16, 32, 32, 3>;  // scalar loads: 8 per thread
using TileSimt64Double = SimtTile<64, 64, 16, 16, 4, 4, 2>;
// wgrad: M = output channels of a group, N = (r, s, c), K = N*P*Q (BKA = BKB = K step)
using TileWgradSimt = SimtTile<64, 64, 16, 16, 4, 4, 3>;
using TileWgradSimtDouble = SimtTile<64, 64, 16, 16, 4, 4, 2>;
using TileWgradWmma = WmmaTile<64, 64, 32, 32, 32, 3>;

// 16 bytes of padding per shared-memory row: keeps 16-byte cp.async destinations and WMMA
// pointers aligned and spreads rows over the banks.
template <typename T>
constexpr int kPad = 16 / int(sizeof(T));

template <typename T, typename Tile>
struct ConvSmem {
  static constexpr int LDA = Tile::BKA + kPad<T>;                       // A: [BM][LDA]
  static constexpr int LDB = Tile::BN + kPad<T>;                        // B: [BKB][LDB]
  static constexpr int LDC = Tile::BN + 16 / int(sizeof(acc_t<T>));     // C: [BM][LDC] (acc)
  static constexpr int A_ELEMS = Tile::BM * LDA;
  static constexpr int B_ELEMS = Tile::BKB * LDB;
  static constexpr size_t PIPE = size_t(Tile::STAGES) * (A_ELEMS + B_ELEMS) * sizeof(T);
  static constexpr size_t EPI = size_t(Tile::BM) * LDC * sizeof(acc_t<T>);
  // WMMA pointers must be 32-byte aligned; dynamic shared memory is only guaranteed 16 (the
  // emulation's buffer), so tensor-core tiles ask for slack and align the base themselves
  static constexpr size_t SLACK = Tile::WMMA ? 128 : 0;
  static constexpr size_t BYTES = (PIPE > EPI ? PIPE : EPI) + SLACK;
  static_assert(BYTES <= 48 * 1024, "keep tiles within 48 KiB: 2+ CTAs per SM");
};

template <typename T, typename Tile>
struct WgradSmem {
  static constexpr int BK = Tile::BKA;
  static constexpr int LDA = Tile::BM + kPad<T>;  // A: [BK][LDA] (dy: npq x k)
  static constexpr int LDB = Tile::BN + kPad<T>;  // B: [BK][LDB] (x: npq x (r,s,c))
  static constexpr int LDC = Tile::BN + 16 / int(sizeof(acc_t<T>));
  static constexpr int A_ELEMS = BK * LDA;
  static constexpr int B_ELEMS = BK * LDB;
  static constexpr size_t PIPE = size_t(Tile::STAGES) * (A_ELEMS + B_ELEMS) * sizeof(T);
  static constexpr size_t EPI = size_t(Tile::BM) * LDC * sizeof(acc_t<T>);
  // WMMA pointers must be 32-byte aligned; dynamic shared memory is only guaranteed 16 (the
  // emulation's buffer), so tensor-core tiles ask for slack and align the base themselves
  static constexpr size_t SLACK = Tile::WMMA ? 128 : 0;
  static constexpr size_t BYTES = (PIPE > EPI ? PIPE : EPI) + SLACK;
  static_assert(BYTES <= 48 * 1024, "keep tiles within 48 KiB: 2+ CTAs per SM");
};

// ---------------------------------------------------------------------------------------------
// fprop / dgrad kernel

struct ConvParams {
  const void* a;  // activation operand (fprop: x, dgrad: dy)
  int a_sn, a_sc, a_sh, a_sw, ah, aw;
  const void* b;  // weight operand: element (g, r, s, cr, co)
  int b_sg, b_sco, b_scr, b_sr, b_ss;
  const void* bias;  // [groups * co] or null
  void* out;
  int o_sn, o_sc, o_sh, o_sw;
  int batch, oh, ow, m;  // output pixel grid, m = batch*oh*ow
  int cr, co, groups;    // reduction / output channels per group
  int r, s, sh, sw, ph, pw, dh, dw;
  int gt;       // groups per CTA (1 unless packing narrow groups)
  int cw;       // packed: N-tile columns per group (co rounded up to TN)
  int kc;       // reduction channels per group per K step
  int nchunks;  // ceil(cr / kc)
  int cl;       // A loader: 1 = channels fastest, 0 = pixels fastest
  int cl_out;   // epilogue: 1 = channels fastest, 0 = pixels fastest
};

#if DC_KERNEL_BODIES
// Taps t in [0, taps) with (base - t * dil) divisible by stride: first (-1 if none), step, count.
__device__ __forceinline__ void tap_progression(int base, int dil, int stride, int taps, int& first,
                                                int& step, int& count) {
  int a = dil, b = stride;
  while (b) {
    const int t = a % b;
    a = b;
    b = t;
  }
  step = stride / a;
  first = -1;
  for (int t = 0; t < step && t < taps; ++t)
    if ((base - t * dil) % stride == 0) {
      first = t;
      break;
    }
  count = first < 0 ? 0 : (taps - first + step - 1) / step;
  if (first < 0) first = 0;
}

template <typename T, bool DGRAD, typename Tile, int V>
__global__ void __launch_bounds__(Tile::THREADS, 2)
    igemm_conv_kernel(ConvParams p) {
  constexpr int BM = Tile::BM, BN = Tile::BN, BKA = Tile::BKA, BKB = Tile::BKB;
  constexpr int ST = Tile::STAGES, THREADS = Tile::THREADS;
  using S = ConvSmem<T, Tile>;
  constexpr int LDA = S::LDA, LDB = S::LDB, LDC = S::LDC;
  constexpr int TOTAL_A = BM * BKA / V, NA = (TOTAL_A + THREADS - 1) / THREADS;
  constexpr int TOTAL_B = BKB * BN / V, NB = (TOTAL_B + THREADS - 1) / THREADS;
  using Acc = acc_t<T>;

  // dynamic shared memory (S::BYTES, passed by the launcher): in the emulation an exact-size
  // buffer, so AddressSanitizer sees any tile index that leaves it
  DC_DYNAMIC_SHARED(unsigned char, smem_dyn);
  constexpr uintptr_t kAlign = S::SLACK ? S::SLACK : 1;
  unsigned char* const smem_raw = reinterpret_cast<unsigned char*>(
      (reinterpret_cast<uintptr_t>(smem_dyn) + kAlign - 1) / kAlign * kAlign);
  T* const smA = reinterpret_cast<T*>(smem_raw);
  T* const smB = smA + ST * S::A_ELEMS;

  const T* A = static_cast<const T*>(p.a);
  const T* B = static_cast<const T*>(p.b);
  const int tid = threadIdx.x;
  const int m0 = blockIdx.x * BM;
  const int co0 = blockIdx.y * BN;  // p.gt == 1 whenever gridDim.y > 1

  // dgrad is computed per output phase (y mod stride_h, x mod stride_w): within a phase the
  // filter taps that reach an input pixel are the same for every pixel, an arithmetic
  // progression r0, r0 + rstep, ... (rstep = stride / gcd(stride, dilation)), so no K step is
  // spent on taps that land between the strided samples. fprop: one phase, every tap.
  int py = 0, px = 0, zi = blockIdx.z;
  int oh = p.oh, ow = p.ow, r0 = 0, rstep = 1, nr = p.r, s0 = 0, sstep = 1, ns = p.s;
  if constexpr (DGRAD) {
    const int nph = p.sh * p.sw, ph = int(blockIdx.z) % nph;
    zi = int(blockIdx.z) / nph;
    py = ph / p.sw;
    px = ph - py * p.sw;
    oh = (p.oh - py + p.sh - 1) / p.sh;
    ow = (p.ow - px + p.sw - 1) / p.sw;
    tap_progression(py + p.ph, p.dh, p.sh, p.r, r0, rstep, nr);
    tap_progression(px + p.pw, p.dw, p.sw, p.s, s0, sstep, ns);
  }
  const int pq = oh * ow, mp = p.batch * pq;  // this phase's pixels
  if (m0 >= mp) return;                       // uniform over the block, before any barrier
  const int g0 = zi * p.gt;

  // Per-thread loader state: which tile elements this thread copies never changes across K
  // steps, so pixel decoding (two divisions) happens once, here.
  int a_soff[NA], a_pix[NA], a_y[NA], a_x[NA], a_ch[NA], a_cc[NA];
#pragma unroll
  for (int i = 0; i < NA; ++i) {
    const int idx = tid + i * THREADS;
    int row, col;
    if (p.cl) {
      row = idx / (BKA / V);
      col = (idx % (BKA / V)) * V;
    } else {
      row = idx % BM;
      col = idx / BM;
    }
    a_soff[i] = (TOTAL_A % THREADS == 0 || idx < TOTAL_A) ? row * LDA + col : -1;
    const int m = m0 + row;
    const int n = m / pq, rem = m - n * pq;
    const int y = rem / ow, x = rem - y * ow;
    a_pix[i] = m < mp ? n * p.a_sn : -1;
    a_y[i] = DGRAD ? py + y * p.sh + p.ph : y * p.sh - p.ph;
    a_x[i] = DGRAD ? px + x * p.sw + p.pw : x * p.sw - p.pw;
    const int gl = col / p.kc;
    a_cc[i] = col - gl * p.kc;
    a_ch[i] = (gl < p.gt && g0 + gl < p.groups) ? (g0 + gl) * p.cr + a_cc[i] : -1;
  }
  int b_soff[NB], b_off[NB], b_kk[NB];
#pragma unroll
  for (int i = 0; i < NB; ++i) {
    const int idx = tid + i * THREADS;
    const int kk = idx / (BN / V), n = (idx % (BN / V)) * V;
    b_soff[i] = (TOTAL_B % THREADS == 0 || idx < TOTAL_B) ? kk * LDB + n : -1;
    int gl, coi;
    if (p.gt == 1) {
      gl = 0;
      coi = co0 + n;
    } else {
      gl = n / p.cw;
      coi = n - gl * p.cw;
    }
    const bool ok = gl < p.gt && g0 + gl < p.groups && coi < p.co;
    b_off[i] = ok ? (g0 + gl) * p.b_sg + coi * p.b_sco + kk * p.b_scr : -1;
    b_kk[i] = kk;
  }

  const int nsteps = nr * ns * p.nchunks;
  auto load_stage = [&](int stage, int step) {
    const int rs = step / p.nchunks;
    const int c0 = (step - rs * p.nchunks) * p.kc;
    const int ri = rs / ns;
    const int r = r0 + ri * rstep, s = s0 + (rs - ri * ns) * sstep;
    T* As = smA + stage * S::A_ELEMS;
    T* Bs = smB + stage * S::B_ELEMS;
#pragma unroll
    for (int i = 0; i < NA; ++i) {
      if (a_soff[i] < 0) continue;
      bool v = a_pix[i] >= 0 && a_ch[i] >= 0 && c0 + a_cc[i] < p.cr;
      int iy, ix;
      if constexpr (DGRAD) {
        const int ty = a_y[i] - r * p.dh, tx = a_x[i] - s * p.dw;
        iy = ty / p.sh;
        ix = tx / p.sw;
        v = v && ty >= 0 && tx >= 0 && iy * p.sh == ty && ix * p.sw == tx && iy < p.ah && ix < p.aw;
      } else {
        iy = a_y[i] + r * p.dh;
        ix = a_x[i] + s * p.dw;
        v = v && unsigned(iy) < unsigned(p.ah) && unsigned(ix) < unsigned(p.aw);
      }
      const T* src = v ? A + (a_pix[i] + iy * p.a_sh + ix * p.a_sw + (a_ch[i] + c0) * p.a_sc) : A;
      dc::cp_async<V * int(sizeof(T))>(As + a_soff[i], src, v);
    }
#pragma unroll
    for (int i = 0; i < NB; ++i) {
      if (b_soff[i] < 0) continue;
      const bool v = b_off[i] >= 0 && b_kk[i] < p.kc && c0 + b_kk[i] < p.cr;
      const T* src = v ? B + (b_off[i] + r * p.b_sr + s * p.b_ss + c0 * p.b_scr) : B;
      dc::cp_async<V * int(sizeof(T))>(Bs + b_soff[i], src, v);
    }
  };

  // prologue: STAGES-1 tiles in flight
#pragma unroll
  for (int st = 0; st < ST - 1; ++st) {
    if (st < nsteps) load_stage(st, st);
    dc::cp_async_commit();
  }

  Acc* smC = reinterpret_cast<Acc*>(smem_raw);
#if DC_IGEMM_WMMA
  if constexpr (Tile::WMMA) {
    namespace wm = dc::wmma;
    constexpr int WM = Tile::WM, WN = Tile::WN, FM = WM / 16, FN = WN / 16;
    const int warp = tid / 32;
    const int wn = warp % (BN / WN), wmi = warp / (BN / WN);
    wm::fragment<wm::accumulator, 16, 16, 16, float> c[FM][FN];
#pragma unroll
    for (int i = 0; i < FM; ++i)
#pragma unroll
      for (int j = 0; j < FN; ++j) wm::fill_fragment(c[i][j], 0.0f);
    for (int step = 0; step < nsteps; ++step) {
      dc::cp_async_wait<ST - 2>();
      __syncthreads();
      if (step + ST - 1 < nsteps) load_stage((step + ST - 1) % ST, step + ST - 1);
      dc::cp_async_commit();
      const T* As = smA + (step % ST) * S::A_ELEMS;
      const T* Bs = smB + (step % ST) * S::B_ELEMS;
      for (int k16 = 0; k16 < p.kc; k16 += 16) {
        wm::fragment<wm::matrix_a, 16, 16, 16, T, wm::row_major> fa[FM];
        wm::fragment<wm::matrix_b, 16, 16, 16, T, wm::row_major> fb[FN];
#pragma unroll
        for (int i = 0; i < FM; ++i) wm::load_matrix_sync(fa[i], As + (wmi * WM + i * 16) * LDA + k16, LDA);
#pragma unroll
        for (int j = 0; j < FN; ++j) wm::load_matrix_sync(fb[j], Bs + k16 * LDB + wn * WN + j * 16, LDB);
#pragma unroll
        for (int i = 0; i < FM; ++i)
#pragma unroll
          for (int j = 0; j < FN; ++j) wm::mma_sync(c[i][j], fa[i], fb[j], c[i][j]);
      }
    }
    dc::cp_async_wait<0>();
    __syncthreads();  // the pipeline buffers become the C staging tile
#pragma unroll
    for (int i = 0; i < FM; ++i)
#pragma unroll
      for (int j = 0; j < FN; ++j)
        wm::store_matrix_sync(smC + (wmi * WM + i * 16) * LDC + wn * WN + j * 16, c[i][j], LDC,
                              wm::mem_row_major);
  } else
#endif
  {
    static_assert(!Tile::WMMA, "tensor-core tile without dc::wmma");
    constexpr int TM = Tile::TM, TN = Tile::TN, NT = BN / TN;
    const int tn = tid % NT, tm = tid / NT;
    Acc acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) acc[i][j] = Acc(0);
    // the thread's TN columns lie in one group's slot (slots are cw = co rounded up to TN wide)
    const int my_gl = p.gt > 1 ? (tn * TN) / p.cw : 0;
    const bool active = my_gl < p.gt;
    const int acol = my_gl * p.kc;
    for (int step = 0; step < nsteps; ++step) {
      dc::cp_async_wait<ST - 2>();
      __syncthreads();
      if (step + ST - 1 < nsteps) load_stage((step + ST - 1) % ST, step + ST - 1);
      dc::cp_async_commit();
      if (!active) continue;
      const T* As = smA + (step % ST) * S::A_ELEMS + (tm * TM) * LDA + acol;
      const T* Bs = smB + (step % ST) * S::B_ELEMS + tn * TN;
      for (int kk = 0; kk < p.kc; ++kk) {
        Acc a[TM], b[TN];
#pragma unroll
        for (int i = 0; i < TM; ++i) a[i] = to_acc(As[i * LDA + kk]);
#pragma unroll
        for (int j = 0; j < TN; ++j) b[j] = to_acc(Bs[kk * LDB + j]);
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
          for (int j = 0; j < TN; ++j) acc[i][j] += a[i] * b[j];
      }
    }
    dc::cp_async_wait<0>();
    __syncthreads();  // the pipeline buffers become the C staging tile
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) smC[(tm * TM + i) * LDC + tn * TN + j] = acc[i][j];
  }
  __syncthreads();

  // epilogue: + bias, convert, store with the output layout's coalesced mapping
  T* out = static_cast<T*>(p.out);
  const T* bias = static_cast<const T*>(p.bias);
  for (int e = tid; e < BM * BN; e += THREADS) {
    int row, col;
    if (p.cl_out) {
      row = e / BN;
      col = e - row * BN;
    } else {
      col = e / BM;
      row = e - col * BM;
    }
    const int m = m0 + row;
    if (m >= mp) continue;
    int gl, coi;
    if (p.gt == 1) {
      gl = 0;
      coi = co0 + col;
    } else {
      gl = col / p.cw;
      coi = col - gl * p.cw;
    }
    if (gl >= p.gt || g0 + gl >= p.groups || coi >= p.co) continue;
    const int ch = (g0 + gl) * p.co + coi;
    Acc v = smC[row * LDC + col];
    if (bias) v += to_acc(dc::load(bias + ch));
    const int n = m / pq, rem = m - n * pq;
    int y = rem / ow, x = rem - y * ow;
    if constexpr (DGRAD) {
      y = py + y * p.sh;
      x = px + x * p.sw;
    }
    dc::store(out + (n * p.o_sn + y * p.o_sh + x * p.o_sw + ch * p.o_sc), from_acc<T>(v));
  }
}

#endif  // DC_KERNEL_BODIES

// ---------------------------------------------------------------------------------------------
// wgrad kernel

struct WgradParams {
  const void* dy;
  int d_sn, d_sc, d_sh, d_sw;
  const void* x;
  int x_sn, x_sc, x_sh, x_sw, xh, xw;
  void* dw;  // [groups*co][cr][r][s] by element strides
  int w_sk, w_sc, w_sr, w_ss;
  void* ws;  // [splits][groups*co][ncols] partial sums (acc type) when splits > 1
  int batch, oh, ow, npq;
  int co, cr, groups, r, s, sh, sw, ph, pw, dh, dw_;
  int ncols;  // cr*r*s, column j = (r*s_ + s)*cr + c
  int splits, npq_per_split;
  int cl_a, cl_b;  // loader mappings: 1 = channels fastest
};

#if DC_KERNEL_BODIES
template <typename T, typename Tile, int V>
__global__ void __launch_bounds__(Tile::THREADS, 2)
    igemm_wgrad_kernel(WgradParams p) {
  constexpr int BM = Tile::BM, BN = Tile::BN, ST = Tile::STAGES, THREADS = Tile::THREADS;
  using S = WgradSmem<T, Tile>;
  constexpr int BK = S::BK, LDA = S::LDA, LDB = S::LDB, LDC = S::LDC;
  constexpr int TOTAL_A = BK * BM / V, NA = (TOTAL_A + THREADS - 1) / THREADS;
  constexpr int TOTAL_B = BK * BN / V, NB = (TOTAL_B + THREADS - 1) / THREADS;
  using Acc = acc_t<T>;

  // dynamic shared memory (S::BYTES, passed by the launcher): in the emulation an exact-size
  // buffer, so AddressSanitizer sees any tile index that leaves it
  DC_DYNAMIC_SHARED(unsigned char, smem_dyn);
  constexpr uintptr_t kAlign = S::SLACK ? S::SLACK : 1;
  unsigned char* const smem_raw = reinterpret_cast<unsigned char*>(
      (reinterpret_cast<uintptr_t>(smem_dyn) + kAlign - 1) / kAlign * kAlign);
  T* const smA = reinterpret_cast<T*>(smem_raw);
  T* const smB = smA + ST * S::A_ELEMS;

  const T* DY = static_cast<const T*>(p.dy);
  const T* X = static_cast<const T*>(p.x);
  const int tid = threadIdx.x;
  const int j0 = blockIdx.x * BN, m0 = blockIdx.y * BM;
  const int g = blockIdx.z % p.groups, split = blockIdx.z / p.groups;
  const int k_begin = split * p.npq_per_split;
  const int k_end = p.npq < k_begin + p.npq_per_split ? p.npq : k_begin + p.npq_per_split;
  const int nsteps = (k_end - k_begin + BK - 1) / BK;
  const int pq = p.oh * p.ow;

  int a_soff[NA], a_ch[NA], a_kk[NA];
#pragma unroll
  for (int i = 0; i < NA; ++i) {
    const int idx = tid + i * THREADS;
    int kk, mm;
    if (p.cl_a) {
      kk = idx / (BM / V);
      mm = (idx % (BM / V)) * V;
    } else {
      kk = idx % BK;
      mm = idx / BK;
    }
    a_soff[i] = (TOTAL_A % THREADS == 0 || idx < TOTAL_A) ? kk * LDA + mm : -1;
    a_ch[i] = m0 + mm < p.co ? (g * p.co + m0 + mm) * p.d_sc : -1;
    a_kk[i] = kk;
  }
  int b_soff[NB], b_ch[NB], b_ry[NB], b_rx[NB], b_kk[NB];
#pragma unroll
  for (int i = 0; i < NB; ++i) {
    const int idx = tid + i * THREADS;
    int kk, jj;
    if (p.cl_b) {
      kk = idx / (BN / V);
      jj = (idx % (BN / V)) * V;
    } else {
      kk = idx % BK;
      jj = idx / BK;
    }
    b_soff[i] = (TOTAL_B % THREADS == 0 || idx < TOTAL_B) ? kk * LDB + jj : -1;
    const int j = j0 + jj;
    const int rs = j / p.cr, c = j - rs * p.cr;
    const int r = rs / p.s, s = rs - r * p.s;
    b_ch[i] = j < p.ncols ? (g * p.cr + c) * p.x_sc : -1;
    b_ry[i] = r * p.dh - p.ph;
    b_rx[i] = s * p.dw_ - p.pw;
    b_kk[i] = kk;
  }

  auto load_stage = [&](int stage, int step) {
    const int k0 = k_begin + step * BK;
    T* As = smA + stage * S::A_ELEMS;
    T* Bs = smB + stage * S::B_ELEMS;
#pragma unroll
    for (int i = 0; i < NA; ++i) {
      if (a_soff[i] < 0) continue;
      const int npq = k0 + a_kk[i];
      const bool v = a_ch[i] >= 0 && npq < k_end;
      const int n = npq / pq, rem = npq - n * pq;
      const int y = rem / p.ow, x = rem - y * p.ow;
      const T* src = v ? DY + (n * p.d_sn + y * p.d_sh + x * p.d_sw + a_ch[i]) : DY;
      dc::cp_async<V * int(sizeof(T))>(As + a_soff[i], src, v);
    }
#pragma unroll
    for (int i = 0; i < NB; ++i) {
      if (b_soff[i] < 0) continue;
      const int npq = k0 + b_kk[i];
      const int n = npq / pq, rem = npq - n * pq;
      const int y = rem / p.ow, x = rem - y * p.ow;
      const int iy = y * p.sh + b_ry[i], ix = x * p.sw + b_rx[i];
      const bool v = b_ch[i] >= 0 && npq < k_end && unsigned(iy) < unsigned(p.xh) &&
                     unsigned(ix) < unsigned(p.xw);
      const T* src = v ? X + (n * p.x_sn + iy * p.x_sh + ix * p.x_sw + b_ch[i]) : X;
      dc::cp_async<V * int(sizeof(T))>(Bs + b_soff[i], src, v);
    }
  };

#pragma unroll
  for (int st = 0; st < ST - 1; ++st) {
    if (st < nsteps) load_stage(st, st);
    dc::cp_async_commit();
  }

  Acc* smC = reinterpret_cast<Acc*>(smem_raw);
#if DC_IGEMM_WMMA
  if constexpr (Tile::WMMA) {
    namespace wm = dc::wmma;
    constexpr int WM = Tile::WM, WN = Tile::WN, FM = WM / 16, FN = WN / 16;
    const int warp = tid / 32;
    const int wn = warp % (BN / WN), wmi = warp / (BN / WN);
    wm::fragment<wm::accumulator, 16, 16, 16, float> c[FM][FN];
#pragma unroll
    for (int i = 0; i < FM; ++i)
#pragma unroll
      for (int j = 0; j < FN; ++j) wm::fill_fragment(c[i][j], 0.0f);
    for (int step = 0; step < nsteps; ++step) {
      dc::cp_async_wait<ST - 2>();
      __syncthreads();
      if (step + ST - 1 < nsteps) load_stage((step + ST - 1) % ST, step + ST - 1);
      dc::cp_async_commit();
      const T* As = smA + (step % ST) * S::A_ELEMS;
      const T* Bs = smB + (step % ST) * S::B_ELEMS;
#pragma unroll
      for (int k16 = 0; k16 < BK; k16 += 16) {
        wm::fragment<wm::matrix_a, 16, 16, 16, T, wm::col_major> fa[FM];
        wm::fragment<wm::matrix_b, 16, 16, 16, T, wm::row_major> fb[FN];
#pragma unroll
        for (int i = 0; i < FM; ++i) wm::load_matrix_sync(fa[i], As + k16 * LDA + wmi * WM + i * 16, LDA);
#pragma unroll
        for (int j = 0; j < FN; ++j) wm::load_matrix_sync(fb[j], Bs + k16 * LDB + wn * WN + j * 16, LDB);
#pragma unroll
        for (int i = 0; i < FM; ++i)
#pragma unroll
          for (int j = 0; j < FN; ++j) wm::mma_sync(c[i][j], fa[i], fb[j], c[i][j]);
      }
    }
    dc::cp_async_wait<0>();
    __syncthreads();
#pragma unroll
    for (int i = 0; i < FM; ++i)
#pragma unroll
      for (int j = 0; j < FN; ++j)
        wm::store_matrix_sync(smC + (wmi * WM + i * 16) * LDC + wn * WN + j * 16, c[i][j], LDC,
                              wm::mem_row_major);
  } else
#endif
  {
    static_assert(!Tile::WMMA, "tensor-core tile without dc::wmma");
    constexpr int TM = Tile::TM, TN = Tile::TN, NT = BN / TN;
    const int tn = tid % NT, tm = tid / NT;
    Acc acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) acc[i][j] = Acc(0);
    for (int step = 0; step < nsteps; ++step) {
      dc::cp_async_wait<ST - 2>();
      __syncthreads();
      if (step + ST - 1 < nsteps) load_stage((step + ST - 1) % ST, step + ST - 1);
      dc::cp_async_commit();
      const T* As = smA + (step % ST) * S::A_ELEMS + tm * TM;
      const T* Bs = smB + (step % ST) * S::B_ELEMS + tn * TN;
#pragma unroll 4
      for (int kk = 0; kk < BK; ++kk) {
        Acc a[TM], b[TN];
#pragma unroll
        for (int i = 0; i < TM; ++i) a[i] = to_acc(As[kk * LDA + i]);
#pragma unroll
        for (int j = 0; j < TN; ++j) b[j] = to_acc(Bs[kk * LDB + j]);
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
          for (int j = 0; j < TN; ++j) acc[i][j] += a[i] * b[j];
      }
    }
    dc::cp_async_wait<0>();
    __syncthreads();
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) smC[(tm * TM + i) * LDC + tn * TN + j] = acc[i][j];
  }
  __syncthreads();

  // epilogue: the partial tile to the workspace (fixed-order sum later), or dw directly
  T* dw = static_cast<T*>(p.dw);
  Acc* ws = static_cast<Acc*>(p.ws);
  const int K = p.groups * p.co;
  for (int e = tid; e < BM * BN; e += THREADS) {
    const int row = e / BN, col = e - row * BN;
    const int m = m0 + row, j = j0 + col;
    if (m >= p.co || j >= p.ncols) continue;
    const int k = g * p.co + m;
    const Acc v = smC[row * LDC + col];
    if (p.splits > 1) {
      dc::store(ws + (size_t(split) * K + k) * p.ncols + j, v);
    } else {
      const int rs = j / p.cr, c = j - rs * p.cr;
      const int r = rs / p.s, s = rs - r * p.s;
      dc::store(dw + (k * p.w_sk + c * p.w_sc + r * p.w_sr + s * p.w_ss), from_acc<T>(v));
    }
  }
}

// Sums the split-K partials in split order (the determinism of wgrad rests on this order).
template <typename T>
__global__ void __launch_bounds__(256) igemm_wgrad_reduce_kernel(WgradParams p) {
  using Acc = acc_t<T>;
  const int K = p.groups * p.co;
  const int e = blockIdx.x * 256 + threadIdx.x;
  if (e >= K * p.ncols) return;
  const int k = e / p.ncols, j = e - k * p.ncols;
  const Acc* ws = static_cast<const Acc*>(p.ws);
  Acc v = Acc(0);
  for (int sp = 0; sp < p.splits; ++sp) v += dc::load(ws + (size_t(sp) * K + k) * p.ncols + j);
  const int rs = j / p.cr, c = j - rs * p.cr;
  const int r = rs / p.s, s = rs - r * p.s;
  dc::store(static_cast<T*>(p.dw) + (k * p.w_sk + c * p.w_sc + r * p.w_sr + s * p.w_ss),
            from_acc<T>(v));
}


#endif  // DC_KERNEL_BODIES

// ---------------------------------------------------------------------------------------------
// host side: kernel selection (no kernel bodies needed: also visible to the host-only glue)

namespace detail {

inline int ceil_div(int64_t a, int64_t b) { return int((a + b - 1) / b); }

// Largest element offset of a [n][c][h][w] view; the kernels index with int32.
inline void check_offsets(const char* what, int64_t n, int64_t c, int64_t h, int64_t w, int64_t sn,
                          int64_t sc, int64_t sh, int64_t sw) {
  if (sn < 0 || sc < 0 || sh < 0 || sw < 0)
    throw std::invalid_argument(std::string("dilconv igemm: negative stride in ") + what);
  const int64_t mx = (n > 0 ? n - 1 : 0) * sn + (c > 0 ? c - 1 : 0) * sc + (h > 0 ? h - 1 : 0) * sh +
                     (w > 0 ? w - 1 : 0) * sw;
  if (mx > INT32_MAX)
    throw std::invalid_argument(std::string("dilconv igemm: ") + what +
                                " has element offsets beyond int32; pass a contiguous tensor");
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

inline void check_grid(int64_t gx, int64_t gy, int64_t gz) {
  if (gx > INT32_MAX || gy > 65535 || gz > 65535)
    throw std::invalid_argument("dilconv igemm: problem too large for the launch grid");
}

}  // namespace detail

inline const char* config_name_of(int cfg) {
  switch (cfg) {
    case kSimt64: return "simt64x64x16_s3";
    case kSimtNarrow: return "simt64x64_narrow_s2";
    case kWmma128: return "wmma128x64x32_s3";
    case kWmma64: return "wmma64x64x32_s3";
    case kSimt64Double: return "simt64x64x16_s2_f64";
    default: return "?";
  }
}

template <typename T>
int conv_configs(int* out, int cap) {
  int all[4], n = 0;
  if constexpr (std::is_same_v<T, double>) {
    all[n++] = kSimt64Double;
  } else {
    all[n++] = kSimt64;
    all[n++] = kSimtNarrow;
    if constexpr (is_16bit<T>() && DC_IGEMM_WMMA) {
      all[n++] = kWmma128;
      all[n++] = kWmma64;
    }
  }
  for (int i = 0; i < n && i < cap; ++i) out[i] = all[i];
  return n;
}

// The heuristic (documented in docs of `dilconv.autotune`; the autotuner may override it):
//   float64                          -> SIMT, 2 stages
//   fp16/bf16, >= 32 output and >= 16 reduction channels per group
//                                    -> tensor cores; 128x64 tiles unless that gives fewer than
//                                       ~2 CTAs per SM of an H100 (264 CTAs), then 64x64
//   grouped, <= 32 output channels per group
//                                    -> SIMT with narrow groups packed side by side in a tile
//   otherwise                        -> SIMT 64x64 (1x1 convs included: with R = S = 1 the K loop
//                                       is a plain GEMM over channel chunks)
template <typename T>
int select_conv_config(const ConvShape& sh, bool dgrad) {
  if (std::is_same_v<T, double>) return kSimt64Double;
  const int g = sh.groups;
  const int co = (dgrad ? sh.c : sh.k) / g, cr = (dgrad ? sh.k : sh.c) / g;
  const int64_t m = int64_t(sh.n) * (dgrad ? int64_t(sh.h) * sh.w : int64_t(sh.p) * sh.q);
  if (DC_IGEMM_WMMA && is_16bit<T>() && co >= 32 && cr >= 16) {
    const int64_t ctas = (m + 127) / 128 * ((co + 63) / 64) * g;
    return ctas >= 264 ? kWmma128 : kWmma64;
  }
  if (g > 1 && co <= 32) return kSimtNarrow;
  return kSimt64;
}

// split-K factor: enough CTAs for ~2 per SM of an H100 (264), each split >= 4 K steps. A function
// of the shape only, so the reduction order (and the result bits) never depend on the device.
inline int wgrad_splits(const ConvShape& sh, int bm, int bn, int bk) {
  const int co = sh.k / sh.groups, ncols = sh.c / sh.groups * sh.r * sh.s;
  const int64_t npq = int64_t(sh.n) * sh.p * sh.q;
  const int64_t tiles = int64_t(detail::ceil_div(ncols, bn)) * detail::ceil_div(co, bm) * sh.groups;
  const int64_t steps = (npq + bk - 1) / bk;
  int64_t splits = (264 + tiles - 1) / tiles;
  splits = std::min<int64_t>(splits, std::max<int64_t>(1, steps / 4));
  splits = std::min<int64_t>(splits, std::min<int64_t>(64, 65535 / sh.groups));
  splits = std::max<int64_t>(splits, 1);
  const int64_t per = (steps + splits - 1) / splits * bk;
  return npq == 0 ? 1 : int((npq + per - 1) / per);
}

namespace detail {
template <typename T>
int wgrad_config(const ConvShape& sh) {
  if (std::is_same_v<T, double>) return 2;
  return DC_IGEMM_WMMA && is_16bit<T>() && sh.k / sh.groups >= 32 ? 1 : 0;
}
template <typename T>
int wgrad_bk(const ConvShape& sh) {
  switch (wgrad_config<T>(sh)) {
    case 1: return TileWgradWmma::BKA;
    case 2: return TileWgradSimtDouble::BKA;
    default: return TileWgradSimt::BKA;
  }
}

}  // namespace detail

template <typename T>
size_t wgrad_workspace_bytes(const ConvShape& sh) {
  const int splits = wgrad_splits(sh, 64, 64, detail::wgrad_bk<T>(sh));
  if (splits <= 1) return 0;
  return size_t(splits) * sh.k * (sh.c / sh.groups) * sh.r * sh.s * sizeof(acc_t<T>);
}

#if DC_KERNEL_BODIES
// ---------------------------------------------------------------------------------------------
// host side: launch

namespace detail {

struct ConvPlan {
  int v, gt, cw, kc, nchunks;
  int64_t gx, gy, gz;
};

// Tile-independent part of the plan: packing of narrow groups, channels per K step, vector width.
template <typename Tile>
ConvPlan plan_conv(int m, int co, int cr, int groups, int vmax) {
  ConvPlan pl{};
  int gt = 1, cw = co;
  if constexpr (!Tile::WMMA) {
    // pack groups whose output channels (rounded up to the thread's TN columns) fill at most
    // half the N tile
    cw = (co + Tile::TN - 1) / Tile::TN * Tile::TN;
    if (groups > 1 && 2 * cw <= Tile::BN) gt = std::min(std::min(Tile::BN / cw, groups), Tile::BKA);
  }
  int kc = Tile::WMMA ? std::min(Tile::BKA, (cr + 15) / 16 * 16)
                      : std::min(cr, std::min(Tile::BKB, Tile::BKA / gt));
  int v = vmax;
  if (v > 1) {
    if (cr % v != 0 || co % v != 0 || kc < v) v = 1;
    else kc = kc / v * v;
  }
  pl.v = v;
  pl.gt = gt;
  pl.cw = gt > 1 ? cw : co;
  pl.kc = kc;
  pl.nchunks = ceil_div(cr, kc);
  pl.gx = ceil_div(m, Tile::BM);
  pl.gy = gt == 1 ? ceil_div(co, Tile::BN) : 1;
  pl.gz = ceil_div(groups, gt);
  return pl;
}

// TileV runs when the plan allows 16-byte vectors, TileS (at most 8 scalar loads per thread and
// operand, so the per-load address state fits in registers without spilling) otherwise.
template <typename T, bool DGRAD, typename TileV, typename TileS>
void launch_conv(ConvParams prm, int vmax, dc::Stream stream) {
  constexpr int VV = std::is_same_v<T, double> ? 1 : 16 / int(sizeof(T));
  auto run = [&](auto tile, auto vec) {
    using Tile = decltype(tile);
    constexpr int V = decltype(vec)::value;
    // dgrad: grid x covers the largest output phase, z the groups times the phases
    const int64_t mgrid = DGRAD ? int64_t(prm.batch) * ceil_div(prm.oh, prm.sh) * ceil_div(prm.ow, prm.sw)
                                : int64_t(prm.m);
    ConvPlan pl = plan_conv<Tile>(int(mgrid), prm.co, prm.cr, prm.groups, V);
    if (DGRAD) pl.gz *= int64_t(prm.sh) * prm.sw;
    prm.gt = pl.gt;
    prm.cw = pl.cw;
    prm.kc = pl.kc;
    prm.nchunks = pl.nchunks;
    check_grid(pl.gx, pl.gy, pl.gz);
    if (prm.m == 0) return;
    const dim3 grid{unsigned(pl.gx), unsigned(pl.gy), unsigned(pl.gz)}, block{unsigned(Tile::THREADS)};
    dc::launch(igemm_conv_kernel<T, DGRAD, Tile, V>, grid, block, ConvSmem<T, Tile>::BYTES, stream, prm);
  };
  if constexpr (VV > 1) {
    if (vmax == VV && plan_conv<TileV>(prm.m, prm.co, prm.cr, prm.groups, VV).v == VV) {
      run(TileV{}, std::integral_constant<int, VV>{});
      return;
    }
  }
  run(TileS{}, std::integral_constant<int, 1>{});
}

// the 16-byte vector width when the operand layout allows it, else 1
template <typename T>
int vec_width(const ConvParams& p) {
  constexpr int VV = 16 / int(sizeof(T));
  if (std::is_same_v<T, double>) return 1;
  const bool a_ok = p.cl && p.a_sc == 1 && p.a_sn % VV == 0 && p.a_sh % VV == 0 && p.a_sw % VV == 0 &&
                    aligned16(p.a);
  const bool b_ok = p.b_sco == 1 && p.b_sg % VV == 0 && p.b_scr % VV == 0 && p.b_sr % VV == 0 &&
                    p.b_ss % VV == 0 && aligned16(p.b);
  return a_ok && b_ok ? VV : 1;
}

template <typename T, bool DGRAD>
void run_conv(const ConvShape& sh, Act a, int ah, int aw, Wt w, const void* bias, Act out, int oh,
              int ow, int cr, int co, dc::Stream stream, int config) {
  const int cin = DGRAD ? sh.k : sh.c, cout = DGRAD ? sh.c : sh.k;
  check_offsets("the input operand", sh.n, cin, ah, aw, a.sn, a.sc, a.sh, a.sw);
  check_offsets("the output", sh.n, cout, oh, ow, out.sn, out.sc, out.sh, out.sw);
  const int64_t wmax = (sh.groups - 1) * w.sg + (sh.k / sh.groups - 1) * w.sk +
                       (sh.c / sh.groups - 1) * w.sc + (sh.r - 1) * w.sr + (sh.s - 1) * w.ss;
  if (w.sg < 0 || w.sk < 0 || w.sc < 0 || w.sr < 0 || w.ss < 0 || wmax > INT32_MAX)
    throw std::invalid_argument("dilconv igemm: weight offsets beyond int32");
  ConvParams p{};
  p.a = a.ptr;
  p.a_sn = int(a.sn), p.a_sc = int(a.sc), p.a_sh = int(a.sh), p.a_sw = int(a.sw);
  p.ah = ah, p.aw = aw;
  p.b = w.ptr;
  p.b_sg = int(w.sg);
  // fprop reduces over the weight's input channels; dgrad over its output channels
  p.b_sco = int(DGRAD ? w.sc : w.sk);
  p.b_scr = int(DGRAD ? w.sk : w.sc);
  p.b_sr = int(w.sr), p.b_ss = int(w.ss);
  p.bias = bias;
  p.out = const_cast<void*>(out.ptr);
  p.o_sn = int(out.sn), p.o_sc = int(out.sc), p.o_sh = int(out.sh), p.o_sw = int(out.sw);
  p.batch = sh.n, p.oh = oh, p.ow = ow;
  const int64_t m = int64_t(sh.n) * oh * ow;
  if (m > INT32_MAX) throw std::invalid_argument("dilconv igemm: N*H*W beyond int32");
  p.m = int(m);
  p.cr = cr, p.co = co, p.groups = sh.groups;
  p.r = sh.r, p.s = sh.s, p.sh = sh.stride_h, p.sw = sh.stride_w, p.ph = sh.pad_h, p.pw = sh.pad_w;
  p.dh = sh.dil_h, p.dw = sh.dil_w;
  p.cl = a.sc <= a.sw;
  p.cl_out = out.sc <= out.sw;
  const int vmax = vec_width<T>(p);
  if (config == kAuto) config = select_conv_config<T>(sh, DGRAD);
  if constexpr (std::is_same_v<T, double>) {
    if (config != kSimt64Double) throw std::invalid_argument("dilconv igemm: config not valid for float64");
    launch_conv<T, DGRAD, TileSimt64Double, TileSimt64Double>(p, 1, stream);
  } else {
    switch (config) {
      case kSimt64: launch_conv<T, DGRAD, TileSimt64, TileSimt64>(p, vmax, stream); break;
      case kSimtNarrow: launch_conv<T, DGRAD, TileSimtNarrow, TileSimtNarrowScalar>(p, vmax, stream); break;
      case kWmma128:
      case kWmma64:
#if DC_IGEMM_WMMA
        if constexpr (is_16bit<T>()) {
          if (config == kWmma128) launch_conv<T, DGRAD, TileWmma128, TileWmma64Scalar>(p, vmax, stream);
          else launch_conv<T, DGRAD, TileWmma64, TileWmma64Scalar>(p, vmax, stream);
          break;
        }
#endif
        [[fallthrough]];
      default: throw std::invalid_argument("dilconv igemm: config not valid for this dtype");
    }
  }
}

template <typename T, typename Tile>
void launch_wgrad(WgradParams p, bool vec, dc::Stream stream) {
  constexpr int BK = Tile::BKA;
  const int steps = (p.npq + BK - 1) / BK;
  p.npq_per_split = (steps + p.splits - 1) / p.splits * BK;
  if (p.npq_per_split == 0) p.npq_per_split = BK;
  const int64_t gx = ceil_div(p.ncols, Tile::BN), gy = ceil_div(p.co, Tile::BM),
                gz = int64_t(p.groups) * p.splits;
  check_grid(gx, gy, gz);
  const dim3 grid{unsigned(gx), unsigned(gy), unsigned(gz)}, block{unsigned(Tile::THREADS)};
  constexpr int VV = 16 / int(sizeof(T));
  bool done = false;
  if constexpr (VV > 1 && !std::is_same_v<T, double>) {
    if (vec) {
      dc::launch(igemm_wgrad_kernel<T, Tile, VV>, grid, block, WgradSmem<T, Tile>::BYTES, stream, p);
      done = true;
    }
  }
  if (!done) dc::launch(igemm_wgrad_kernel<T, Tile, 1>, grid, block, WgradSmem<T, Tile>::BYTES, stream, p);
  if (p.splits > 1) {
    const int64_t total = int64_t(p.groups) * p.co * p.ncols;
    dc::launch(igemm_wgrad_reduce_kernel<T>, dim3(unsigned(ceil_div(total, 256))), dim3(256), 0,
               stream, p);
  }
}
}  // namespace detail

template <typename T>
void fprop(const ConvShape& sh, Act x, Wt w, const void* bias, Act y, dc::Stream stream, int config) {
  detail::run_conv<T, false>(sh, x, sh.h, sh.w, w, bias, y, sh.p, sh.q, sh.c / sh.groups,
                             sh.k / sh.groups, stream, config);
}

template <typename T>
void dgrad(const ConvShape& sh, Act dy, Wt w, const void* bias, Act dx, dc::Stream stream, int config) {
  detail::run_conv<T, true>(sh, dy, sh.p, sh.q, w, bias, dx, sh.h, sh.w, sh.k / sh.groups,
                            sh.c / sh.groups, stream, config);
}

template <typename T>
void wgrad(const ConvShape& sh, Act dy, Act x, void* dw, const int64_t dw_s[4], void* workspace,
           size_t workspace_bytes, dc::Stream stream) {
  detail::check_offsets("grad_output", sh.n, sh.k, sh.p, sh.q, dy.sn, dy.sc, dy.sh, dy.sw);
  detail::check_offsets("input", sh.n, sh.c, sh.h, sh.w, x.sn, x.sc, x.sh, x.sw);
  detail::check_offsets("weight grad", sh.k, sh.c / sh.groups, sh.r, sh.s, dw_s[0], dw_s[1], dw_s[2],
                        dw_s[3]);
  WgradParams p{};
  p.dy = dy.ptr;
  p.d_sn = int(dy.sn), p.d_sc = int(dy.sc), p.d_sh = int(dy.sh), p.d_sw = int(dy.sw);
  p.x = x.ptr;
  p.x_sn = int(x.sn), p.x_sc = int(x.sc), p.x_sh = int(x.sh), p.x_sw = int(x.sw);
  p.xh = sh.h, p.xw = sh.w;
  p.dw = dw;
  p.w_sk = int(dw_s[0]), p.w_sc = int(dw_s[1]), p.w_sr = int(dw_s[2]), p.w_ss = int(dw_s[3]);
  p.ws = workspace;
  p.batch = sh.n, p.oh = sh.p, p.ow = sh.q;
  const int64_t npq = int64_t(sh.n) * sh.p * sh.q;
  if (npq > INT32_MAX) throw std::invalid_argument("dilconv igemm: N*P*Q beyond int32");
  p.npq = int(npq);
  p.co = sh.k / sh.groups, p.cr = sh.c / sh.groups, p.groups = sh.groups;
  p.r = sh.r, p.s = sh.s, p.sh = sh.stride_h, p.sw = sh.stride_w, p.ph = sh.pad_h, p.pw = sh.pad_w;
  p.dh = sh.dil_h, p.dw_ = sh.dil_w;
  p.ncols = p.cr * sh.r * sh.s;
  p.cl_a = dy.sc <= dy.sw;
  p.cl_b = x.sc <= x.sw;
  p.splits = wgrad_splits(sh, 64, 64, detail::wgrad_bk<T>(sh));
  if (p.splits > 1 && (workspace == nullptr || workspace_bytes < wgrad_workspace_bytes<T>(sh)))
    throw std::invalid_argument("dilconv igemm: wgrad workspace missing or too small");
  constexpr int VV = 16 / int(sizeof(T));
  const bool vec = !std::is_same_v<T, double> && p.cl_a && p.cl_b && p.co % VV == 0 &&
                   p.cr % VV == 0 && p.d_sn % VV == 0 && p.d_sh % VV == 0 && p.d_sw % VV == 0 &&
                   p.x_sn % VV == 0 && p.x_sh % VV == 0 && p.x_sw % VV == 0 &&
                   detail::aligned16(dy.ptr) && detail::aligned16(x.ptr);
  if constexpr (std::is_same_v<T, double>) {
    detail::launch_wgrad<T, TileWgradSimtDouble>(p, false, stream);
  } else {
#if DC_IGEMM_WMMA
    if (is_16bit<T>() && detail::wgrad_config<T>(sh) == 1) {
      if constexpr (is_16bit<T>()) detail::launch_wgrad<T, TileWgradWmma>(p, vec, stream);
      return;
    }
#endif
    detail::launch_wgrad<T, TileWgradSimt>(p, vec, stream);
  }
}

#endif  // DC_KERNEL_BODIES

}  // namespace igemm
}  // namespace DC_TARGET_NS
