// The CPU kernels proper. Included by kernels.cpp once per instruction set, inside a namespace
// and a `#pragma GCC target` region, with DILCONV_VBYTES the vector width in bytes: the same
// source becomes the AVX-512, AVX2 and SSE2 variants (GCC vector extensions; the compiler
// contracts a * b + c into FMA where the target has it). No includes here on purpose.

constexpr int VB = DILCONV_VBYTES;
#define DILCONV_INLINE inline __attribute__((always_inline))

template <class T>
struct Vec;
template <>
struct Vec<float> {
  typedef float type __attribute__((vector_size(VB)));
  typedef int32_t mask __attribute__((vector_size(VB)));  // a shuffle's lane indices
};
template <>
struct Vec<double> {
  typedef double type __attribute__((vector_size(VB)));
  typedef int64_t mask __attribute__((vector_size(VB)));
};
template <class T>
using V = typename Vec<T>::type;
template <class T>
constexpr int64_t NV = VB / sizeof(T);

template <int N>
struct Int {
  static constexpr int value = N;
};

// f(Int<n>{}) for a run-time count n in 1..N (N for anything larger): the kernels that keep
// one value per tap, or one row of sums per row, in registers are compiled per count
template <int N, class F>
DILCONV_INLINE void with_count(int64_t n, F&& f) {
  if constexpr (N > 1)
    if (n < N) return with_count<N - 1>(n, f);
  f(Int<N>{});
}
template <class F>
DILCONV_INLINE void with_taps(int64_t nt, F&& f) {
  with_count<9>(nt, f);
}

// Output columns [lo, hi) whose tap s reads inside the input (0 <= q * sw + s * dw - pw < W)
struct Cols {
  int64_t lo, hi;
};
inline Cols tap_columns(const Geo& g, int64_t s) {
  const int64_t o = s * g.dw - g.pw;
  const int64_t lo = o >= 0 ? 0 : (-o + g.sw - 1) / g.sw;
  int64_t hi = g.W - 1 - o >= 0 ? (g.W - 1 - o) / g.sw + 1 : 0;
  if (hi > g.Q) hi = g.Q;
  return {lo < hi ? lo : hi, hi};
}
// output columns [lo, hi) where every tap s reads inside the input
inline Cols interior_columns(const Geo& g) {
  const int64_t lo = g.pw > 0 ? (g.pw + g.sw - 1) / g.sw : 0;
  const int64_t last = g.W - 1 + g.pw - (g.S - 1) * g.dw;  // q * sw <= last
  int64_t hi = last >= 0 ? last / g.sw + 1 : 0;
  if (hi > g.Q) hi = g.Q;
  return {lo < hi ? lo : hi, hi};
}

template <class T>
inline V<T> ld(const T* p) {
  V<T> v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
template <class T>
inline void st(T* p, V<T> v) {
  __builtin_memcpy(p, &v, sizeof v);
}
// A store that bypasses the caches (p aligned to the vector): for outputs larger than the
// caches, whose lines would otherwise be read before being written (the write-allocate) and
// would evict the inputs the same pass still reads. Plain store where there is no such
// instruction.
template <class T>
inline void st_stream(T* p, V<T> v) {
#if (defined(__x86_64__) || defined(__i386__)) && DILCONV_VBYTES == 64
  if constexpr (sizeof(T) == 4) _mm512_stream_ps(reinterpret_cast<float*>(p), (__m512)v);
  else _mm512_stream_pd(reinterpret_cast<double*>(p), (__m512d)v);
#elif (defined(__x86_64__) || defined(__i386__)) && DILCONV_VBYTES == 32
  if constexpr (sizeof(T) == 4) _mm256_stream_ps(reinterpret_cast<float*>(p), (__m256)v);
  else _mm256_stream_pd(reinterpret_cast<double*>(p), (__m256d)v);
#elif (defined(__x86_64__) || defined(__i386__)) && DILCONV_VBYTES == 16
  if constexpr (sizeof(T) == 4) _mm_stream_ps(reinterpret_cast<float*>(p), (__m128)v);
  else _mm_stream_pd(reinterpret_cast<double*>(p), (__m128d)v);
#else
  st(p, v);
#endif
}
// orders the streaming stores before whatever the caller does next (another thread may read)
inline void stream_fence() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_sfence();
#endif
}
template <class T>
inline V<T> splat(T s) {
  // s - 0 is s exactly, so GCC folds it to a bare broadcast (a load-port vbroadcastss from
  // memory); 0 + s is not (-0.0 + 0.0 is +0.0): that spent an add and a register shuffle on
  // every splat, one per row and sum step in gemm_bcast
  return s - V<T>{};
}
template <class T>
inline T hsum(V<T> v) {
  T s = 0;
  for (int64_t i = 0; i < NV<T>; ++i) s += v[i];
  return s;
}
// act (on) applied to a vector / a scalar; comparisons with NaN are false, so NaN passes through
template <class T>
inline V<T> clamp_v(V<T> v, V<T> lo, V<T> hi) {
  v = v < lo ? lo : v;
  return v > hi ? hi : v;
}
template <class T>
inline V<T> act_v(Act a, V<T> v) {
  return clamp_v<T>(v, splat<T>(T(a.lo)), splat<T>(T(a.hi)));
}
template <class T>
inline T act_s(Act a, T v) {
  return v < T(a.lo) ? T(a.lo) : (v > T(a.hi) ? T(a.hi) : v);
}

// ------------------------------------------------------------------------------------------
// packing

// Packs padded rows [i0, i0 + nr) of one channel plane (padded row i = source row i - ph,
// padded column j = source column j - pw; zero outside the source) in the phase-split layout
// of kernels.h, Wph slots per phase row.
template <class T>
void pack_plane(const T* src, int64_t sH, int64_t sW, int64_t H, int64_t W, int64_t i0, int64_t nr,
                int64_t ph, int64_t pw, int64_t sw, int64_t Wph, T* dst) {
  for (int64_t r = 0; r < nr; ++r) {
    T* drow = dst + r * sw * Wph;
    const int64_t hi = i0 + r - ph;
    if (hi < 0 || hi >= H) {
      __builtin_memset(drow, 0, sizeof(T) * sw * Wph);
      continue;
    }
    const T* srow = src + hi * sH;
    if (sw == 2 && sW == 1) {
      // both phases in one loop: a grouped load the compiler vectorises with shuffles (MobileNet's
      // stride-2 layers; a strided loop per phase runs element by element). Padded column pc is
      // phase pc & 1, slot pc >> 1; source column pc - pw.
      T* __restrict d0 = drow;
      T* __restrict d1 = drow + Wph;
      auto at = [&](int64_t pc) { return pc >= pw && pc < pw + W ? srow[pc - pw] : T(0); };
      int64_t mlo = (pw + 1) / 2, mhi = (pw + W) / 2;  // both columns of slot m in the source
      if (mhi > Wph) mhi = Wph;
      if (mlo > mhi) mlo = mhi;
      for (int64_t m = 0; m < mlo; ++m) {
        d0[m] = at(2 * m);
        d1[m] = at(2 * m + 1);
      }
      const T* __restrict s2 = srow + 2 * mlo - pw;
      for (int64_t k = 0; k < mhi - mlo; ++k) {
        d0[mlo + k] = s2[2 * k];
        d1[mlo + k] = s2[2 * k + 1];
      }
      for (int64_t m = mhi; m < Wph; ++m) {
        d0[m] = at(2 * m);
        d1[m] = at(2 * m + 1);
      }
      continue;
    }
    for (int64_t f = 0; f < sw; ++f) {
      T* d = drow + f * Wph;
      // slot m holds source column m * sw + f - pw
      int64_t lo = pw - f > 0 ? (pw - f + sw - 1) / sw : 0;
      int64_t hi_m = W - 1 + pw - f >= 0 ? (W - 1 + pw - f) / sw + 1 : 0;  // exclusive
      if (lo > Wph) lo = Wph;
      if (hi_m > Wph) hi_m = Wph;
      if (hi_m < lo) hi_m = lo;
      for (int64_t m = 0; m < lo; ++m) d[m] = 0;
      const T* s0 = srow + (lo * sw + f - pw) * sW;
      if (sw == 1 && sW == 1) {
        // short rows: an inline vector copy beats a memcpy call
        const int64_t len = hi_m - lo;
        int64_t m = 0;
        for (; m + NV<T> <= len; m += NV<T>) st(d + lo + m, ld(s0 + m));
        for (; m < len; ++m) d[lo + m] = s0[m];
      } else {
        const int64_t step = sw * sW;
        for (int64_t m = lo; m < hi_m; ++m) d[m] = s0[(m - lo) * step];
      }
      {
        int64_t m = hi_m;
        for (; m + NV<T> <= Wph; m += NV<T>) st(d + m, V<T>{});
        for (; m < Wph; ++m) d[m] = 0;
      }
    }
  }
}

// ------------------------------------------------------------------------------------------
// forward: output rows accumulated in registers over all taps (channel, r, s) of a block of
// KB output channels and U vectors of output columns.

template <class T, int KB, int U>
DILCONV_INLINE void fwd_block(const T* base, const int64_t* off, int64_t ntap, const T* const* wk,
                      V<T> (&acc)[KB][U]) {
  for (int kb = 0; kb < KB; ++kb)
    for (int u = 0; u < U; ++u) acc[kb][u] = V<T>{};
  for (int64_t t = 0; t < ntap; ++t) {
    const T* p = base + off[t];
    V<T> xv[U];
    for (int u = 0; u < U; ++u) xv[u] = ld(p + u * NV<T>);
    for (int kb = 0; kb < KB; ++kb) {
      const T wv = wk[kb][t];
      for (int u = 0; u < U; ++u) acc[kb][u] += wv * xv[u];
    }
  }
}

template <class T, int KB, int U>
DILCONV_INLINE void fwd_store(V<T> (&acc)[KB][U], T* const* yrow, int64_t ysw, int64_t q, int64_t valid,
                      const T* bias, Act act) {
  for (int kb = 0; kb < KB; ++kb) {
    const V<T> b = splat<T>(bias ? bias[kb] : T(0));
    for (int u = 0; u < U; ++u) {
      V<T> v = acc[kb][u] + b;
      if (act) v = act_v<T>(act, v);
      const int64_t q0 = q + u * NV<T>;
      const int64_t n = valid - u * NV<T>;
      if (ysw == 1 && n >= NV<T>) {
        st(yrow[kb] + q0, v);
      } else {
        const int64_t m = n < NV<T> ? n : NV<T>;
        for (int64_t i = 0; i < m; ++i) yrow[kb][(q0 + i) * ysw] = v[i];
      }
    }
  }
}

template <class T, int KB, int U>
DILCONV_INLINE void fwd_cols(const T* base, const int64_t* off, int64_t ntap, const T* const* wk,
                     T* const* yrow, int64_t ysw, int64_t q, int64_t valid, const T* bias,
                     Act act) {
  V<T> acc[KB][U];
  fwd_block<T, KB, U>(base + q, off, ntap, wk, acc);
  fwd_store<T, KB, U>(acc, yrow, ysw, q, valid, bias, act);
}

template <class T, int KB>
void fwd_rows(const Geo& g, const T* buf, int64_t rowstep, const int64_t* off, int64_t ntap,
              const T* const* wk, T* const* yrow0, int64_t ysh, int64_t ysw, int64_t p0, int64_t p1,
              const T* bias, Act act, const T* pf = nullptr, int64_t pf_row = 0) {
  constexpr int UM = KB >= 4 ? 2 : 4;
  constexpr int64_t L = NV<T>;
  for (int64_t p = p0; p < p1; ++p) {
    if (pf)  // pf_row values of what is read next, into the L2, per output row
      for (int64_t l = 0; l < pf_row; l += 64 / sizeof(T))
        __builtin_prefetch(pf + (p - p0) * pf_row + l, 0, 2);
    const T* base = buf + (p - p0) * rowstep;
    T* yrow[KB];
    for (int kb = 0; kb < KB; ++kb) yrow[kb] = yrow0[kb] + p * ysh;
    int64_t q = 0;
    for (; g.Q - q >= UM * L; q += UM * L)
      fwd_cols<T, KB, UM>(base, off, ntap, wk, yrow, ysw, q, UM * L, bias, act);
    const int64_t rem = g.Q - q;
    if (rem <= 0) continue;
    // rem < UM * L: at most UM vectors
    switch ((rem + L - 1) / L) {
      case 1: fwd_cols<T, KB, 1>(base, off, ntap, wk, yrow, ysw, q, rem, bias, act); break;
      case 2: fwd_cols<T, KB, 2>(base, off, ntap, wk, yrow, ysw, q, rem, bias, act); break;
      case 3: fwd_cols<T, KB, (UM > 2 ? 3 : 2)>(base, off, ntap, wk, yrow, ysw, q, rem, bias, act); break;
      default: fwd_cols<T, KB, UM>(base, off, ntap, wk, yrow, ysw, q, rem, bias, act); break;
    }
  }
}

template <class T>
int64_t fwd_scratch(const Geo& g, int64_t rows) {
  const int64_t Wph = packed_width(g, NV<T>);
  const int64_t ntap = g.Cg * g.R * g.S;
  // packed planes + the tap offsets (stored as T-sized slots, 8-byte aligned either way)
  return g.Cg * packed_rows(g, rows) * g.sw * Wph + ntap * (8 / sizeof(T)) + 8;
}

template <class T>
void fwd(const Geo& g, const T* x, Strides xs, const T* w, const T* bias, Act act, T* y,
         Strides ys, int64_t n, int64_t grp, int64_t k0, int64_t k1, int64_t p0, int64_t p1,
         T* scratch) {
  const int64_t Wph = packed_width(g, NV<T>);
  const int64_t nr = packed_rows(g, p1 - p0);
  const int64_t rowlen = g.sw * Wph;
  const int64_t plane = nr * rowlen;
  const int64_t ntap = g.Cg * g.R * g.S;
  T* buf = scratch;
  // tap offsets after the planes, 8-byte aligned
  int64_t* off = reinterpret_cast<int64_t*>(scratch + (g.Cg * plane + 1) / 2 * 2);
  for (int64_t c = 0; c < g.Cg; ++c) {
    const T* src = x + n * xs.n + (grp * g.Cg + c) * xs.c;
    pack_plane(src, xs.h, xs.w, g.H, g.W, p0 * g.sh, nr, g.ph, g.pw, g.sw, Wph, buf + c * plane);
    for (int64_t r = 0; r < g.R; ++r)
      for (int64_t s = 0; s < g.S; ++s)
        off[(c * g.R + r) * g.S + s] =
            c * plane + r * g.dh * rowlen + ((s * g.dw) % g.sw) * Wph + (s * g.dw) / g.sw;
  }
  const int64_t rowstep = g.sh * rowlen;
  const int64_t kbase = grp * g.Kg;
  // one input channel in dense planes: the source rows right after the ones packed here (the
  // next unit's, or the next plane's) are prefetched while this unit computes, as dw_flat_fwd
  // does (packing waited on memory: half of a stride-2 depthwise forward)
  const T* pf = nullptr;
  if (g.Cg == 1 && xs.w == 1 && xs.h == g.W && xs.c == g.H * g.W) {
    int64_t last = p0 * g.sh - g.ph + nr;
    last = last < 0 ? 0 : last > g.H ? g.H : last;
    pf = x + n * xs.n + grp * xs.c + last * xs.h;
  }
  int64_t k = k0;
  auto run = [&](auto kb_tag) {
    constexpr int KB = decltype(kb_tag)::value;
    const T* wk[KB];
    T* yrow[KB];
    T bb[KB];
    for (int kb = 0; kb < KB; ++kb) {
      wk[kb] = w + (kbase + k + kb) * ntap;
      yrow[kb] = y + n * ys.n + (kbase + k + kb) * ys.c;
      if (bias) bb[kb] = bias[kbase + k + kb];
    }
    fwd_rows<T, KB>(g, buf, rowstep, off, ntap, wk, yrow, ys.h, ys.w, p0, p1, bias ? bb : nullptr,
                    act, k == k0 ? pf : nullptr, g.sh * g.W);
    k += KB;
  };
  while (k1 - k >= 4) run(Int<4>{});
  while (k1 - k >= 2) run(Int<2>{});
  while (k1 - k >= 1) run(Int<1>{});
}

// ------------------------------------------------------------------------------------------
// depthwise, stride 1, NCHW planes: the padded window of a channel is packed with a row pitch of
// exactly the padded width wp = Q + (S - 1) * dw, so that output (p, q) and every tap read flat
// offsets j = p * wp + q (+ r * dh * wp + s * dw): the stencil runs over the flattened window as
// one long 1-D convolution (no per-row vector tails; the wp - Q columns between rows are computed
// and dropped). The NT = R * S <= 9 tap weights stay in registers.

// zero a short row
template <class T>
DILCONV_INLINE void zero_row(T* d, int64_t len) {
  const int64_t nv = len > 0 ? len / NV<T> : 0;
  for (int64_t v = 0; v < nv; ++v) st(d + v * NV<T>, V<T>{});
  for (int64_t m = nv * NV<T>; m < len; ++m) d[m] = 0;
}

constexpr int64_t DW_FLAT_MAX_TAPS = 9;
// vectors per block: 32 floats with AVX2 and AVX-512 (AVX-512 with 4: NCHW depthwise forward
// 3-5% slower, three interleaved process pairs on a 2-core Xeon, 7 MobileNetV2/Xception shapes)
constexpr int DW_FLAT_U = VB == 64 ? 2 : 4;

template <class T>
inline int64_t dw_flat_pitch(const Geo& g) { return g.Q + (g.S - 1) * g.dw; }

// zeros after a packed window: a block's overrun plus the widest tap reach
template <class T>
inline int64_t dw_flat_slack(const Geo& g) {
  return DW_FLAT_U * NV<T> + (g.S - 1) * g.dw + NV<T>;
}

// each tap's offset in a packed window of pitch wp
inline void dw_flat_offsets(const Geo& g, int64_t wp, int64_t* off) {
  for (int64_t r = 0; r < g.R; ++r)
    for (int64_t s = 0; s < g.S; ++s) off[r * g.S + s] = r * g.dh * wp + s * g.dw;
}

template <class T>
int64_t dw_flat_scratch(const Geo& g, int64_t rows) {
  const int64_t wp = dw_flat_pitch<T>(g);
  const int64_t slack = dw_flat_slack<T>(g);
  // packed window, then the flat output block
  return (rows + (g.R - 1) * g.dh) * wp + slack + rows * wp + DW_FLAT_U * NV<T> + 2 * NV<T>;
}

// out[j] = sum_t wk[t] * buf[j + off[t]] for j < len (rounded up to whole blocks). pf, pw
// (nullable): memory read resp. written next, prefetched into the L2 one block per block computed
// (a channel plane spans a few pages: the hardware prefetchers restart at every page).
template <class T, int NT>
void dw_flat_block(const T* buf, const int64_t* off, const T* wk, int64_t len, T* out,
                   const T* pf = nullptr, T* pw = nullptr) {
  constexpr int64_t L = NV<T>;
  constexpr int U = DW_FLAT_U;
  constexpr int64_t LINE = 64 / sizeof(T);
  V<T> wv[NT];
  const T* src[NT];
  for (int t = 0; t < NT; ++t) {
    wv[t] = splat<T>(wk[t]);
    src[t] = buf + off[t];
  }
  for (int64_t j = 0; j < len; j += U * L) {
    for (int64_t l = 0; l < U * L; l += LINE) {
      if (pf) __builtin_prefetch(pf + j + l, 0, 2);
      if (pw) __builtin_prefetch(pw + j + l, 1, 2);
    }
    V<T> acc[U];
    for (int u = 0; u < U; ++u) acc[u] = wv[0] * ld(src[0] + j + u * L);
#pragma GCC unroll 9
    for (int t = 1; t < NT; ++t)
      for (int u = 0; u < U; ++u) acc[u] += wv[t] * ld(src[t] + j + u * L);
    for (int u = 0; u < U; ++u) st(out + j + u * L, acc[u]);
  }
}

// The column step of a band of A output rows (3x3 taps; see dw_flat_block_3x3): each vector of
// packed rows b = 0..A+1 at shifts s * dw is loaded once and handed to f(a, t, v) for every
// output row a = b - r of the band that reads it with tap t = r * 3 + s.
template <class T, int A, class F>
DILCONV_INLINE void band_3x3(const T* at, int64_t D, int64_t dw, F&& f) {
#pragma GCC unroll 6
  for (int b = 0; b < A + 2; ++b) {
#pragma GCC unroll 3
    for (int s = 0; s < 3; ++s) {
      V<T> v = ld(at + b * D + s * dw);
      // one load into a register for its uses (GCC would fold it into each FMA)
      __asm__("" : "+v"(v));
#pragma GCC unroll 3
      for (int r = 0; r < 3; ++r)
        if (b - r >= 0 && b - r < A) f(b - r, r * 3 + s, v);
    }
  }
}

// 3x3 taps: A output rows at once. Output flat index j + a * D (D = dh * wp: a tap row down)
// reads packed row b = a + r at column shift s * dw, so each vector loaded serves up to 3 output
// rows: 6 x 3 loads for 4 x 9 FMAs per column step instead of 9 for 9. The one-row kernel is
// bound by its loads (every one straddles two cache lines, the pitch being odd).
// Bands of A * D outputs; the column steps of a band overrun its D into the next band's first
// outputs, which they compute exactly as that band will (out[j] depends on j alone).
// Returns how many outputs (a multiple of A * D) it has computed.
template <class T>
int64_t dw_flat_block_3x3(const T* buf, int64_t D, int64_t dw, const T* wk, int64_t len, T* out,
                          const T* pf, T* pw) {
  constexpr int64_t L = NV<T>;
  constexpr int64_t LINE = 64 / sizeof(T);
  constexpr int A = 4;
  V<T> wv[9];
  for (int t = 0; t < 9; ++t) wv[t] = splat<T>(wk[t]);
  int64_t g0 = 0;
  for (; g0 + A * D <= len; g0 += A * D) {
    for (int64_t j = g0; j < g0 + D; j += L) {
      // prefetch as dw_flat_block does: as many values as this step computes
      const int64_t at = g0 + (j - g0) * A;
      for (int64_t l = 0; l < A * L; l += LINE) {
        if (pf) __builtin_prefetch(pf + at + l, 0, 2);
        if (pw) __builtin_prefetch(pw + at + l, 1, 2);
      }
      V<T> acc[A];
      for (int a = 0; a < A; ++a) acc[a] = V<T>{};
      band_3x3<T, A>(buf + j, D, dw, [&](int a, int t, V<T> v) { acc[a] += wv[t] * v; });
      for (int a = 0; a < A; ++a) st(out + j + a * D, acc[a]);
    }
  }
  return g0;
}

// out[j] = sum_t wk[t] * buf[j + off[t]], j < len (see dw_flat_block): 3x3 taps by bands of
// output rows, the rest (and other tap counts) one row at a time
template <class T>
void dw_flat_stencil(const Geo& g, const T* buf, const int64_t* off, const T* wk, int64_t len,
                     T* out, const T* pf, T* pw) {
  int64_t done = 0;
  if (g.R == 3 && g.S == 3) done = dw_flat_block_3x3(buf, off[3], off[1], wk, len, out, pf, pw);
  if (done >= len) return;
  const int64_t nt = g.R * g.S;
  int64_t rest[DW_FLAT_MAX_TAPS];
  for (int64_t t = 0; t < nt; ++t) rest[t] = off[t] + done;
  with_taps(nt, [&](auto nt_tag) {
    dw_flat_block<T, decltype(nt_tag)::value>(buf, rest, wk, len - done, out + done,
                                              pf ? pf + done : nullptr, pw ? pw + done : nullptr);
  });
}

// Packs padded rows [p0, p0 + nr) of the channel plane src (padded row i = source row i - ph,
// padded column j = source column j - pw, zero outside) with row pitch wp, then `slack` zeros.
template <class T>
void dw_flat_pack(const Geo& g, const T* src, Strides xs, int64_t p0, int64_t nr, int64_t wp,
                  int64_t slack, T* buf) {
  constexpr int64_t L = NV<T>;
  int64_t jlo = g.pw < 0 ? 0 : g.pw, jhi = g.W + g.pw;  // padded columns holding source data
  if (jhi > wp) jhi = wp;
  if (jlo > jhi) jlo = jhi;
  const int64_t len_src = jhi - jlo;
  for (int64_t i = 0; i < nr; ++i) {
    T* d = buf + i * wp;
    const int64_t hi = i + p0 - g.ph;
    if (hi < 0 || hi >= g.H) {
      zero_row(d, wp);
      continue;
    }
    const T* s = src + hi * xs.h + (jlo - g.pw) * xs.w;
    // the pad columns (a few): one vector store each, before the data resp. spilling into the
    // next row, which is packed after this one (the last spills into the slack, zeroed below);
    // GCC turns the plain loops into memset calls, which cost more than the copy on small planes
    if (jlo <= L) st(d, V<T>{});
    else zero_row(d, jlo);
    if (xs.w == 1) {
      int64_t m = 0;
      for (; m + L <= len_src; m += L) st(d + jlo + m, ld(s + m));
      for (; m < len_src; ++m) d[jlo + m] = s[m];
    } else {
      for (int64_t m = 0; m < len_src; ++m) d[jlo + m] = s[m * xs.w];
    }
    if (wp - jhi <= L) st(d + jhi, V<T>{});
    else zero_row(d + jhi, wp - jhi);
  }
  zero_row(buf + nr * wp, slack);
}

// Copies rows [p0, p1) of a flat output block (pitch wp, Q values a row) into the plane yk,
// adding b and applying act.
template <class T>
void dw_flat_store(const T* out, int64_t wp, int64_t Q, T b, Act act, T* yk, Strides ys,
                   int64_t p0, int64_t p1) {
  constexpr int64_t L = NV<T>;
  for (int64_t p = p0; p < p1; ++p) {
    const T* o = out + (p - p0) * wp;
    T* yr = yk + p * ys.h;
    if (ys.w == 1) {
      const V<T> bv = splat<T>(b);
      int64_t q = 0;
      for (; q + L <= Q; q += L) {
        const V<T> v = ld(o + q) + bv;
        st(yr + q, act ? act_v<T>(act, v) : v);
      }
      for (; q < Q; ++q) {
        const T v = o[q] + b;
        yr[q] = act ? act_s<T>(act, v) : v;
      }
    } else {
      for (int64_t q = 0; q < Q; ++q) {
        const T v = o[q] + b;
        yr[q * ys.w] = act ? act_s<T>(act, v) : v;
      }
    }
  }
}

// Forward of output rows [p0, p1) of channels k0..k1 of group grp (one input channel each).
template <class T>
void dw_flat_fwd(const Geo& g, const T* x, Strides xs, const T* w, const T* bias, Act act, T* y,
                 Strides ys, int64_t n, int64_t grp, int64_t k0, int64_t k1, int64_t p0, int64_t p1,
                 T* scratch) {
  const int64_t wp = dw_flat_pitch<T>(g);
  const int64_t rows = p1 - p0;
  const int64_t nr = rows + (g.R - 1) * g.dh;
  const int64_t slack = dw_flat_slack<T>(g);
  T* buf = scratch;
  T* out = scratch + nr * wp + slack;
  dw_flat_pack(g, x + n * xs.n + grp * xs.c, xs, p0, nr, wp, slack, buf);
  const int64_t nt = g.R * g.S;
  int64_t off[DW_FLAT_MAX_TAPS];
  dw_flat_offsets(g, wp, off);
  const int64_t len = rows * wp;
  // contiguous planes: the next unit reads the source rows right after the ones packed here
  // (the next rows of this plane, or the next plane), and this one writes rows [p0, p1) of y
  const T* pf = nullptr;
  if (xs.w == 1 && xs.h == g.W && xs.c == g.H * g.W) {
    const int64_t last = p0 - g.ph + nr < g.H ? p0 - g.ph + nr : g.H;
    pf = x + n * xs.n + grp * xs.c + last * xs.h;
  }
  for (int64_t kk = k0; kk < k1; ++kk) {
    const int64_t k = grp * g.Kg + kk;
    const T* wk = w + k * nt;
    T* pw = ys.w == 1 && ys.h == g.Q ? y + n * ys.n + k * ys.c + p0 * ys.h : nullptr;
    dw_flat_stencil(g, buf, off, wk, len, out, kk == k0 ? pf : nullptr, pw);
    dw_flat_store(out, wp, g.Q, bias ? bias[k] : T(0), act, y + n * ys.n + k * ys.c, ys, p0, p1);
  }
}

// Weight gradient over the flattened windows: gw[t] = sum_j gy[j] * x[j + off[t]], with gy
// packed at the same pitch and zeros in the wp - Q columns that are not outputs.
template <class T>
int64_t dw_flat_wgrad_scratch(const Geo& g, int64_t channels) {
  const int64_t wp = dw_flat_pitch<T>(g);
  const int64_t slack = dw_flat_slack<T>(g);
  return (g.P + (g.R - 1) * g.dh) * wp + slack + g.P * wp + DW_FLAT_U * NV<T> + 2 * NV<T> +
         channels * DW_FLAT_MAX_TAPS * NV<T>;
}

// sum[t] += gb . buf[off[t]:] over len values, by lanes (hsum once the sums are complete: a
// horizontal sum per call cost as much as the dots of a few rows); with GB, *gsum += gb by
// lanes (the bias gradient, while gb is in registers anyway)
// (pf, nullable: memory read next, prefetched as in dw_flat_block)
template <class T, int NT, bool GB = false>
void dw_flat_dot(const T* gb, const T* buf, const int64_t* off, int64_t len, V<T>* sum,
                 V<T>* gsum = nullptr, const T* pf = nullptr) {
  constexpr int64_t L = NV<T>;
  constexpr int64_t LINE = 64 / sizeof(T);
  V<T> acc[NT], ga = V<T>{};
  const T* src[NT];
  for (int t = 0; t < NT; ++t) {
    acc[t] = V<T>{};
    src[t] = buf + off[t];
  }
  for (int64_t j = 0; j < len; j += 2 * L) {
    if (pf && j % LINE == 0) __builtin_prefetch(pf + j, 0, 2);
    const V<T> a0 = ld(gb + j), a1 = ld(gb + j + L);
    if (GB) ga += a0 + a1;
#pragma GCC unroll 9
    for (int t = 0; t < NT; ++t) acc[t] += a0 * ld(src[t] + j) + a1 * ld(src[t] + j + L);
  }
  for (int t = 0; t < NT; ++t) sum[t] += acc[t];
  if (GB) *gsum += ga;
}

// 3x3 taps, dw_flat_dot by bands of A rows of gb (as dw_flat_block_3x3): sum[r * 3 + s] +=
// gb[j + a * D] * buf[j + (a + r) * D + s * dw], each buf vector loaded once for up to 3 rows of
// gb. A sum must not count a value twice, so the last column step of a band is masked to the
// band's D values. Returns how many values (a multiple of A * D) it has summed.
template <class T, bool GB = false>
int64_t dw_flat_dot_3x3(const T* gb, const T* buf, int64_t D, int64_t dw, int64_t len, V<T>* sum,
                        V<T>* gsum, const T* pf) {
  constexpr int64_t L = NV<T>;
  constexpr int64_t LINE = 64 / sizeof(T);
  constexpr int A = 4;
  V<T> acc[9], ga = V<T>{}, lane;
  for (int t = 0; t < 9; ++t) acc[t] = V<T>{};
  for (int64_t l = 0; l < L; ++l) lane[l] = T(l);
  int64_t g0 = 0;
  for (; g0 + A * D <= len; g0 += A * D) {
    for (int64_t j = g0; j < g0 + D; j += L) {
      const int64_t at = g0 + (j - g0) * A;
      if (pf)
        for (int64_t l = 0; l < A * L; l += LINE) __builtin_prefetch(pf + at + l, 0, 2);
      V<T> gv[A];
      for (int a = 0; a < A; ++a) gv[a] = ld(gb + j + a * D);
      if (j + L > g0 + D) {  // lanes past the band belong to the next one
        const V<T> keep = splat<T>(T(g0 + D - j));
        for (int a = 0; a < A; ++a) gv[a] = lane < keep ? gv[a] : V<T>{};
      }
      if (GB)
        for (int a = 0; a < A; ++a) ga += gv[a];
      band_3x3<T, A>(buf + j, D, dw, [&](int a, int t, V<T> v) { acc[t] += gv[a] * v; });
    }
  }
  for (int t = 0; t < 9; ++t) sum[t] += acc[t];
  if (GB) *gsum += ga;
  return g0;
}

// sum[t] += gb . buf[off[t]:] over len values (see dw_flat_dot): 3x3 taps by bands of rows,
// the rest (and other tap counts) one row at a time
template <class T, bool GB = false>
void dw_flat_dots(const Geo& g, const T* gb, const T* buf, const int64_t* off, int64_t len,
                  V<T>* sum, V<T>* gsum = nullptr, const T* pf = nullptr) {
  int64_t done = 0;
  if (g.R == 3 && g.S == 3)
    done = dw_flat_dot_3x3<T, GB>(gb, buf, off[3], off[1], len, sum, gsum, pf);
  if (done >= len) return;
  const int64_t nt = g.R * g.S;
  int64_t rest[DW_FLAT_MAX_TAPS];
  for (int64_t t = 0; t < nt; ++t) rest[t] = off[t] + done;
  with_taps(nt, [&](auto nt_tag) {
    dw_flat_dot<T, decltype(nt_tag)::value, GB>(gb + done, buf, rest, len - done, sum, gsum,
                                                pf ? pf + done : nullptr);
  });
}

template <class T>
void dw_flat_wgrad(const Geo& g, const T* gy, Strides gys, const T* x, Strides xs, T* gw,
                   int64_t grp, int64_t k0, int64_t k1, T* scratch) {
  constexpr int64_t L = NV<T>;
  const int64_t wp = dw_flat_pitch<T>(g);
  const int64_t nr = g.P + (g.R - 1) * g.dh;
  const int64_t slack = dw_flat_slack<T>(g);
  const int64_t nt = g.R * g.S;
  T* buf = scratch;
  T* gb = buf + nr * wp + slack;
  T* sum = gb + g.P * wp + DW_FLAT_U * L + 2 * L;  // by lanes: [channel][tap][L]
  for (int64_t i = 0; i < (k1 - k0) * DW_FLAT_MAX_TAPS * L; ++i) sum[i] = 0;
  int64_t off[DW_FLAT_MAX_TAPS];
  dw_flat_offsets(g, wp, off);
  const int64_t len = g.P * wp;
  // gy's gap columns and the block overrun read zeros
  for (int64_t p = 0; p < g.P; ++p) zero_row(gb + p * wp + g.Q, wp - g.Q);
  zero_row(gb + len, DW_FLAT_U * L + 2 * L);
  for (int64_t n = 0; n < g.N; ++n) {
    dw_flat_pack(g, x + n * xs.n + grp * xs.c, xs, 0, nr, wp, slack, buf);
    for (int64_t kk = k0; kk < k1; ++kk) {
      const T* src = gy + n * gys.n + (grp * g.Kg + kk) * gys.c;
      for (int64_t p = 0; p < g.P; ++p) {
        T* d = gb + p * wp;
        const T* sr = src + p * gys.h;
        if (gys.w == 1) {
          int64_t q = 0;
          for (; q + L <= g.Q; q += L) st(d + q, ld(sr + q));
          for (; q < g.Q; ++q) d[q] = sr[q];
        } else {
          for (int64_t q = 0; q < g.Q; ++q) d[q] = sr[q * gys.w];
        }
      }
      T* sk = sum + (kk - k0) * DW_FLAT_MAX_TAPS * L;
      // prefetch: the x plane the next pass packs (next image, else the next unit's channel)
      const T* pf = nullptr;
      if (kk + 1 == k1 && xs.w == 1 && xs.h == g.W)
        pf = n + 1 < g.N ? x + (n + 1) * xs.n + grp * xs.c : x + n * xs.n + (grp + 1) * xs.c;
      V<T> acc[DW_FLAT_MAX_TAPS];
      for (int64_t t = 0; t < nt; ++t) acc[t] = ld(sk + t * L);
      dw_flat_dots<T>(g, gb, buf, off, len, acc, nullptr, pf);
      for (int64_t t = 0; t < nt; ++t) st(sk + t * L, acc[t]);
    }
  }
  for (int64_t kk = k0; kk < k1; ++kk)
    for (int64_t t = 0; t < nt; ++t)
      gw[(grp * g.Kg + kk) * nt + t] = hsum<T>(ld(sum + ((kk - k0) * DW_FLAT_MAX_TAPS + t) * L));
}

// Fused depthwise backward (multiplier 1, stride 1, "same" size: P == H, Q == W, so the input
// gradient is a forward of gy with the flipped weights and the same padding): per channel,
// gy is packed once and serves the input gradient (stencil over the packed window), the weight
// gradient (its interior, at the same pitch as the packed x, is exactly the gy block
// dw_flat_dot wants: zeros in the gap columns) and the bias gradient. gy and x are read from
// memory once instead of three and two times. Channels [c0, c1), summed over the batch; gx,
// gw ([C][R * S]) and gb (nullable) written for those channels. wf: the flipped weights.
// A plane is worked in chunks of a few output rows (3x3 taps; else the whole plane at once):
// pack the gy and x rows the chunk reads (its halo again each chunk), stencil, store, dots,
// all within a few KB that stay in L1. Whole planes (66 KB at 129^2) went through the L2
// between the steps (2 threads, interleaved: 2x304x129^2 7.8 -> 6.4 ms, 2x96x257^2 12.2 -> 9.3,
// 2x32x257^2 3.9 -> 2.8, 728x65^2 d2 2.1 -> 1.8).
// The sums of the weight and bias gradients stay in vectors until the channel is done.

// output rows a chunk of dw_flat_bwd: whole bands of dw_flat_block_3x3 / dw_flat_dot_3x3 (so
// that the dots of one chunk never sum a value of the next: only the last chunk takes their
// one-row tail), about 4 KB of a packed buffer (8 KB ran no faster, a whole plane slower)
template <class T>
int64_t dw_flat_bwd_chunk(const Geo& g) {
  const int64_t band = 4 * g.dh;
  const int64_t nr = g.P + (g.R - 1) * g.dh;
  if (g.R != 3 || g.S != 3 || nr * dw_flat_pitch<T>(g) * int64_t(sizeof(T)) <= 8192) return g.P;
  const int64_t rows = (4096 / int64_t(sizeof(T))) / dw_flat_pitch<T>(g);
  return rows <= band ? band : rows / band * band;
}

// packed rows a chunk's kernels may read past its last output row: the taps' reach and the
// blocks' overrun (values the next chunk recomputes, or that a dot masks to zero: packed all
// the same, as memory never packed could hold a NaN, and NaN * 0 is NaN)
template <class T>
int64_t dw_flat_bwd_ahead(const Geo& g) {
  const int64_t wp = dw_flat_pitch<T>(g);
  return (g.R - 1) * g.dh + (dw_flat_slack<T>(g) + wp - 1) / wp;
}

template <class T>
int64_t dw_flat_bwd_scratch(const Geo& g) {
  const int64_t wp = dw_flat_pitch<T>(g);
  const int64_t chunk = dw_flat_bwd_chunk<T>(g);
  const int64_t win = (chunk + dw_flat_bwd_ahead<T>(g)) * wp + dw_flat_slack<T>(g);
  return 2 * win + chunk * wp + DW_FLAT_U * NV<T> + 2 * NV<T>;
}

template <class T>
void dw_flat_bwd(const Geo& g, const T* gy, Strides gys, const T* x, Strides xs, const T* wf,
                 T* gx, Strides gxs, T* gw, T* gb, int64_t c0, int64_t c1, T* scratch) {
  constexpr int64_t L = NV<T>;
  const int64_t wp = dw_flat_pitch<T>(g);
  const int64_t nr = g.P + (g.R - 1) * g.dh;
  const int64_t slack = dw_flat_slack<T>(g);
  const int64_t nt = g.R * g.S;
  const int64_t chunk = dw_flat_bwd_chunk<T>(g);
  const int64_t ahead = dw_flat_bwd_ahead<T>(g);
  // a chunk's packed gy and x rows (padded rows p0 .. p1 + ahead), then its flat output
  T* gbuf = scratch;
  T* xbuf = gbuf + (chunk + ahead) * wp + slack;
  T* out = xbuf + (chunk + ahead) * wp + slack;
  int64_t off[DW_FLAT_MAX_TAPS];
  dw_flat_offsets(g, wp, off);
  const int64_t ginner = g.ph * wp + g.pw;  // gy[p0 + p][q] at gbuf[ginner + p * wp + q]
  // The next plane's gy, x and gx rows p0.. are prefetched into the L2 while chunk p0.. of this
  // one is worked (dense planes only; 2 threads without: 2x304x129^2 6.7 -> 9.8 ms, 2x960x33^2
  // 1.3 -> 2.2 ms): a plane spans a few pages, at each of which the hardware prefetchers restart.
  const bool dense = gys.w == 1 && gys.h == g.W && xs.w == 1 && xs.h == g.W &&
                     (!gx || (gxs.w == 1 && gxs.h == g.W));
  for (int64_t c = c0; c < c1; ++c) {
    V<T> sum[DW_FLAT_MAX_TAPS], bsum = V<T>{};  // by lanes
    for (int64_t t = 0; t < nt; ++t) sum[t] = V<T>{};
    for (int64_t n = 0; n < g.N; ++n) {
      const T* gyc = gy + n * gys.n + c * gys.c;
      const T* xc = x + n * xs.n + c * xs.c;
      T* gxc = gx ? gx + n * gxs.n + c * gxs.c : nullptr;
      const int64_t cn = n + 1 < g.N ? c : c + 1, nn = n + 1 < g.N ? n + 1 : 0;
      const bool next = dense && cn < c1;
      for (int64_t p0 = 0; p0 < g.P; p0 += chunk) {
        const int64_t p1 = p0 + chunk < g.P ? p0 + chunk : g.P;
        const int64_t upto = p1 + ahead < nr ? p1 + ahead : nr;
        const int64_t z = upto == nr ? slack : 0;
        dw_flat_pack(g, gyc, gys, p0, upto - p0, wp, z, gbuf);
        if (gw) dw_flat_pack(g, xc, xs, p0, upto - p0, wp, z, xbuf);
        const int64_t len = (p1 - p0) * wp;
        const int64_t at = p0 * g.W;  // row p0 of a dense plane
        const T* pgy = next ? gy + nn * gys.n + cn * gys.c + at : nullptr;
        const T* px = next && gw ? x + nn * xs.n + cn * xs.c + at : nullptr;
        T* pgx = next && gx ? gx + nn * gxs.n + cn * gxs.c + at : nullptr;
        if (gx) {
          dw_flat_stencil<T>(g, gbuf, off, wf + c * nt, len, out, pgy, pgx);
          dw_flat_store(out, wp, g.W, T(0), false, gxc + p0 * gxs.h, gxs, 0, p1 - p0);
        }
        if (gw) {
          dw_flat_dots<T, true>(g, gbuf + ginner, xbuf, off, len, sum, &bsum, gx ? px : pgy);
        } else if (gb) {
          const T* gi = gbuf + ginner;
          int64_t j = 0;
          for (; j + L <= len; j += L) bsum += ld(gi + j);
          for (; j < len; ++j) bsum[0] += gi[j];
        }
      }
    }
    if (gw)
      for (int64_t t = 0; t < nt; ++t) gw[c * nt + t] = hsum<T>(sum[t]);
    if (gb) gb[c] = hsum<T>(bsum);
  }
}

// ------------------------------------------------------------------------------------------
// input gradient by scatter (any stride): gy rows are added, times each tap weight, into a
// packed window of gx rows; the window is then unpacked into gx.

template <class T>
inline void axpy(T* d, T a, const T* s, int64_t n) {
  int64_t i = 0;
  for (; i + NV<T> <= n; i += NV<T>) st(d + i, ld(d + i) + a * ld(s + i));
  for (; i < n; ++i) d[i] += a * s[i];
}

template <class T>
int64_t dgrad_scatter_scratch(const Geo& g, int64_t channels) {
  const int64_t Wph = packed_width(g, NV<T>);
  return channels * packed_rows(g, g.P) * g.sw * Wph + g.Q + NV<T>;
}

template <class T>
void dgrad_scatter(const Geo& g, const T* gy, Strides gys, const T* w, T* gx, Strides gxs,
                   int64_t n, int64_t grp, int64_t c0, int64_t c1, T* scratch) {
  const int64_t Wph = packed_width(g, NV<T>);
  const int64_t nr = packed_rows(g, g.P);
  const int64_t rowlen = g.sw * Wph;
  const int64_t plane = nr * rowlen;
  const int64_t nc = c1 - c0;
  T* buf = scratch;
  T* row = scratch + nc * plane;
  __builtin_memset(buf, 0, sizeof(T) * nc * plane);
  const int64_t RS = g.R * g.S;
  for (int64_t kk = 0; kk < g.Kg; ++kk) {
    const int64_t k = grp * g.Kg + kk;
    for (int64_t p = 0; p < g.P; ++p) {
      const T* src = gy + n * gys.n + k * gys.c + p * gys.h;
      if (gys.w != 1) {
        for (int64_t q = 0; q < g.Q; ++q) row[q] = src[q * gys.w];
        src = row;
      }
      for (int64_t c = c0; c < c1; ++c) {
        const T* wk = w + (k * g.Cg + c) * RS;
        T* pl = buf + (c - c0) * plane;
        for (int64_t r = 0; r < g.R; ++r) {
          T* drow = pl + (p * g.sh + r * g.dh) * rowlen;
          for (int64_t s = 0; s < g.S; ++s) {
            const int64_t o = s * g.dw;
            axpy(drow + (o % g.sw) * Wph + o / g.sw, wk[r * g.S + s], src, g.Q);
          }
        }
      }
    }
  }
  // unpack: gx row i is padded row i + ph, column j is padded column j + pw
  const int64_t wp = (g.Q - 1) * g.sw + (g.S - 1) * g.dw + 1;
  for (int64_t c = c0; c < c1; ++c) {
    const T* pl = buf + (c - c0) * plane;
    T* dst = gx + n * gxs.n + (grp * g.Cg + c) * gxs.c;
    for (int64_t i = 0; i < g.H; ++i) {
      T* drow = dst + i * gxs.h;
      const int64_t pi = i + g.ph;
      if (pi >= nr) {
        for (int64_t j = 0; j < g.W; ++j) drow[j * gxs.w] = 0;
        continue;
      }
      const T* prow = pl + pi * rowlen;
      if (g.sw == 1 && gxs.w == 1) {
        int64_t m = g.W;
        if (g.pw + m > wp) m = wp - g.pw > 0 ? wp - g.pw : 0;
        __builtin_memcpy(drow, prow + g.pw, sizeof(T) * m);
        for (int64_t j = m; j < g.W; ++j) drow[j] = 0;
      } else if (g.sw == 2 && gxs.w == 1) {
        // the two column phases interleaved: a grouped store the compiler vectorises with
        // shuffles (MobileNet's stride-2 layers); padded column pc = j + pw, 0 from wp on
        const T* __restrict ev = prow;
        const T* __restrict od = prow + Wph;
        const int64_t mv = wp - g.pw < 0 ? 0 : (wp - g.pw < g.W ? wp - g.pw : g.W);
        int64_t j = 0;
        if ((g.pw & 1) && mv > 0) {
          drow[0] = od[g.pw >> 1];
          j = 1;
        }
        const int64_t base = (j + g.pw) >> 1, npair = (mv - j) / 2;
        T* __restrict d = drow + j;
        for (int64_t k = 0; k < npair; ++k) {
          d[2 * k] = ev[base + k];
          d[2 * k + 1] = od[base + k];
        }
        for (j += 2 * npair; j < mv; ++j) {
          const int64_t pc = j + g.pw;
          drow[j] = (pc & 1) ? od[pc >> 1] : ev[pc >> 1];
        }
        for (; j < g.W; ++j) drow[j] = 0;
      } else {
        // column j = m * sw + f - pw for phase f (no division per element)
        for (int64_t f = 0; f < g.sw; ++f) {
          const T* ph = prow + f * Wph;
          int64_t m = g.pw - f > 0 ? (g.pw - f + g.sw - 1) / g.sw : 0;
          for (int64_t j = m * g.sw + f - g.pw; j < g.W; j += g.sw, ++m)
            drow[j * gxs.w] = m * g.sw + f < wp ? ph[m] : T(0);
        }
      }
    }
  }
}

// ------------------------------------------------------------------------------------------
// Depthwise input gradient, stride 2, dilation 1, multiplier 1, taps <= 3x3 (dw_s2_dgrad_ok),
// gx rows contiguous (gxs.w == 1), by gathering: gx row i takes the taps r with i + ph - r even
// (gy row (i + ph - r) / 2), its even / odd columns j = 2m + f the taps s with f + pw - s even
// (gy column m + (f + pw - s) / 2), so each column phase is a stencil of at most 2 x 2 taps
// along m, computed a vector at a time and interleaved into gx. gx is written once, no zeroing, no packed window of gx (the scatter's
// memset, nine read-modify-write passes and unpacking). gy's plane is packed first with zero
// columns on both sides, so the stencil needs no column bounds.

struct DwS2Cols {
  int64_t padl, pitch, m[2];  // zero columns before gy's, packed row pitch, columns per phase
  int64_t nt[2], s[2][2], o[2][2];  // per phase: taps, their s and gy column offset
};

template <class T>
DwS2Cols dw_s2_cols(const Geo& g) {
  DwS2Cols c{};
  int64_t omin = 0, hi = 0;
  for (int64_t f = 0; f < 2; ++f) {
    c.m[f] = (g.W - f + 1) / 2;
    for (int64_t s = 0; s < g.S; ++s) {
      if ((f + g.pw - s) & 1) continue;
      const int64_t o = (f + g.pw - s) / 2;
      c.s[f][c.nt[f]] = s;
      c.o[f][c.nt[f]++] = o;
      omin = o < omin ? o : omin;
      if (c.m[f] - 1 + o > hi) hi = c.m[f] - 1 + o;
    }
  }
  c.padl = -omin;
  // the last vector of a phase reads up to NV - 1 columns past its last one
  const int64_t padr = (hi > g.Q - 1 ? hi - (g.Q - 1) : 0) + NV<T>;
  c.pitch = c.padl + g.Q + padr;
  return c;
}

template <class T>
int64_t dw_s2_dgrad_scratch(const Geo& g) {
  const DwS2Cols c = dw_s2_cols<T>(g);
  // packed gy plane, then the two phase rows (rounded up to whole vectors)
  return g.P * c.pitch + 2 * (c.m[0] + NV<T>);
}

// v[m] = sum over the taps (rows x columns) of w * row[m + o], m < n (whole vectors)
template <class T, int NR, int NC>
DILCONV_INLINE void dw_s2_phase(const T* const* rows, const T* const* wr, const int64_t* s,
                                const int64_t* o, int64_t n, T* v) {
  constexpr int64_t L = NV<T>;
  V<T> wv[NR][NC];
  for (int a = 0; a < NR; ++a)
    for (int b = 0; b < NC; ++b) wv[a][b] = splat<T>(wr[a][s[b]]);
  for (int64_t m = 0; m < n; m += L) {
    V<T> acc = V<T>{};
    for (int a = 0; a < NR; ++a)
      for (int b = 0; b < NC; ++b) acc += wv[a][b] * ld(rows[a] + m + o[b]);
    st(v + m, acc);
  }
}

template <class T>
void dw_s2_dgrad(const Geo& g, const T* gy, Strides gys, const T* w, T* gx, Strides gxs,
                 int64_t n, int64_t c, T* scratch) {
  const DwS2Cols cols = dw_s2_cols<T>(g);
  const int64_t RS = g.R * g.S;
  T* buf = scratch;
  T* ph[2] = {buf + g.P * cols.pitch, buf + g.P * cols.pitch + cols.m[0] + NV<T>};
  const T* src = gy + n * gys.n + c * gys.c;
  for (int64_t p = 0; p < g.P; ++p) {
    T* d = buf + p * cols.pitch;
    const T* sr = src + p * gys.h;
    for (int64_t q = 0; q < cols.padl; ++q) d[q] = 0;
    d += cols.padl;
    if (gys.w == 1) {
      int64_t q = 0;
      for (; q + NV<T> <= g.Q; q += NV<T>) st(d + q, ld(sr + q));
      for (; q < g.Q; ++q) d[q] = sr[q];
    } else {
      for (int64_t q = 0; q < g.Q; ++q) d[q] = sr[q * gys.w];
    }
    zero_row(d + g.Q, cols.pitch - cols.padl - g.Q);
  }
  const T* wk = w + c * RS;
  for (int64_t i = 0; i < g.H; ++i) {
    const T* rows[2];
    const T* wr[2];
    int nr = 0;
    for (int64_t r = 0; r < g.R; ++r) {
      const int64_t t = i + g.ph - r;
      if ((t & 1) || t < 0 || t / 2 >= g.P) continue;
      rows[nr] = buf + (t / 2) * cols.pitch + cols.padl;
      wr[nr++] = wk + r * g.S;
    }
    T* d = gx + n * gxs.n + c * gxs.c + i * gxs.h;
    for (int64_t f = 0; f < 2; ++f) {
      const int nc = static_cast<int>(cols.nt[f]);
      const int64_t m = cols.m[f];
      if (nr == 0 || nc == 0) {
        zero_row(ph[f], m);
      } else if (nr == 1) {
        if (nc == 1) dw_s2_phase<T, 1, 1>(rows, wr, cols.s[f], cols.o[f], m, ph[f]);
        else dw_s2_phase<T, 1, 2>(rows, wr, cols.s[f], cols.o[f], m, ph[f]);
      } else {
        if (nc == 1) dw_s2_phase<T, 2, 1>(rows, wr, cols.s[f], cols.o[f], m, ph[f]);
        else dw_s2_phase<T, 2, 2>(rows, wr, cols.s[f], cols.o[f], m, ph[f]);
      }
    }
    // interleave the phases: a grouped store the compiler vectorises with shuffles
    const T* __restrict ev = ph[0];
    const T* __restrict od = ph[1];
    T* __restrict dr = d;
    const int64_t npair = cols.m[1];
    for (int64_t k = 0; k < npair; ++k) {
      dr[2 * k] = ev[k];
      dr[2 * k + 1] = od[k];
    }
    if (cols.m[0] > npair) dr[2 * npair] = ev[npair];
  }
}

// ------------------------------------------------------------------------------------------
// weight gradient: dot products of gy rows with shifted packed x rows; the gy vector is loaded
// once for a run of up to 4 horizontal taps.

template <class T, int SB>
DILCONV_INLINE void wgrad_taps(const T* a, const T* b, const int64_t* boff, int64_t nvec, V<T> (&acc)[SB]) {
  for (int64_t v = 0; v < nvec; ++v) {
    const V<T> av = ld(a + v * NV<T>);
    for (int sb = 0; sb < SB; ++sb) acc[sb] += av * ld(b + boff[sb] + v * NV<T>);
  }
}

// acc[t] += a . b[t] over nvec vectors, for NT taps at once: NT independent sums (one sum per
// tap row and a loop per row ran 3 dependent chains of FMAs: latency-bound)
template <class T, int NT>
DILCONV_INLINE void wgrad_row_taps(const T* a, const T* const* b, int64_t nvec, V<T> (&acc)[NT]) {
  for (int64_t v = 0; v < nvec; ++v) {
    const V<T> av = ld(a + v * NV<T>);
#pragma GCC unroll 9
    for (int t = 0; t < NT; ++t) acc[t] += av * ld(b[t] + v * NV<T>);
  }
}

template <class T>
int64_t wgrad_scratch(const Geo& g, int64_t channels) {
  const int64_t Wph = packed_width(g, NV<T>);
  const int64_t Qr = (g.Q + NV<T> - 1) / NV<T> * NV<T>;
  return g.Cg * packed_rows(g, g.P) * g.sw * Wph + channels * g.P * Qr +
         channels * g.Cg * g.R * g.S;
}

template <class T>
void wgrad(const Geo& g, const T* gy, Strides gys, const T* x, Strides xs, T* gw, int64_t grp,
           int64_t k0, int64_t k1, T* scratch) {
  const int64_t Wph = packed_width(g, NV<T>);
  const int64_t nr = packed_rows(g, g.P);
  const int64_t rowlen = g.sw * Wph;
  const int64_t plane = nr * rowlen;
  const int64_t Qr = (g.Q + NV<T> - 1) / NV<T> * NV<T>;
  const int64_t nvec = Qr / NV<T>;
  const int64_t nk = k1 - k0;
  const int64_t RS = g.R * g.S;
  T* xb = scratch;
  T* gb = xb + g.Cg * plane;
  T* sum = gb + nk * g.P * Qr;
  for (int64_t i = 0; i < nk * g.Cg * RS; ++i) sum[i] = 0;
  for (int64_t n = 0; n < g.N; ++n) {
    for (int64_t c = 0; c < g.Cg; ++c)
      pack_plane(x + n * xs.n + (grp * g.Cg + c) * xs.c, xs.h, xs.w, g.H, g.W, 0, nr, g.ph, g.pw,
                 g.sw, Wph, xb + c * plane);
    for (int64_t kk = 0; kk < nk; ++kk) {
      const T* src = gy + n * gys.n + (grp * g.Kg + k0 + kk) * gys.c;
      for (int64_t p = 0; p < g.P; ++p) {
        T* d = gb + (kk * g.P + p) * Qr;
        const T* sr = src + p * gys.h;
        int64_t q = 0;
        if (gys.w == 1)
          for (; q + NV<T> <= g.Q; q += NV<T>) st(d + q, ld(sr + q));
        for (; q < g.Q; ++q) d[q] = sr[q * gys.w];
        for (; q < Qr; ++q) d[q] = 0;
      }
    }
    // one input channel (depthwise): the x plane packed next (next image, else the next
    // group's) is prefetched into the L2 while the sums run, spread over the tap rows' passes,
    // as the flat kernels do (packing waited on memory: half of a stride-2 weight gradient)
    const T* pf = nullptr;
    if (g.Cg == 1 && xs.w == 1)
      pf = n + 1 < g.N ? x + (n + 1) * xs.n + grp * xs.c
                       : grp + 1 < g.G ? x + (grp + 1) * xs.c : nullptr;
    if (RS <= 9) {  // every tap's sum in a register, one pass over the rows
      int64_t boff[9];
      for (int64_t r = 0; r < g.R; ++r)
        for (int64_t s = 0; s < g.S; ++s) {
          const int64_t o = s * g.dw;
          boff[r * g.S + s] = r * g.dh * rowlen + (o % g.sw) * Wph + o / g.sw;
        }
      with_taps(RS, [&](auto nt_tag) {
        constexpr int NT = decltype(nt_tag)::value;
        for (int64_t kk = 0; kk < nk; ++kk)
          for (int64_t c = 0; c < g.Cg; ++c) {
            V<T> acc[NT];
            for (int t = 0; t < NT; ++t) acc[t] = V<T>{};
            for (int64_t p = 0; p < g.P; ++p) {
              if (pf && kk == 0)
                for (int64_t i = p * g.sh; i < (p + 1) * g.sh && i < g.H; ++i)
                  for (int64_t j = 0; j < g.W; j += 64 / sizeof(T))
                    __builtin_prefetch(pf + i * xs.h + j, 0, 2);
              const T* row = xb + c * plane + p * g.sh * rowlen;
              const T* b[NT];
              for (int t = 0; t < NT; ++t) b[t] = row + boff[t];
              wgrad_row_taps<T, NT>(gb + (kk * g.P + p) * Qr, b, nvec, acc);
            }
            T* out = sum + (kk * g.Cg + c) * RS;
            for (int t = 0; t < NT; ++t) out[t] += hsum<T>(acc[t]);
          }
      });
      continue;
    }
    for (int64_t kk = 0; kk < nk; ++kk)
      for (int64_t c = 0; c < g.Cg; ++c)
        for (int64_t r = 0; r < g.R; ++r)
          for (int64_t s0 = 0; s0 < g.S; s0 += 4) {
            const int64_t sb = g.S - s0 < 4 ? g.S - s0 : 4;
            int64_t boff[4];
            for (int64_t j = 0; j < sb; ++j) {
              const int64_t o = (s0 + j) * g.dw;
              boff[j] = (o % g.sw) * Wph + o / g.sw;
            }
            T* out = sum + ((kk * g.Cg + c) * g.R + r) * g.S + s0;
            auto go = [&](auto sb_tag) {
              constexpr int SB = decltype(sb_tag)::value;
              V<T> acc[SB];
              for (int j = 0; j < SB; ++j) acc[j] = V<T>{};
              for (int64_t p = 0; p < g.P; ++p) {
                if (pf && kk == 0 && s0 == 0)
                  for (int64_t i = p * g.sh; i < (p + 1) * g.sh && i < g.H; ++i)
                    if (i % g.R == r)
                      for (int64_t j = 0; j < g.W; j += 64 / sizeof(T))
                        __builtin_prefetch(pf + i * xs.h + j, 0, 2);
                wgrad_taps<T, SB>(gb + (kk * g.P + p) * Qr,
                                  xb + c * plane + (p * g.sh + r * g.dh) * rowlen, boff, nvec, acc);
              }
              for (int j = 0; j < SB; ++j) out[j] += hsum<T>(acc[j]);
            };
            switch (sb) {
              case 1: go(Int<1>{}); break;
              case 2: go(Int<2>{}); break;
              case 3: go(Int<3>{}); break;
              default: go(Int<4>{}); break;
            }
          }
  }
  for (int64_t kk = 0; kk < nk; ++kk)
    for (int64_t i = 0; i < g.Cg * RS; ++i)
      gw[(grp * g.Kg + k0 + kk) * g.Cg * RS + i] = sum[kk * g.Cg * RS + i];
}

// ------------------------------------------------------------------------------------------
// im2col / col2im for the GEMM paths

template <class T>
void im2col(const Geo& g, const T* x, Strides xs, int64_t n, int64_t grp, int64_t c, int64_t p0,
            int64_t p1, T* col) {
  const T* src = x + n * xs.n + (grp * g.Cg + c) * xs.c;
  const int64_t len = (p1 - p0) * g.Q;
  for (int64_t r = 0; r < g.R; ++r)
    for (int64_t s = 0; s < g.S; ++s) {
      T* d = col + ((c * g.R + r) * g.S + s) * len;
      const int64_t o = s * g.dw - g.pw;
      const auto [qlo, qhi] = tap_columns(g, s);
      for (int64_t p = p0; p < p1; ++p) {
        T* dr = d + (p - p0) * g.Q;
        const int64_t hi = p * g.sh + r * g.dh - g.ph;
        if (hi < 0 || hi >= g.H) {
          for (int64_t q = 0; q < g.Q; ++q) dr[q] = 0;
          continue;
        }
        const T* sr = src + hi * xs.h + o * xs.w;
        for (int64_t q = 0; q < qlo; ++q) dr[q] = 0;
        if (g.sw == 1 && xs.w == 1)
          __builtin_memcpy(dr + qlo, sr + qlo, sizeof(T) * (qhi - qlo));
        else
          for (int64_t q = qlo; q < qhi; ++q) dr[q] = sr[q * g.sw * xs.w];
        for (int64_t q = qhi; q < g.Q; ++q) dr[q] = 0;
      }
    }
}

template <class T>
void col2im(const Geo& g, const T* col, T* gx, Strides gxs, int64_t n, int64_t grp, int64_t c,
            int64_t p0, int64_t p1) {
  T* dst = gx + n * gxs.n + (grp * g.Cg + c) * gxs.c;
  const int64_t len = (p1 - p0) * g.Q;
  for (int64_t r = 0; r < g.R; ++r)
    for (int64_t s = 0; s < g.S; ++s) {
      const T* sc = col + ((c * g.R + r) * g.S + s) * len;
      const int64_t o = s * g.dw - g.pw;
      const auto [qlo, qhi] = tap_columns(g, s);
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t hi = p * g.sh + r * g.dh - g.ph;
        if (hi < 0 || hi >= g.H) continue;
        T* dr = dst + hi * gxs.h + o * gxs.w;
        const T* sr = sc + (p - p0) * g.Q;
        if (g.sw == 1 && gxs.w == 1)
          axpy<T>(dr + qlo, T(1), sr + qlo, qhi - qlo);
        else
          for (int64_t q = qlo; q < qhi; ++q) dr[q * g.sw * gxs.w] += sr[q];
      }
    }
}

// d[0, n) = s[0, n), or zeros where s is null
template <class T>
DILCONV_INLINE void copy_or_zero(T* d, const T* s, int64_t n) {
  if (!s) return zero_row(d, n);
  constexpr int64_t L = NV<T>;
  int64_t c = 0;
  for (; c + L <= n; c += L) st(d + c, ld(s + c));
  for (; c < n; ++c) d[c] = s[c];
}

// Where the width's dilation is 1 and x holds only the group's channels (no groups), a pixel's
// S taps of a tap row are S * Cg consecutive values of x, copied at once (FCN's 21ch 4x4: 84
// values where four copies of 16 + 5 had gone a value at a time past the vector).
template <class T>
void im2col_nhwc(const Geo& g, const T* x, Strides xs, int64_t n, int64_t grp, int64_t p0,
                 int64_t pa, int64_t pb, T* col) {
  const int64_t Cg = g.Cg, sc = g.S * Cg, rsc = g.R * sc;
  const T* src = x + n * xs.n + grp * Cg;
  const bool runs = g.dw == 1 && xs.w == Cg;
  for (int64_t p = pa; p < pb; ++p) {
    T* rowc = col + (p - p0) * g.Q * rsc;
    for (int64_t r = 0; r < g.R; ++r) {
      const int64_t hi = p * g.sh + r * g.dh - g.ph;
      const bool inside = hi >= 0 && hi < g.H;
      for (int64_t q = 0; q < g.Q; ++q) {
        T* d = rowc + q * rsc + r * sc;
        const int64_t j0 = q * g.sw - g.pw;  // tap 0's column
        if (!inside) {
          copy_or_zero<T>(d, nullptr, sc);
        } else if (runs && j0 >= 0 && j0 + g.S - 1 < g.W) {
          copy_or_zero(d, src + hi * xs.h + j0 * xs.w, sc);
        } else {
          for (int64_t s = 0; s < g.S; ++s) {
            const int64_t j = j0 + s * g.dw;
            copy_or_zero(d + s * Cg, j >= 0 && j < g.W ? src + hi * xs.h + j * xs.w : nullptr, Cg);
          }
        }
      }
    }
  }
}

// d[0, n) += s[0, n)
template <class T>
DILCONV_INLINE void add_to(T* d, const T* s, int64_t n) {
  constexpr int64_t L = NV<T>;
  int64_t c = 0;
  for (; c + L <= n; c += L) st(d + c, ld(d + c) + ld(s + c));
  for (; c < n; ++c) d[c] += s[c];
}

// (runs of S * Cg values as im2col_nhwc's)
template <class T>
void col2im_nhwc(const Geo& g, const T* col, T* gx, Strides gxs, int64_t n, int64_t grp,
                 int64_t p0, int64_t p1, int64_t i0, int64_t i1) {
  const int64_t Cg = g.Cg, sc = g.S * Cg, rsc = g.R * sc;
  const bool runs = g.dw == 1 && gxs.w == Cg;
  for (int64_t i = i0; i < i1; ++i) {
    T* row = gx + n * gxs.n + i * gxs.h + grp * Cg;
    for (int64_t r = 0; r < g.R; ++r) {
      const int64_t t = i + g.ph - r * g.dh;  // p * sh for the gy row p that reaches row i
      if (t < 0 || t % g.sh) continue;
      const int64_t p = t / g.sh;
      if (p < p0 || p >= p1) continue;
      const T* cr = col + (p - p0) * g.Q * rsc + r * sc;
      for (int64_t q = 0; q < g.Q; ++q) {
        const T* v = cr + q * rsc;
        const int64_t j0 = q * g.sw - g.pw;  // tap 0's column
        if (runs && j0 >= 0 && j0 + g.S - 1 < g.W) {
          add_to(row + j0 * gxs.w, v, sc);
          continue;
        }
        for (int64_t s = 0; s < g.S; ++s) {
          const int64_t j = j0 + s * g.dw;
          if (j >= 0 && j < g.W) add_to(row + j * gxs.w, v + s * Cg, Cg);
        }
      }
    }
  }
}

// ------------------------------------------------------------------------------------------
// depthwise (multiplier 1) in channels-last: vectors run along the channels. A row of C channels
// is covered by vectors starting at 0, L, 2L, ... and, when L does not divide C, one last vector
// starting at C - L that overlaps its neighbour: recomputing an output is harmless; in the weight
// gradient the overlapped lanes of that vector are masked out of the sum.

template <class T>
inline int64_t vstart(int64_t v, int64_t C) {
  const int64_t s = v * NV<T>;
  return s + NV<T> > C ? C - NV<T> : s;
}

// Prefetches into the L2 values [lo, hi] (hi included) of n pixels `step` apart from p: the
// slice of the next chunk of pixels that the channel block now computed will read (W: to be
// written). A chunk touches a block's few lines in each of dozens of pixels, a few KB apart,
// which the hardware prefetchers do not follow; from memory it ran latency-bound (2 threads,
// caches flushed before each call, AVX-512 Zen 4: 728ch 65^2 d2 forward 2.35 -> 1.70 ms, 96ch
// 257^2 3.15 -> 2.39, 144ch 129^2 1.34 -> 0.87; weight gradient 728ch 2.2 -> 1.55 ms).
template <bool W, class T>
DILCONV_INLINE void prefetch_slices(const T* p, int64_t step, int64_t n, int64_t lo, int64_t hi) {
  constexpr int64_t line = 64 / sizeof(T);
  for (int64_t i = 0; i < n; ++i, p += step) {
    for (int64_t o = lo; o < hi; o += line) __builtin_prefetch(p + o, W, 2);
    __builtin_prefetch(p + hi, W, 2);
  }
}

// Whether a channels-last depthwise pass over x and y (gy and x; pixel strides xw, yw: a view of
// some of a tensor's channels spans all of its pages) streams them from memory: the two together
// beyond 20 MiB, about two thirds of this Zen 4's L3 (32 MiB a CCX; glibc reports the whole
// socket's, so no query). Below, they are mostly in the cache (a layer's input was just written
// by the layer before) and the prefetches of prefetch_slices cost more than they save.
template <class T>
inline bool nhwc_streams(const Geo& g, int64_t xw, int64_t yw) {
  return g.N * (g.H * g.W * xw + g.P * g.Q * yw) * int64_t(sizeof(T)) > (int64_t(20) << 20);
}

// y[c] = act(bias[c] + sum_t w[wo[t] + c] * x[xo[t] + c]) for one pixel, all channels
template <class T, int U>
DILCONV_INLINE void nhwc_chunk(const T* x, const int64_t* xo, const T* w, const int64_t* wo, int64_t nt,
                       const T* bias, Act act, T* y, const int64_t* cs) {
  V<T> acc[U];
  for (int u = 0; u < U; ++u) acc[u] = bias ? ld(bias + cs[u]) : V<T>{};
  for (int64_t t = 0; t < nt; ++t) {
    const T* xp = x + xo[t];
    const T* wp = w + wo[t];
    for (int u = 0; u < U; ++u) acc[u] += ld(wp + cs[u]) * ld(xp + cs[u]);
  }
  for (int u = 0; u < U; ++u) st(y + cs[u], act ? act_v<T>(act, acc[u]) : acc[u]);
}

template <class T>
void nhwc_pixel(int64_t C, const T* x, const int64_t* xo, const T* w, const int64_t* wo, int64_t nt,
                const T* bias, Act act, T* y) {
  if (C < NV<T>) {
    for (int64_t c = 0; c < C; ++c) {
      T a = bias ? bias[c] : T(0);
      for (int64_t t = 0; t < nt; ++t) a += w[wo[t] + c] * x[xo[t] + c];
      y[c] = act ? act_s<T>(act, a) : a;
    }
    return;
  }
  const int64_t nv = (C + NV<T> - 1) / NV<T>;
  int64_t st4[4];
  for (int64_t v = 0; v < nv; v += 4) {
    const int64_t u = nv - v < 4 ? nv - v : 4;
    for (int64_t j = 0; j < u; ++j) st4[j] = vstart<T>(v + j, C);
    switch (u) {
      case 1: nhwc_chunk<T, 1>(x, xo, w, wo, nt, bias, act, y, st4); break;
      case 2: nhwc_chunk<T, 2>(x, xo, w, wo, nt, bias, act, y, st4); break;
      case 3: nhwc_chunk<T, 3>(x, xo, w, wo, nt, bias, act, y, st4); break;
      default: nhwc_chunk<T, 4>(x, xo, w, wo, nt, bias, act, y, st4); break;
    }
  }
}

// Pixels [0, nq) of nr <= 4 output rows (xr, yr apart in x and y) that all read the same NT
// taps inside the input (tap t: input at xo[t] from the pixel, weights at wt + wo[t]): the tap
// weights of a block of CB vectors stay in registers while QC pixels of each row are computed four
// at a time, then the next channel block of the same pixels (weights reloaded from L1). The
// caller passes rows of one phase (p, p + dh, p + 2 dh at stride 1), which share R - 1 of their R
// input rows: the second and third read the shared lines from L1 where a row on its own finds
// them evicted to L2 or beyond. Taps are by rows of S (xo[r * S + s]): the last of a row reads
// the input columns that the next chunk of pixels is first to read; with `pf` the next chunk's
// slices of those columns and of y are prefetched (prefetch_slices).
// Every channel block of a chunk of QC pixels before the next chunk: the rows are then read
// (and y written) front to back, which the hardware prefetchers follow; swept channel block by
// channel block across a whole row they see a stride of C elements (728ch 65^2: 1.05 -> 0.85 ms).
template <class T, int NT, int CB>
void nhwc_row_blocked(int64_t C, const T* x, const int64_t* xo, const int64_t* wo, int64_t S,
                      int64_t px, const T* wt, const T* bias, Act act, T* y, int64_t py,
                      int64_t nq, int64_t nr, int64_t xr, int64_t yr, int64_t QC, bool pf) {
  constexpr int64_t L = NV<T>;
  const int64_t nv = (C + L - 1) / L;
  for (int64_t qc = 0; qc < nq; qc += QC)
  for (int64_t v = 0; v < nv; v += CB) {
    int64_t cs[CB];
    for (int c = 0; c < CB; ++c) cs[c] = vstart<T>(v + c < nv ? v + c : nv - 1, C);
    V<T> wv[NT][CB], bv[CB];
    for (int t = 0; t < NT; ++t)
      for (int c = 0; c < CB; ++c) wv[t][c] = ld(wt + wo[t] + cs[c]);
    for (int c = 0; c < CB; ++c) bv[c] = bias ? ld(bias + cs[c]) : V<T>{};
    const int64_t qe = qc + QC < nq ? qc + QC : nq;
    const int64_t nn = (qe + QC < nq ? qe + QC : nq) - qe;  // pixels of the next chunk
    for (int64_t j = 0; j < nr; ++j) {
      const T* xj = x + j * xr;
      T* yj = y + j * yr;
      if (pf) {
        const int64_t lo = cs[0], hi = cs[CB - 1] + L - 1;
        for (int64_t t = S - 1; t < NT; t += S)
          prefetch_slices<false>(xj + qe * px + xo[t], px, nn, lo, hi);
        prefetch_slices<true>(yj + qe * py, py, nn, lo, hi);
      }
      int64_t q = qc;
      for (; q + 4 <= qe; q += 4) {
        V<T> acc[4][CB];
        for (int i = 0; i < 4; ++i)
          for (int c = 0; c < CB; ++c) acc[i][c] = bv[c];
#pragma GCC unroll 9
        for (int t = 0; t < NT; ++t) {
          const T* xp = xj + q * px + xo[t];
          for (int i = 0; i < 4; ++i)
            for (int c = 0; c < CB; ++c) acc[i][c] += wv[t][c] * ld(xp + i * px + cs[c]);
        }
        for (int i = 0; i < 4; ++i)
          for (int c = 0; c < CB; ++c)
            st(yj + (q + i) * py + cs[c], act ? act_v<T>(act, acc[i][c]) : acc[i][c]);
      }
      for (; q < qe; ++q) {
        V<T> acc[CB];
        for (int c = 0; c < CB; ++c) acc[c] = bv[c];
#pragma GCC unroll 9
        for (int t = 0; t < NT; ++t)
          for (int c = 0; c < CB; ++c) acc[c] += wv[t][c] * ld(xj + q * px + xo[t] + cs[c]);
        for (int c = 0; c < CB; ++c) st(yj + q * py + cs[c], act ? act_v<T>(act, acc[c]) : acc[c]);
      }
    }
  }
}

// The pixels nhwc_row_blocked computes, in the other loop order: for each block of four pixels
// of a row, every channel (U vectors at a time, the tap weights reloaded from L1). For pixel
// strides that are a multiple of 2 KiB (512, 1024, 2048 float channels) the blocked order keeps
// a chunk's input lines, one per pixel and tap row, live at once, and they all fall in the same
// few of L1's 64 sets: the conflicts cost it 2x (3x3 d2, AVX2 EPYC, 1 and 2 threads: 1024ch 33^2
// 0.43-0.46x of oneDNN, this order 1.10-1.25x; 2048ch 17^2 0.53x -> 1.2x; 512ch 33^2 0.51-0.57x
// -> 0.85x). Here a block holds only the lines of its own taps' pixels (tap rows x (4 + halo)
// columns) at a time, and reads each pixel front to back. Also the kernel of more than 9 taps
// (NT = 0: nt of them, not unrolled), whose weights do not fit in registers.
template <class T, int NT, int U>
void nhwc_row_channels_inner(int64_t C, const T* x, const int64_t* xo, const int64_t* wo,
                             int64_t nt, int64_t px, const T* wt, const T* bias, Act act, T* y,
                             int64_t py, int64_t nq, int64_t nr, int64_t xr, int64_t yr) {
  const int64_t nv = (C + NV<T> - 1) / NV<T>;
  const int64_t ntaps = NT ? NT : nt;
  auto block = [&](auto p_tag, const T* xq, T* yq) {
    constexpr int P = decltype(p_tag)::value;
    for (int64_t v = 0; v < nv; v += U) {
      int64_t c[U];
      for (int u = 0; u < U; ++u) c[u] = vstart<T>(v + u < nv ? v + u : nv - 1, C);
      V<T> a[P][U];
      for (int u = 0; u < U; ++u) {
        const V<T> b = bias ? ld(bias + c[u]) : V<T>{};
        for (int i = 0; i < P; ++i) a[i][u] = b;
      }
#pragma GCC unroll 9
      for (int64_t t = 0; t < ntaps; ++t)
        for (int u = 0; u < U; ++u) {
          const V<T> w = ld(wt + wo[t] + c[u]);
          for (int i = 0; i < P; ++i) a[i][u] += w * ld(xq + xo[t] + i * px + c[u]);
        }
      for (int i = 0; i < P; ++i)
        for (int u = 0; u < U; ++u) st(yq + i * py + c[u], act ? act_v<T>(act, a[i][u]) : a[i][u]);
    }
  };
  int64_t q = 0;
  for (; q + 4 <= nq; q += 4)
    for (int64_t j = 0; j < nr; ++j) block(Int<4>{}, x + j * xr + q * px, y + j * yr + q * py);
  for (; q < nq; ++q)
    for (int64_t j = 0; j < nr; ++j) block(Int<1>{}, x + j * xr + q * px, y + j * yr + q * py);
}

// Outputs that read all nine taps of a 3x3 stride-1 window, by register blocks of RB output
// rows dh apart x PB pixels dw apart, one channel vector at a time: the block's outputs read an
// (RB + 2) x (PB + 2) grid of input vectors (rows dh, pixels dw apart), each loaded once for
// every output it serves (RB = 4, PB = 4: 36 loads for 144 FMAs, where nhwc_row_blocked loads
// one vector an FMA), with the tap weights in registers. x: the input under tap (0, 0) of the
// first output of the block; xr, xp: the input strides of one tap row, one tap column; y, yr, yp
// alike for the outputs. nx (nullable): the next block's x (pixels nxp apart), prefetched a
// channel vector ahead of its use (where x streams from memory).
template <class T, int RB, int PB>
DILCONV_INLINE void nhwc_3x3_block(int64_t C, const T* x, int64_t xr, int64_t xp, const T* wt,
                                   const T* bias, Act act, T* y, int64_t yr, int64_t yp,
                                   const T* nx, int64_t nxp) {
  const int64_t nv = (C + NV<T> - 1) / NV<T>;
  for (int64_t v = 0; v < nv; ++v) {
    const int64_t c = vstart<T>(v, C);
    if (nx)
      for (int ir = 0; ir < RB + 2; ++ir)
        for (int ic = 0; ic < PB + 2; ++ic) __builtin_prefetch(nx + ir * xr + ic * nxp + c, 0, 2);
    V<T> w[9];
    for (int t = 0; t < 9; ++t) w[t] = ld(wt + t * C + c);
    const V<T> b = bias ? ld(bias + c) : V<T>{};
    V<T> acc[RB][PB];
    for (int i = 0; i < RB; ++i)
      for (int j = 0; j < PB; ++j) acc[i][j] = b;
#pragma GCC unroll 6
    for (int ir = 0; ir < RB + 2; ++ir) {
#pragma GCC unroll 6
      for (int ic = 0; ic < PB + 2; ++ic) {
        V<T> in = ld(x + ir * xr + ic * xp + c);
        __asm__("" : "+v"(in));  // one load for its up to nine uses
#pragma GCC unroll 3
        for (int r = 0; r < 3; ++r)
#pragma GCC unroll 3
          for (int s = 0; s < 3; ++s)
            if (ir - r >= 0 && ir - r < RB && ic - s >= 0 && ic - s < PB)
              acc[ir - r][ic - s] += w[r * 3 + s] * in;
      }
    }
    for (int i = 0; i < RB; ++i)
      for (int j = 0; j < PB; ++j)
        st(y + i * yr + j * yp + c, act ? act_v<T>(act, acc[i][j]) : acc[i][j]);
  }
}

// Pixels [0, nq) of RB rows, all nine taps inside (see nhwc_3x3_block): by groups of 4 dw
// consecutive pixels, each dw blocks of four pixels dw apart; the last, partial group by blocks
// of fewer. x, xr, y, yr as for nhwc_row_blocked (x: under tap (0, 0) of pixel 0); pf: prefetch
// each next block's input while a block is computed.
template <class T, int RB>
void nhwc_3x3_rows(int64_t C, const T* x, int64_t xr, int64_t px, int64_t dw, const T* wt,
                   const T* bias, Act act, T* y, int64_t yr, int64_t py, int64_t nq, bool pf) {
  const int64_t group = 4 * dw;
  int64_t q0 = 0;
  for (; q0 + group <= nq; q0 += group)
    for (int64_t ph = 0; ph < dw; ++ph) {
      const int64_t nq0 = ph + 1 < dw ? q0 + ph + 1 : q0 + group;  // the next block's first pixel
      nhwc_3x3_block<T, RB, 4>(C, x + (q0 + ph) * px, xr, dw * px, wt, bias, act,
                               y + (q0 + ph) * py, yr, dw * py,
                               pf && nq0 + 3 * dw < nq ? x + nq0 * px : nullptr, dw * px);
    }
  for (int64_t ph = 0; ph < dw && q0 + ph < nq; ++ph) {
    const int64_t k = (nq - q0 - ph + dw - 1) / dw;  // pixels q0 + ph, + dw, .. below nq (<= 4)
    with_count<4>(k, [&](auto k_tag) {
      nhwc_3x3_block<T, RB, decltype(k_tag)::value>(C, x + (q0 + ph) * px, xr, dw * px, wt, bias,
                                                    act, y + (q0 + ph) * py, yr, dw * py, nullptr,
                                                    0);
    });
  }
}

// The taps s in [lo, hi) that output column q reads inside the input (0 <= q sw + s dw - pw < W),
// resp. the tap rows r of output row p; a range, as the taps' columns increase with s.
struct TapRange {
  int64_t lo, hi;
};
inline TapRange inside_taps(int64_t q, int64_t stride, int64_t pad, int64_t dil, int64_t taps,
                            int64_t size) {
  const int64_t o = q * stride - pad;  // tap 0's input column
  const int64_t lo = o >= 0 ? 0 : (-o + dil - 1) / dil;
  int64_t hi = size - 1 - o >= 0 ? (size - 1 - o) / dil + 1 : 0;
  if (hi > taps) hi = taps;
  return {lo < hi ? lo : hi, hi};
}

// forward, output rows [p0, p1) of batch n; wt is [R * S][C]; x, y have channel stride 1;
// taps: 4 * R * S int64 of scratch.
// Every pixel goes through one kernel: a row's columns fall into runs that read the same taps
// (the interior, whose taps are all inside, and a few runs of border columns on each side), and
// each run is computed by nhwc_row_blocked with the run's taps (the weights of only those in
// registers), where border pixels had gone one at a time, the weights reloaded for every
// multiply (23% of the pixels of 960ch 33^2 d2); the interior of a 3x3 stride-1 conv by
// nhwc_3x3_rows where it applies (blocks_3x3).
template <class T>
void dw_nhwc_fwd(const Geo& g, const T* x, Strides xs, const T* wt, const T* bias, Act act, T* y,
                 Strides ys, int64_t n, int64_t p0, int64_t p1, int64_t* taps) {
  int64_t* xo = taps;
  int64_t* wo = taps + g.R * g.S;
  const int64_t px = g.sw * xs.w;
  auto rows_of = [&](int64_t p) { return inside_taps(p, g.sh, g.ph, g.dh, g.R, g.H); };
  auto cols_of = [&](int64_t q) { return inside_taps(q, g.sw, g.pw, g.dw, g.S, g.W); };
  // the taps (rows rr, columns sr) relative to the pixel's input position x + q * px, by rows
  auto tap_list = [&](TapRange rr, TapRange sr) {
    int64_t nt = 0;
    for (int64_t r = rr.lo; r < rr.hi; ++r)
      for (int64_t s = sr.lo; s < sr.hi; ++s) {
        xo[nt] = n * xs.n + (r * g.dh - g.ph) * xs.h + (s * g.dw - g.pw) * xs.w;
        wo[nt++] = (r * g.S + s) * g.C;
      }
    return nt;
  };
  if (g.C < NV<T>) {  // narrower than a vector: pixel by pixel, scalar
    for (int64_t p = p0; p < p1; ++p)
      for (int64_t q = 0; q < g.Q; ++q) {
        const int64_t nt = tap_list(rows_of(p), cols_of(q));
        nhwc_pixel<T>(g.C, x + p * g.sh * xs.h + q * px, xo, wt, wo, nt, bias, act,
                      y + n * ys.n + p * ys.h + q * ys.w);
      }
    return;
  }
  constexpr int CB = VB == 64 ? 2 : 1;  // AVX2/SSE: 16 registers hold 9 weights + 4 sums
  const bool set_conflicts = xs.w * int64_t(sizeof(T)) % 2048 == 0;  // nhwc_row_channels_inner
  // Where x and y stream from memory (nhwc_streams) the blocked kernel prefetches each next chunk
  // of 8 pixels (nhwc_row_blocked); where they fit in the last-level cache the prefetches cost
  // more than they save, and chunks of 32 pixels (a whole row of a 33^2 map) re-read fewer halo
  // columns. The suite's callables, each call right after torch's (which evicts what it can),
  // AVX-512 Zen 4, torch/ours, batch 1: 728ch 65^2 d2 and 960ch 65^2 d4 (x + y 25-32 MB)
  // 1.08-1.37x and 1.23-1.24x prefetching 8-pixel chunks, 0.90-1.04x and 1.00-1.03x not (32);
  // 32-960ch at 33^2-257^2 (8-17 MB) 0.79-1.25x not prefetching (32), 0.74-1.16x prefetching
  // (8); batch 16 (60-140 MB; timed back to back with other variants, which flatters all of
  // them alike) 0.94-1.21x prefetching 8-pixel chunks, 0.71-0.99x not.
  const bool stream = nhwc_streams<T>(g, xs.w, ys.w);
  const int64_t chunk = stream ? 8 : 32;
  // The runs of rows of one phase whose pixels read all nine taps of a 3x3 stride-1 window
  // (at least one group of 4 dw pixels) go to nhwc_3x3_rows instead: AVX-512 (its 32 registers
  // hold 16 sums, 9 weights and the loads), AMD (not measured on Intel), at least four vectors
  // of channels, x and y in the cache. Interleaved (all orders of ours, its and oneDNN's), 2
  // threads, Zen 4, nhwc_row_blocked's time / this one's: 960ch 33^2 d2 1.23-1.53x (oneDNN/ours
  // 0.85-1.06x -> 1.26-1.31x), 1024ch 33^2 1.36-1.53x, 2048ch 17^2 1.23-1.31x, 2 x 960ch 33^2
  // 1.28-1.43x, 384-576ch 33^2 1.05-1.18x, 144ch 129^2 1.02-1.10x; with two vectors of
  // channels (32ch 257^2) it ran no faster. Where x and y stream from memory it prefetches each
  // next block (without: 304ch 129^2 0.66x, 2 x 728ch 65^2 0.93x): 728ch 65^2 d2 1.30x, 2 x 728ch
  // 1.17x, 960ch 65^2 d4 1.71x, 4 x 960ch 33^2 1.46x, but 256-304ch 129^2 0.84-0.87x: there only
  // from 512 float channels (2 KiB pixels) on.
  const bool blocks_3x3 = VB == 64 && !cpu_is_intel() && g.R == 3 && g.S == 3 && g.sh == 1 &&
                          g.sw == 1 && g.C >= 4 * NV<T> &&
                          (!stream || g.C * int64_t(sizeof(T)) >= 2048);
  // rows p, p + step, ... (nr of them, all reading tap rows rr), run by run of columns
  auto rows = [&](int64_t p, int64_t nr, int64_t step, TapRange rr) {
    const T* xp = x + p * g.sh * xs.h;
    T* yp = y + n * ys.n + p * ys.h;
    const int64_t xr = step * g.sh * xs.h, yr = step * ys.h;
    for (int64_t q0 = 0, q1; q0 < g.Q; q0 = q1) {
      const TapRange sr = cols_of(q0);
      for (q1 = q0 + 1; q1 < g.Q; ++q1) {
        const TapRange s1 = cols_of(q1);
        if (s1.lo != sr.lo || s1.hi != sr.hi) break;
      }
      const int64_t nt = tap_list(rr, sr);
      const T* xq = xp + q0 * px;
      T* yq = yp + q0 * ys.w;
      if (nt == 0) {  // padding only: the bias
        for (int64_t j = 0; j < nr; ++j)
          for (int64_t q = 0; q < q1 - q0; ++q)
            for (int64_t c = 0; c < g.C; ++c) {
              const T b = bias ? bias[c] : T(0);
              yq[j * yr + q * ys.w + c] = act ? act_s<T>(act, b) : b;
            }
      } else if (nt > 9) {
        nhwc_row_channels_inner<T, 0, 2>(g.C, xq, xo, wo, nt, px, wt, bias, act, yq, ys.w, q1 - q0,
                                         nr, xr, yr);
      } else if (nt == 9 && blocks_3x3 && step == g.dh && q1 - q0 >= 4 * g.dw) {
        with_count<4>(nr, [&](auto nr_tag) {
          nhwc_3x3_rows<T, decltype(nr_tag)::value>(g.C, xq + xo[0], xr, px, g.dw, wt, bias, act,
                                                    yq, yr, ys.w, q1 - q0, stream);
        });
      } else {
        with_taps(nt, [&](auto nt_tag) {
          constexpr int NT = decltype(nt_tag)::value;
          if (set_conflicts)
            nhwc_row_channels_inner<T, NT, 2>(g.C, xq, xo, wo, NT, px, wt, bias, act, yq, ys.w,
                                              q1 - q0, nr, xr, yr);
          else
            nhwc_row_blocked<T, NT, CB>(g.C, xq, xo, wo, sr.hi - sr.lo, px, wt, bias, act, yq,
                                        ys.w, q1 - q0, nr, xr, yr, chunk, stream);
        });
      }
    }
  };
  // output rows step apart read input rows dh apart at stride 1: grouped by phase, up to four
  // full rows at a time (728ch 65^2 d2: simulated L1 read misses -40%, 512 KiB L2 misses -40%).
  // On an Intel CPU the AVX-512 variant takes rows of wide pixels (>= 1152 bytes) one at a time,
  // still by phase: four rows keep twice as many input pixels, each about a page apart, in
  // flight at once, and on a 2-core Xeon (before the prefetches of nhwc_row_blocked) ran slower
  // than one (torch/ours, 2 threads, interleaved: 960ch 33^2 d2 0.88 -> 1.08x, 728ch 65^2 d2
  // 1.01 -> 1.25x, 576ch 33^2 1.02 -> 1.21x, 2048ch 17^2 d2 0.83 -> 0.89x); narrow pixels still
  // gained from four (96ch 257^2 1.29 vs 1.16x, 144ch 129^2 0.97 vs 0.91x). On an AVX-512 Zen 4,
  // with the prefetches, four rows do as well as one on wide pixels (the suite's callables, each
  // call right after torch's; torch/ours with four rows vs one: 728ch 65^2 d2 1.08 vs 1.12x,
  // 960ch 65^2 d4 1.24 vs 1.22x streaming; 576ch 33^2 d2 1.00 vs 0.94x, 960ch 33^2 d2 0.96 vs
  // 0.90x in the cache).
  const int64_t step = g.R > 1 && g.sh == 1 ? g.dh : 0;
  const bool wide = VB == 64 && g.C * int64_t(sizeof(T)) >= 1152;
  const int64_t max_rows = wide && cpu_is_intel() ? 1 : 4;
  auto full = [&](int64_t p) {
    const TapRange rr = rows_of(p);
    return rr.lo == 0 && rr.hi == g.R;
  };
  if (!step) {
    for (int64_t p = p0; p < p1; ++p) rows(p, 1, 0, rows_of(p));
    return;
  }
  for (int64_t phase = 0; phase < step && p0 + phase < p1; ++phase)
    for (int64_t p = p0 + phase; p < p1;) {
      int64_t nr = 0;
      while (nr < max_rows && p + nr * step < p1 && full(p + nr * step)) ++nr;
      rows(p, nr ? nr : 1, step, rows_of(p));
      p += (nr ? nr : 1) * step;
    }
}

// input gradient, gx rows [i0, i1) of batch n (gather: any stride)
template <class T>
void dw_nhwc_dgrad(const Geo& g, const T* gy, Strides gys, const T* wt, T* gx, Strides gxs,
                   int64_t n, int64_t i0, int64_t i1, int64_t* taps) {
  int64_t* xo = taps;
  int64_t* wo = taps + g.R * g.S;
  for (int64_t i = i0; i < i1; ++i)
    for (int64_t j = 0; j < g.W; ++j) {
      int64_t nt = 0;
      for (int64_t r = 0; r < g.R; ++r) {
        const int64_t a = i + g.ph - r * g.dh;
        if (a < 0 || a % g.sh || a / g.sh >= g.P) continue;
        for (int64_t s = 0; s < g.S; ++s) {
          const int64_t b = j + g.pw - s * g.dw;
          if (b < 0 || b % g.sw || b / g.sw >= g.Q) continue;
          xo[nt] = n * gys.n + (a / g.sh) * gys.h + (b / g.sw) * gys.w;
          wo[nt] = (r * g.S + s) * g.C;
          ++nt;
        }
      }
      nhwc_pixel<T>(g.C, gy, xo, wt, wo, nt, nullptr, false, gx + n * gxs.n + i * gxs.h + j * gxs.w);
    }
}

// Weight (and bias) gradient of nq output pixels of one row that all read the same NT taps
// inside the input (tap t: input at xo[t] from the pixel's, its sums at part + po[t]): per block
// of CB channel vectors the NT tap sums (and, with gb, the bias sum) stay in registers over a
// chunk of QC pixels, each gy vector loaded once for all taps. Blocks start at multiples of
// CB * L but the last, which ends at C (overlapping its neighbour when CB * L does not divide C):
// lm, its lanes' mask, drops the channels the neighbour has counted (null: no overlap).
// The vectors of a block are addressed from one pointer at constant offsets (per-vector channel
// offsets had spilled the tap offsets from the registers).
// With pf the next chunk's slices of gy and of the input columns it is first to read are
// prefetched as in nhwc_row_blocked (xo by rows of S taps): where gy and x stream from memory
// (nhwc_streams) that took 728ch 65^2 d2's forward + backward from 6.1x to 7.2x of torch, 960ch
// 65^2 d4 6.5x -> 7.5x, 144ch 129^2 1.10 -> 1.26x (suite's callables, each call after torch's,
// AVX-512 Zen 4); on cached ones (32ch 257^2, 960ch 33^2 d2) 3-7% slower.
template <class T, int NT, int CB, bool GB>
void nhwc_wgrad_block(int64_t C, const T* a, int64_t pa, const T* b, const int64_t* xo,
                      const int64_t* po, int64_t S, int64_t pb, int64_t nq, const V<T>* lm,
                      bool pf, T* part, T* gb) {
  constexpr int64_t L = NV<T>, BL = CB * L;
  constexpr int64_t QC = 16;  // pixels a chunk: rows read front to back (see nhwc_row_blocked)
  const int64_t nb = (C + BL - 1) / BL;
  int64_t o[NT];
  for (int t = 0; t < NT; ++t) o[t] = xo[t];
  for (int64_t qc = 0; qc < nq; qc += QC)
    for (int64_t v = 0; v < nb; ++v) {
      const bool last = v == nb - 1;
      const int64_t c0 = last ? C - BL : v * BL;
      V<T> acc[NT][CB], gs[CB];
      for (int c = 0; c < CB; ++c) {
        gs[c] = V<T>{};
        for (int t = 0; t < NT; ++t) acc[t][c] = V<T>{};
      }
      const int64_t qe = qc + QC < nq ? qc + QC : nq;
      if (pf) {
        const int64_t nn = (qe + QC < nq ? qe + QC : nq) - qe;
        prefetch_slices<false>(a + qe * pa, pa, nn, c0, c0 + BL - 1);
        for (int64_t t = S - 1; t < NT; t += S)
          prefetch_slices<false>(b + qe * pb + o[t], pb, nn, c0, c0 + BL - 1);
      }
      const T* ap = a + qc * pa + c0;
      const T* bp = b + qc * pb + c0;
      for (int64_t n = qe - qc; n > 0; --n, ap += pa, bp += pb) {
        V<T> av[CB];
        for (int c = 0; c < CB; ++c) {
          av[c] = ld(ap + c * L);
          if (GB) gs[c] += av[c];
        }
#pragma GCC unroll 9
        for (int t = 0; t < NT; ++t)
          for (int c = 0; c < CB; ++c) acc[t][c] += av[c] * ld(bp + o[t] + c * L);
      }
      if (last && lm)
        for (int c = 0; c < CB; ++c) {
          gs[c] *= lm[c];
          for (int t = 0; t < NT; ++t) acc[t][c] *= lm[c];
        }
      for (int t = 0; t < NT; ++t)
        for (int c = 0; c < CB; ++c) {
          T* d = part + po[t] + c0 + c * L;
          st(d, ld(d) + acc[t][c]);
        }
      if (GB)
        for (int c = 0; c < CB; ++c) st(gb + c0 + c * L, ld(gb + c0 + c * L) + gs[c]);
    }
}

// gb[c] += gy summed over nq pixels pa apart from a (channel stride 1)
template <class T>
void nhwc_colsum(int64_t C, const T* a, int64_t pa, int64_t nq, T* gb) {
  constexpr int64_t L = NV<T>;
  for (int64_t q = 0; q < nq; ++q, a += pa) {
    int64_t c = 0;
    for (; c + L <= C; c += L) st(gb + c, ld(gb + c) + ld(a + c));
    for (; c < C; ++c) gb[c] += a[c];
  }
}

// weight gradient partial sums over output rows [f0, f1) (flattened n * P + p) added into
// part [R * S][C] (nullable: the bias gradient alone), and with gb (nullable) the bias
// gradient's (gy summed) into gb [C].
// As the forward (dw_nhwc_fwd), a row's columns fall into runs that read the same taps, each
// run through nhwc_wgrad_block with those taps (at most 9 at a time): border rows and columns
// had gone tap by tap (a gy load and a multiply-add for each value and tap), and the bias
// gradient had been a pass of its own over gy (the two: 30% of 960ch 33^2 d2's weight gradient).
template <class T>
void dw_nhwc_wgrad(const Geo& g, const T* gy, Strides gys, const T* x, Strides xs, T* part,
                   T* gb, int64_t f0, int64_t f1) {
  const int64_t C = g.C, px = g.sw * xs.w;
  auto rows_of = [&](int64_t p) { return inside_taps(p, g.sh, g.ph, g.dh, g.R, g.H); };
  auto cols_of = [&](int64_t q) { return inside_taps(q, g.sw, g.pw, g.dw, g.S, g.W); };
  if (!part) {  // the bias gradient alone
    for (int64_t f = f0; f < f1; ++f)
      nhwc_colsum<T>(C, gy + f / g.P * gys.n + f % g.P * gys.h, gys.w, g.Q, gb);
    return;
  }
  if (C < NV<T>) {  // narrower than a vector: scalar
    for (int64_t f = f0; f < f1; ++f) {
      const int64_t n = f / g.P, p = f % g.P;
      const TapRange rr = rows_of(p);
      for (int64_t q = 0; q < g.Q; ++q) {
        const T* a = gy + n * gys.n + p * gys.h + q * gys.w;
        const TapRange sr = cols_of(q);
        for (int64_t r = rr.lo; r < rr.hi; ++r)
          for (int64_t s = sr.lo; s < sr.hi; ++s) {
            const T* bx = x + n * xs.n + (p * g.sh + r * g.dh - g.ph) * xs.h +
                          (q * g.sw + s * g.dw - g.pw) * xs.w;
            T* d = part + (r * g.S + s) * C;
            for (int64_t c = 0; c < C; ++c) d[c] += a[c] * bx[c];
          }
        if (gb)
          for (int64_t c = 0; c < C; ++c) gb[c] += a[c];
      }
    }
    return;
  }
  constexpr int CB0 = VB == 64 ? 2 : 1;  // 9 x CB sums + CB gy (+ CB bias) vectors in registers
  const int CB = C >= CB0 * NV<T> ? CB0 : 1;
  // the last block's lane masks (see nhwc_wgrad_block); null where CB vectors divide C (the
  // entries past CB are never read)
  V<T> lm[CB0] = {};
  const int64_t bl = CB * NV<T>;
  for (int c = 0; c < CB; ++c)
    for (int64_t l = 0; l < NV<T>; ++l)
      lm[c][l] = C - bl + c * NV<T> + l >= C / bl * bl ? T(1) : T(0);
  const V<T>* lmc = C % bl ? lm : nullptr;
  const bool stream = nhwc_streams<T>(g, xs.w, gys.w);
  int64_t xo[9], po[9];
  for (int64_t f = f0; f < f1; ++f) {
    const int64_t n = f / g.P, p = f % g.P;
    const TapRange rr = rows_of(p);
    const T* arow = gy + n * gys.n + p * gys.h;
    const T* brow = x + n * xs.n + p * g.sh * xs.h;
    for (int64_t q0 = 0, q1; q0 < g.Q; q0 = q1) {
      const TapRange sr = cols_of(q0);
      for (q1 = q0 + 1; q1 < g.Q; ++q1) {
        const TapRange s1 = cols_of(q1);
        if (s1.lo != sr.lo || s1.hi != sr.hi) break;
      }
      const int64_t nt = (rr.hi - rr.lo) * (sr.hi - sr.lo);
      const T* a = arow + q0 * gys.w;
      const T* b = brow + q0 * px;
      if (nt == 0) {  // only padding read: the bias gradient alone
        if (gb) nhwc_colsum<T>(C, a, gys.w, q1 - q0, gb);
        continue;
      }
      // the run's taps in groups of at most 9, whose sums fit in the registers: all at once,
      // else whole tap rows (a 7x7 kernel: a row at a time, 7 passes over gy instead of one
      // a tap) or 9 taps of a longer row; the bias gradient with the first group
      const int64_t ns = sr.hi - sr.lo;
      const int64_t gr = ns <= 9 ? 9 / ns : 1, gs = ns <= 9 ? ns : 9;
      T* gbk = gb;
      for (int64_t r0 = rr.lo; r0 < rr.hi; r0 += gr)
        for (int64_t s0 = sr.lo; s0 < sr.hi; s0 += gs) {
          const int64_t r1 = r0 + gr < rr.hi ? r0 + gr : rr.hi;
          const int64_t s1 = s0 + gs < sr.hi ? s0 + gs : sr.hi;
          int64_t k = 0;
          for (int64_t r = r0; r < r1; ++r)
            for (int64_t s = s0; s < s1; ++s, ++k) {
              xo[k] = (r * g.dh - g.ph) * xs.h + (s * g.dw - g.pw) * xs.w;
              po[k] = (r * g.S + s) * C;
            }
          with_taps(k, [&](auto nt_tag) {
            constexpr int NT = decltype(nt_tag)::value;
            auto go = [&](auto cb_tag, auto gb_tag) {
              nhwc_wgrad_block<T, NT, decltype(cb_tag)::value, decltype(gb_tag)::value != 0>(
                  C, a, gys.w, b, xo, po, s1 - s0, px, q1 - q0, lmc, stream, part, gbk);
            };
            if (CB == CB0 && gbk) go(Int<CB0>{}, Int<1>{});
            else if (CB == CB0) go(Int<CB0>{}, Int<0>{});
            else if (gbk) go(Int<1>{}, Int<1>{});
            else go(Int<1>{}, Int<0>{});
          });
          gbk = nullptr;
        }
    }
  }
}

// ------------------------------------------------------------------------------------------
// grouped, channels-last, CG = Cg = Kg channels a group with CG dividing the vector (2, 4, 8,
// 16 lanes): vectors run along the channels as in depthwise, every vector starts at a multiple
// of CG (so does the overlapping last one: C and the vector are multiples of CG) and holds whole
// groups. Output lane k sums w[k][j'] x[b + j'] over j' (b = k - k % CG). Written with
// j' = (k % CG + j) % CG that is the sum over j of wr_j[k] * rot_j(x)[k], where rot_j rotates
// every CG-lane block by j lanes and wr_j[k] = w[k][(k % CG + j) % CG] (the host stores the
// weights so, [R * S][CG][C]): the input vector is loaded once per tap and pixel, j = 0 needs
// no shuffle and every other j one in-register shuffle (in-lane for CG <= 4).

template <class T, int CG, int J>
DILCONV_INLINE V<T> rot_blocks(V<T> x) {
  if constexpr (J == 0) {
    return x;
  } else {
    typename Vec<T>::mask m;
    for (int k = 0; k < NV<T>; ++k) m[k] = k - k % CG + (k % CG + J) % CG;
    return __builtin_shuffle(x, m);
  }
}

// acc[i] += sum over j of wr_j * rot_j(xv[i]), wr_j at wp + j * C
template <class T, int CG, int NP, int J = 0>
DILCONV_INLINE void gnhwc_steps(V<T>* acc, const V<T>* xv, const T* wp, int64_t C) {
  if constexpr (J < CG) {
    const V<T> wv = ld(wp + J * C);
    for (int i = 0; i < NP; ++i) acc[i] += wv * rot_blocks<T, CG, J>(xv[i]);
    gnhwc_steps<T, CG, NP, J + 1>(acc, xv, wp, C);
  }
}

// NP output pixels py apart (inputs px apart), the channel vector at c0; taps (xo[t] into x,
// wo[t] into wt)
template <class T, int CG, int NP>
DILCONV_INLINE void gnhwc_pixels(const T* x, const int64_t* xo, int64_t px, const T* wt,
                                 const int64_t* wo, int64_t nt, int64_t C, int64_t c0,
                                 const T* bias, bool act, V<T> lo, V<T> hi, T* y, int64_t py) {
  V<T> acc[NP];
  const V<T> b = bias ? ld(bias + c0) : V<T>{};
  for (int i = 0; i < NP; ++i) acc[i] = b;
  for (int64_t t = 0; t < nt; ++t) {
    const T* xp = x + xo[t] + c0;
    V<T> xv[NP];
    for (int i = 0; i < NP; ++i) xv[i] = ld(xp + i * px);
    gnhwc_steps<T, CG, NP>(acc, xv, wt + wo[t] + c0, C);
  }
  for (int i = 0; i < NP; ++i) st(y + i * py + c0, act ? clamp_v<T>(acc[i], lo, hi) : acc[i]);
}

// forward, output rows [p0, p1) of batch n; wt as above; taps: 4 * R * S int64 of scratch
template <class T, int CG>
void g_nhwc_fwd_cg(const Geo& g, const T* x, Strides xs, const T* wt, const T* bias, Act act,
                   T* y, Strides ys, int64_t n, int64_t p0, int64_t p1, int64_t* taps) {
  const int64_t C = g.C, nv = (C + NV<T> - 1) / NV<T>;
  const V<T> lo = splat<T>(T(act.lo)), hi = splat<T>(T(act.hi));
  const bool on = bool(act);
  int64_t* xo = taps;
  int64_t* wo = taps + g.R * g.S;
  int64_t* ixo = taps + 2 * g.R * g.S;  // the row's taps, relative to the pixel
  int64_t* iwo = taps + 3 * g.R * g.S;
  const auto [qa, qb] = interior_columns(g);
  const int64_t px = g.sw * xs.w;
  for (int64_t p = p0; p < p1; ++p) {
    T* yrow = y + n * ys.n + p * ys.h;
    int64_t nit = 0;
    for (int64_t r = 0; r < g.R; ++r) {
      const int64_t ih = p * g.sh + r * g.dh - g.ph;
      if (ih < 0 || ih >= g.H) continue;
      for (int64_t s = 0; s < g.S; ++s) {
        ixo[nit] = n * xs.n + ih * xs.h + (s * g.dw - g.pw) * xs.w;
        iwo[nit] = (r * g.S + s) * CG * C;
        ++nit;
      }
    }
    auto border = [&](int64_t q) {
      int64_t nt = 0;
      for (int64_t t = 0; t < nit; ++t) {
        const int64_t s = iwo[t] / (CG * C) % g.S;
        const int64_t iw = q * g.sw + s * g.dw - g.pw;
        if (iw < 0 || iw >= g.W) continue;
        xo[nt] = ixo[t] + q * px;
        wo[nt] = iwo[t];
        ++nt;
      }
      for (int64_t v = 0; v < nv; ++v)
        gnhwc_pixels<T, CG, 1>(x, xo, 0, wt, wo, nt, C, vstart<T>(v, C), bias, on, lo, hi,
                               yrow + q * ys.w, 0);
    };
    for (int64_t q = 0; q < qa; ++q) border(q);
    int64_t q = qa;
    for (; q + 4 <= qb; q += 4)
      for (int64_t v = 0; v < nv; ++v)
        gnhwc_pixels<T, CG, 4>(x + q * px, ixo, px, wt, iwo, nit, C, vstart<T>(v, C), bias, on,
                               lo, hi, yrow + q * ys.w, ys.w);
    for (; q < qb; ++q)
      for (int64_t v = 0; v < nv; ++v)
        gnhwc_pixels<T, CG, 1>(x + q * px, ixo, 0, wt, iwo, nit, C, vstart<T>(v, C), bias, on,
                               lo, hi, yrow + q * ys.w, 0);
    for (q = qb > qa ? qb : qa; q < g.Q; ++q) border(q);
  }
}

// acc[j] += a * rot_j(b) for every j
template <class T, int CG, int J = 0>
DILCONV_INLINE void gnhwc_outer(V<T>* acc, V<T> a, V<T> b) {
  if constexpr (J < CG) {
    acc[J] += a * rot_blocks<T, CG, J>(b);
    gnhwc_outer<T, CG, J + 1>(acc, a, b);
  }
}

// weight gradient partial sums over output rows [f0, f1) (flattened n * P + p) added into part,
// laid out as wt above ([R * S][CG][C], rotated): part[t][j][k] += gy[k] * rot_j(x_t)[k]
template <class T, int CG, int U>
DILCONV_INLINE void gnhwc_wgrad_cols(const T* a, int64_t pa, const T* b, int64_t pb,
                                     int64_t qlo, int64_t qhi, int64_t C, const int64_t* cs,
                                     const V<T>* const* mask, T* d) {
  V<T> acc[U][CG];
  for (int u = 0; u < U; ++u)
    for (int j = 0; j < CG; ++j) acc[u][j] = V<T>{};
  for (int64_t q = qlo; q < qhi; ++q) {
    for (int u = 0; u < U; ++u) {
      const V<T> av = ld(a + q * pa + cs[u]);
      const V<T> bv = ld(b + q * pb + cs[u]);
      gnhwc_outer<T, CG>(acc[u], av, bv);
    }
  }
  for (int u = 0; u < U; ++u)
    for (int j = 0; j < CG; ++j) {
      T* o = d + j * C + cs[u];
      st(o, ld(o) + (mask[u] ? acc[u][j] * *mask[u] : acc[u][j]));
    }
}

template <class T, int CG>
void g_nhwc_wgrad_cg(const Geo& g, const T* gy, Strides gys, const T* x, Strides xs, T* part,
                     int64_t f0, int64_t f1) {
  const int64_t C = g.C, nv = (C + NV<T> - 1) / NV<T>;
  // lanes of the last vector that its neighbour already covers
  V<T> tail_mask;
  const int64_t over = nv * NV<T> - C;
  for (int64_t l = 0; l < NV<T>; ++l) tail_mask[l] = l < over ? T(0) : T(1);
  for (int64_t f = f0; f < f1; ++f) {
    const int64_t n = f / g.P, p = f % g.P;
    for (int64_t r = 0; r < g.R; ++r) {
      const int64_t ih = p * g.sh + r * g.dh - g.ph;
      if (ih < 0 || ih >= g.H) continue;
      for (int64_t s = 0; s < g.S; ++s) {
        const int64_t o = s * g.dw - g.pw;
        const auto [qlo, qhi] = tap_columns(g, s);
        if (qlo >= qhi) continue;
        const T* a = gy + n * gys.n + p * gys.h;
        const T* b = x + n * xs.n + ih * xs.h + o * xs.w;
        T* d = part + (r * g.S + s) * CG * C;
        int64_t v = 0;
        for (; v + 2 <= nv; v += 2) {
          const int64_t cs[2] = {vstart<T>(v, C), vstart<T>(v + 1, C)};
          const V<T>* mask[2] = {nullptr, over && v + 1 == nv - 1 ? &tail_mask : nullptr};
          gnhwc_wgrad_cols<T, CG, 2>(a, gys.w, b, g.sw * xs.w, qlo, qhi, C, cs, mask, d);
        }
        if (v < nv) {
          const int64_t cs[1] = {vstart<T>(v, C)};
          const V<T>* mask[1] = {over ? &tail_mask : nullptr};
          gnhwc_wgrad_cols<T, CG, 1>(a, gys.w, b, g.sw * xs.w, qlo, qhi, C, cs, mask, d);
        }
      }
    }
  }
}

// f(Int<CG>{}) for a run-time group size g_nhwc_ok accepts (CG divides the vector)
template <class T, class F>
DILCONV_INLINE void with_group_size(int64_t cg, F&& f) {
  switch (cg) {
    case 2: f(Int<2>{}); break;
    case 4: f(Int<4>{}); break;
    case 8:
      if constexpr (NV<T> >= 8) f(Int<8>{});
      break;
    default:
      if constexpr (NV<T> >= 16) f(Int<16>{});
      break;
  }
}

template <class T>
void g_nhwc_fwd(const Geo& g, const T* x, Strides xs, const T* wt, const T* bias, Act act, T* y,
                Strides ys, int64_t n, int64_t p0, int64_t p1, int64_t* taps) {
  with_group_size<T>(g.Cg, [&](auto cg) {
    g_nhwc_fwd_cg<T, decltype(cg)::value>(g, x, xs, wt, bias, act, y, ys, n, p0, p1, taps);
  });
}

template <class T>
void g_nhwc_wgrad(const Geo& g, const T* gy, Strides gys, const T* x, Strides xs, T* part,
                  int64_t f0, int64_t f1) {
  with_group_size<T>(g.Cg, [&](auto cg) {
    g_nhwc_wgrad_cg<T, decltype(cg)::value>(g, gy, gys, x, xs, part, f0, f1);
  });
}

// GEMM epilogue over rows [r0, r1) of a [rows][cols] block (row pitch `pitch`):
// y[r][j] = act(y[r][j] + bias), the bias per row (bias[r]) or per column (bias[j])
template <class T>
void bias_act(T* y, int64_t pitch, int64_t r0, int64_t r1, int64_t cols, const T* bias,
              bool bias_per_row, Act act) {
  constexpr int64_t L = NV<T>;
  for (int64_t r = r0; r < r1; ++r) {
    T* row = y + r * pitch;
    const T* bc = bias && !bias_per_row ? bias : nullptr;
    const T br = bias && bias_per_row ? bias[r] : T(0);
    const V<T> bv = splat<T>(br);
    int64_t j = 0;
    for (; j + L <= cols; j += L) {
      V<T> v = ld(row + j) + (bc ? ld(bc + j) : bv);
      st(row + j, act ? act_v<T>(act, v) : v);
    }
    for (; j < cols; ++j) {
      const T v = row[j] + (bc ? bc[j] : br);
      row[j] = act ? act_s<T>(act, v) : v;
    }
  }
}

// ------------------------------------------------------------------------------------------
// Small GEMM with its epilogue, for 1x1 convolutions with a short sum (few input channels) or
// few outputs: D[i][j] = act(bias + sum_c A[i * as + c * acs] * B[c * bs + j]) over rows [i0, i1),
// columns [j0, j1); the bias per row (bias[i]) or per column (bias[j]), nullable. A tile of
// GB_MR rows x GB_NT vectors of columns keeps its sums in registers over the whole sum: each B
// vector loaded serves GB_MR rows, each broadcast A value GB_NT vectors. BLAS on these shapes
// (16 -> 96 channels at 257^2, 24 -> 144 at 129^2) ran at a third of the copy bandwidth: its
// packing and the separate epilogue pass cost more than the short sum itself.
constexpr int GB_MR = 6;
constexpr int GB_NT = VB == 64 ? 4 : 2;  // 24 (AVX-512) or 12 accumulators + loads in registers

// one tile: rows [0, MR), columns [0, NT vectors) of D; the sums start from D's values (a
// later pass over the sum, `more`) or from the bias, and `last` applies the activation; pf
// (nullable): the B columns to prefetch, at B's row pitch, as it goes
template <class T, int MR, int NT, bool UNIT_ACS>
DILCONV_INLINE void gemm_bcast_tile(const T* A, int64_t as, int64_t acs_, const T* B, int64_t bs,
                                    int64_t kd,
                                    const T* bias, bool bias_per_row, bool more, bool last,
                                    Act act, T* D, int64_t ds, const T* pf = nullptr) {
  constexpr int64_t L = NV<T>;
  const int64_t acs = UNIT_ACS ? 1 : acs_;  // (a unit stride known at compile time)
  V<T> acc[MR][NT];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NT; ++j)
      acc[i][j] = more    ? ld(D + i * ds + j * L)
                  : !bias ? V<T>{}
                  : bias_per_row ? splat<T>(bias[i]) : ld(bias + j * L);
  for (int64_t c = 0; c < kd; ++c) {
    if (pf)
      for (int j = 0; j < NT * L; j += 64 / int(sizeof(T))) __builtin_prefetch(pf + c * bs + j, 0, 2);
    V<T> b[NT];
#pragma GCC unroll 8
    for (int j = 0; j < NT; ++j) b[j] = ld(B + c * bs + j * L);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const V<T> a = splat<T>(A[i * as + c * acs]);
#pragma GCC unroll 8
      for (int j = 0; j < NT; ++j) acc[i][j] += a * b[j];
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NT; ++j)
      st(D + i * ds + j * L, last && act ? act_v<T>(act, acc[i][j]) : acc[i][j]);
}

template <class T, bool UNIT_ACS>
void gemm_bcast_impl(const T* A, int64_t as, int64_t acs, const T* B, int64_t bs, int64_t kd,
                     const T* bias, bool bias_per_row, Act act, T* D, int64_t ds, int64_t i0,
                     int64_t i1, int64_t j0, int64_t j1, bool accumulate_) {
  // (only the strided variant accumulates: the channels-last weight gradient)
  const bool accumulate = !UNIT_ACS && accumulate_;
  constexpr int64_t L = NV<T>, TW = GB_NT * NV<T>;
  // the sum in passes of at most 384 terms (a long one, 2048 channels, would stream all of A
  // from L3 for every column block), of equal length (304 channels had gone in passes of 256 and
  // 48, each pass a round trip of the sums through memory: 1 pass 3-8% faster, Zen 4), each
  // column block's B panel ([kc][cb], 64-96 KB) kept in L2 while every row tile passes over it
  // (Zen 4, 1x1 NCHW: 64-128 KB 1.1-1.4x faster than 16 KB on 24 -> 144 and 32 -> 192
  // channels, 4 MB 10-25% slower on 960 -> 160 and 304 -> 256)
  // columns [jb, je) one by one: fewer than a vector, or an empty sum (no input channels: the
  // bias alone, which the tiles, never entered, would not write)
  auto one_by_one = [&](int64_t jb, int64_t je) {
    for (int64_t i = i0; i < i1; ++i)
      for (int64_t j = jb; j < je; ++j) {
        T s = accumulate ? D[i * ds + j] : !bias ? T(0) : bias_per_row ? bias[i] : bias[j];
        for (int64_t c = 0; c < kd; ++c) s += A[i * as + c * acs] * B[c * bs + j];
        D[i * ds + j] = act ? act_s<T>(act, s) : s;
      }
  };
  if (kd == 0) return one_by_one(j0, j1);
  const int64_t passes = (kd + 383) / 384;
  const int64_t KC = (kd + passes - 1) / passes;
  int64_t cb = (int64_t{65536} / (KC * int64_t(sizeof(T)))) / TW * TW;
  if (cb < TW) cb = TW;
  const int64_t jv = j0 + (j1 - j0) / L * L;  // whole vectors up to jv
  // columns [jb, je) (whole vectors): every pass over the sum, every row tile
  auto block = [&](int64_t jb, int64_t je) {
    for (int64_t k0 = 0; k0 < kd; k0 += KC) {
      const int64_t kc = kd - k0 < KC ? kd - k0 : KC;
      const bool more = k0 > 0 || accumulate, last = k0 + kc == kd;
      for (int64_t i = i0; i < i1; i += GB_MR) {
        const T* Ai = A + i * as + k0 * acs;
        const T* Bk = B + k0 * bs;
        const T* bi = bias && bias_per_row ? bias + i : bias;
        with_count<GB_MR>(i1 - i, [&](auto m) {
          constexpr int M = decltype(m)::value;
          // The first row tile of a block prefetches into the L2 the same columns of the next
          // block's panel: kd rows a whole plane apart (NCHW), which the hardware prefetchers
          // do not follow (one stream a row: 96 for a 96-channel sum); read on demand, the
          // panel's first pass ran latency-bound (2 images, 2 threads, Zen 4, 2 runs: input
          // gradient 16 <- 96 @257^2 6.1-8.1 -> 3.6-4.6 ms; forward 16 -> 96 @257^2 4.5-5.7 ->
          // 3.8-4.5, 96 -> 24 @129^2 1.3-1.6 -> 0.9-1.1, 304 -> 256 @129^2 29-30 -> 28 ms,
          // the 33^2 shapes unchanged).
          const bool pf = i == i0;
          auto tile = [&](auto nt, int64_t j) {
            const T* pn = pf && j + cb + TW <= jv ? Bk + j + cb : nullptr;
            gemm_bcast_tile<T, M, decltype(nt)::value, UNIT_ACS>(
                Ai, as, acs, Bk + j, bs, kc, bi && !bias_per_row ? bi + j : bi, bias_per_row, more,
                last, act, D + i * ds + j, ds, pn);
          };
          int64_t j = jb;
          for (; j + TW <= je; j += TW) tile(Int<GB_NT>{}, j);
          if (j < je)  // the remaining 1-3 whole vectors as one narrower tile
            with_count<GB_NT - 1>((je - j) / L, [&](auto nt) { tile(nt, j); });
        });
      }
    }
  };
  const bool tail = jv != j1 && j1 - j0 >= L;
  // the last columns (fewer than a vector) as one vector ending at j1: it recomputes some
  // finished columns [j1 - L, jv), in the same order, so they end with the same values (one by
  // one, these columns cost as much as a whole 64-column block: 15 of 1023 columns at 2048
  // channels); accumulating, from the values they started with, kept aside (at most L - 1
  // columns of the rows)
  const int64_t kw = tail && accumulate ? jv - (j1 - L) : 0;
  std::unique_ptr<T[]> kept(kw ? new T[(i1 - i0) * kw] : nullptr);
  for (int64_t i = i0; i < i1 && kw; ++i)
    for (int64_t j = 0; j < kw; ++j) kept[(i - i0) * kw + j] = D[i * ds + j1 - L + j];
  for (int64_t jb = j0; jb < jv; jb += cb) block(jb, jb + cb < jv ? jb + cb : jv);
  if (jv == j1) return;
  if (tail) {
    for (int64_t i = i0; i < i1 && kw; ++i)
      for (int64_t j = 0; j < kw; ++j) D[i * ds + j1 - L + j] = kept[(i - i0) * kw + j];
    block(j1 - L, j1);
    return;
  }
  one_by_one(j0, j1);
}

// A's sum index contiguous (acs == 1: the NCHW planes, channels-last pixel rows) compiled apart
// from the strided one (the channels-last weight gradient, which also accumulates), each with
// its constants: one body with both had run the NCHW forward up to ~10% slower (16 -> 96 @257^2)
template <class T>
void gemm_bcast(const T* A, int64_t as, int64_t acs, const T* B, int64_t bs, int64_t kd,
                const T* bias, bool bias_per_row, Act act, T* D, int64_t ds, int64_t i0, int64_t i1,
                int64_t j0, int64_t j1, bool accumulate) {
  (acs == 1 && !accumulate ? gemm_bcast_impl<T, true> : gemm_bcast_impl<T, false>)(
      A, as, acs, B, bs, kd, bias, bias_per_row, act, D, ds, i0, i1, j0, j1, accumulate);
}

// ------------------------------------------------------------------------------------------
// bilinear resize of one image in rows of L values: a channels-last image (L = W * C, cc = C
// values a pixel) or one plane (L = W, cc = 1). Along the width each output pixel ow blends the
// input pixels at offsets xo[2 ow], xo[2 ow + 1] (in values) with weights xl[2 ow], xl[2 ow + 1];
// along the height output row oh blends input rows yi[2 oh], yi[2 oh + 1] with yl[2 oh],
// yl[2 oh + 1] (torch's upsample_bilinear2d coefficients, built by the caller).

// one input row interpolated along the width: h[ow * cc + c]
template <class T>
DILCONV_INLINE void resize_hrow(const T* x, int64_t cc, const int64_t* xo, const T* xl,
                                int64_t OW, T* h) {
  if (cc == 1) {
    for (int64_t ow = 0; ow < OW; ++ow)
      h[ow] = xl[2 * ow] * x[xo[2 * ow]] + xl[2 * ow + 1] * x[xo[2 * ow + 1]];
    return;
  }
  for (int64_t ow = 0; ow < OW; ++ow) {
    const T *a = x + xo[2 * ow], *b = x + xo[2 * ow + 1];
    const T la = xl[2 * ow], lb = xl[2 * ow + 1];
    T* d = h + ow * cc;
    for (int64_t c = 0; c < cc; ++c) d[c] = la * a[c] + lb * b[c];
  }
}

// Output rows [r0, r1): each input row is interpolated along the width once into one of two
// scratch rows (consecutive output rows share input rows), then each output row is one
// contiguous blend of two of them. x, y: the image's first row, row pitches xp, yp (values);
// scratch: 2 * OW * cc values.
template <class T>
void resize_fwd(const T* x, int64_t xp, int64_t cc, const int64_t* xo, const T* xl, int64_t OW,
                const int64_t* yi, const T* yl, T* y, int64_t yp, int64_t r0, int64_t r1,
                T* scratch) {
  const int64_t len = OW * cc;
  T* slot[2] = {scratch, scratch + len};
  int64_t held[2] = {-1, -1};
  auto row = [&](int64_t i) -> const T* {
    if (held[0] == i) return slot[0];
    if (held[1] == i) return slot[1];
    // replace the slot not holding the other row this output row needs (rows only increase)
    const int k = held[0] < held[1] ? 0 : 1;
    resize_hrow<T>(x + i * xp, cc, xo, xl, OW, slot[k]);
    held[k] = i;
    return slot[k];
  };
  for (int64_t oh = r0; oh < r1; ++oh) {
    const T* h0 = row(yi[2 * oh]);
    const T* h1 = row(yi[2 * oh + 1]);
    const T a = yl[2 * oh], b = yl[2 * oh + 1];
    T* d = y + oh * yp;
    for (int64_t j = 0; j < len; ++j) d[j] = a * h0[j] + b * h1[j];
  }
}

// Input gradient, input rows [i0, i1), written completely: row i collects the output rows
// [olo[i], ohi[i]) that read it (weight yl of each reading), then the width blend is undone
// pixel by pixel (a scatter into the row, serial so that no two threads share a row).
// g, gx: the image's first rows, pitches gp, xp; scratch: OW * cc values.
template <class T>
void resize_bwd(const T* g, int64_t gp, int64_t cc, const int64_t* xo, const T* xl, int64_t OW,
                const int64_t* yi, const T* yl, const int64_t* olo, const int64_t* ohi, T* gx,
                int64_t xp, int64_t W, int64_t i0, int64_t i1, T* scratch) {
  const int64_t len = OW * cc;
  for (int64_t i = i0; i < i1; ++i) {
    T* d = gx + i * xp;
    for (int64_t j = 0; j < W * cc; ++j) d[j] = T(0);
    if (olo[i] >= ohi[i]) continue;
    T* h = scratch;
    for (int64_t j = 0; j < len; ++j) h[j] = T(0);
    for (int64_t oh = olo[i]; oh < ohi[i]; ++oh) {
      const T a = (yi[2 * oh] == i ? yl[2 * oh] : T(0)) + (yi[2 * oh + 1] == i ? yl[2 * oh + 1] : T(0));
      const T* s = g + oh * gp;
      for (int64_t j = 0; j < len; ++j) h[j] += a * s[j];
    }
    if (cc == 1) {
      // the source columns xo[2 ow] <= xo[2 ow + 1] <= xo[2 ow] + 1 never decrease with ow: the
      // sums of columns cur and cur + 1 are kept in registers and stored once cur moves on (an
      // add into memory per term chained each term on the one before: store-to-load latency)
      int64_t cur = xo[0];
      T a0 = T(0), a1 = T(0);
      for (int64_t ow = 0; ow < OW; ++ow) {
        const int64_t c0 = xo[2 * ow], c1 = xo[2 * ow + 1];
        while (cur < c0) {
          d[cur] += a0;
          a0 = a1;
          a1 = T(0);
          ++cur;
        }
        const T v = h[ow];
        a0 += xl[2 * ow] * v;
        if (c1 == cur) a0 += xl[2 * ow + 1] * v;
        else a1 += xl[2 * ow + 1] * v;
      }
      d[cur] += a0;
      if (cur + 1 < W) d[cur + 1] += a1;
      continue;
    }
    for (int64_t ow = 0; ow < OW; ++ow) {
      T *a = d + xo[2 * ow], *b = d + xo[2 * ow + 1];
      const T la = xl[2 * ow], lb = xl[2 * ow + 1];
      const T* hs = h + ow * cc;
      for (int64_t c = 0; c < cc; ++c) a[c] += la * hs[c];
      for (int64_t c = 0; c < cc; ++c) b[c] += lb * hs[c];
    }
  }
}

// ------------------------------------------------------------------------------------------
// batch norm with batch statistics, then clamp(lo, hi), over one block of a tensor: a plane
// (NCHW: `len` values of one channel; the per-channel arguments are then scalars, index 0) or
// `len` pixels of C channels each (channels-last: per-channel arguments indexed by channel).
// Sums are taken in T over runs of at most BN_RUN values and added into double, so that a
// channel's millions of values lose no more than a run's rounding.

constexpr int64_t BN_RUN = 1024;

// s1[c] += sum (x - shift[c]), s2[c] += sum (x - shift[c])^2 (the shift: a sample of the
// channel, so that the variance does not come from the difference of two large sums); pf
// (planar, nullable): len values read next, prefetched into the L2 as bn_apply does (the
// backward's sums do not: two tensors of the next channel too overflowed the L2 at 257^2)
template <class T>
void bn_moments(const T* x, int64_t len, int64_t C, bool planar, const T* shift, double* s1,
                double* s2, const T* pf) {
  constexpr int64_t LINE = 64 / sizeof(T);
  if (planar) {  // vector partial sums: a scalar reduction would not be vectorised (no -ffast-math)
    const T sh = shift[0];
    const V<T> vsh = splat<T>(sh);
    for (int64_t j0 = 0; j0 < len; j0 += BN_RUN) {
      const int64_t j1 = j0 + BN_RUN < len ? j0 + BN_RUN : len;
      V<T> a0{}, a1{}, b0{}, b1{};
      int64_t j = j0;
      for (; j + 2 * NV<T> <= j1; j += 2 * NV<T>) {
        if (pf)
          for (int64_t l = 0; l < 2 * NV<T>; l += LINE) __builtin_prefetch(pf + j + l, 0, 2);
        const V<T> d0 = ld(x + j) - vsh, d1 = ld(x + j + NV<T>) - vsh;
        a0 += d0;
        a1 += d1;
        b0 += d0 * d0;
        b1 += d1 * d1;
      }
      T a = hsum<T>(a0 + a1), b = hsum<T>(b0 + b1);
      for (; j < j1; ++j) {
        const T d = x[j] - sh;
        a += d;
        b += d * d;
      }
      s1[0] += a;
      s2[0] += b;
    }
    return;
  }
  T a[4096], b[4096];  // per-channel run sums (C <= 4096 here; the caller splits wider rows)
  for (int64_t p0 = 0; p0 < len; p0 += BN_RUN / 16) {
    const int64_t p1 = p0 + BN_RUN / 16 < len ? p0 + BN_RUN / 16 : len;
    for (int64_t c = 0; c < C; ++c) a[c] = b[c] = T(0);
    for (int64_t p = p0; p < p1; ++p) {
      const T* r = x + p * C;
      for (int64_t c = 0; c < C; ++c) {
        const T d = r[c] - shift[c];
        a[c] += d;
        b[c] += d * d;
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      s1[c] += a[c];
      s2[c] += b[c];
    }
  }
}

// The pre-clamp value x * k + b (U: a scalar or a vector), in one place: the backward
// recomputes the forward's value bit for bit (the same expression, contracted to an FMA alike)
// to know where the clamp passed the gradient, instead of reading the output.
template <class U>
DILCONV_INLINE U bn_pre(U x, U k, U b) {
  return x * k + b;
}

// y[j] for j < len: vec(j) a vector of them (st, or st_stream after a scalar head up to y's
// vector alignment when stream, fenced), one(j) the scalar tail (and head)
template <class T, class One, class Vec>
DILCONV_INLINE void store_values(T* y, int64_t len, bool stream, One&& one, Vec&& vec) {
  int64_t j = 0;
  if (stream) {
    for (; j < len && reinterpret_cast<uintptr_t>(y + j) % VB; ++j) one(j);
    for (; j + NV<T> <= len; j += NV<T>) st_stream(y + j, vec(j));
    stream_fence();
  }
  for (; j + NV<T> <= len; j += NV<T>) st(y + j, vec(j));
  for (; j < len; ++j) one(j);
}

// y = clamp(x * scale[c] + bias[c], lo, hi); pf (planar, nullable): len values read next (the
// next channel's plane), prefetched into the L2 a line per line written; stream: y by
// streaming stores (st_stream) where its rows are vector-aligned, fenced before returning
template <class T>
void bn_apply(const T* x, int64_t len, int64_t C, bool planar, const T* scale, const T* bias,
              T lo, T hi, T* y, const T* pf, bool stream) {
  const V<T> vlo = splat<T>(lo), vhi = splat<T>(hi);
  if (planar) {
    constexpr int64_t LINE = 64 / sizeof(T);
    const T k = scale[0], b = bias[0];
    const V<T> vk = splat<T>(k), vb = splat<T>(b);
    const auto one = [&](int64_t j) {
      const T v = bn_pre<T>(x[j], k, b);
      y[j] = v < lo ? lo : (v > hi ? hi : v);
    };
    const auto vec = [&](int64_t j) {
      if (pf && j % LINE == 0) __builtin_prefetch(pf + j, 0, 2);
      return clamp_v<T>(bn_pre<V<T>>(ld(x + j), vk, vb), vlo, vhi);
    };
    store_values<T>(y, len, stream, one, vec);
    return;
  }
  if (stream && C % NV<T> == 0 && reinterpret_cast<uintptr_t>(y) % VB == 0) {
    for (int64_t p = 0; p < len; ++p)
      for (int64_t c = 0; c < C; c += NV<T>) {
        const V<T> v = bn_pre<V<T>>(ld(x + p * C + c), ld(scale + c), ld(bias + c));
        st_stream(y + p * C + c, clamp_v<T>(v, vlo, vhi));
      }
    stream_fence();
    return;
  }
  for (int64_t p = 0; p < len; ++p) {
    const T* r = x + p * C;
    T* d = y + p * C;
    for (int64_t c = 0; c < C; ++c) {
      const T v = bn_pre<T>(r[c], scale[c], bias[c]);
      d[c] = v < lo ? lo : (v > hi ? hi : v);
    }
  }
}

// Backward sums: with gz = g where lo < x * scale[c] + bias[c] < hi (the clamp's gradient; 0
// elsewhere), s1[c] += sum gz, s2[c] += sum gz * (x - mean[c])
template <class T>
void bn_grad_sums(const T* g, const T* x, int64_t len, int64_t C, bool planar, const T* mean,
                  const T* scale, const T* bias, T lo, T hi, double* s1, double* s2) {
  const bool all = lo == -__builtin_inf() && hi == __builtin_inf();  // no clamp: NaN passes too
  if (planar) {
    const T m = mean[0], k = scale[0], b = bias[0];
    const V<T> vm = splat<T>(m), vk = splat<T>(k), vb = splat<T>(b), vlo = splat<T>(lo),
               vhi = splat<T>(hi), zero{};
    for (int64_t j0 = 0; j0 < len; j0 += BN_RUN) {
      const int64_t j1 = j0 + BN_RUN < len ? j0 + BN_RUN : len;
      V<T> va{}, vb2{};
      int64_t j = j0;
      if (all) {
        for (; j + NV<T> <= j1; j += NV<T>) {
          const V<T> gv = ld(g + j);
          va += gv;
          vb2 += gv * (ld(x + j) - vm);
        }
      } else {
        for (; j + NV<T> <= j1; j += NV<T>) {
          const V<T> xv = ld(x + j), gv = ld(g + j), v = bn_pre<V<T>>(xv, vk, vb);
          const V<T> gz = ((v > vlo) & (v < vhi)) ? gv : zero;
          va += gz;
          vb2 += gz * (xv - vm);
        }
      }
      T sa = hsum<T>(va), sb = hsum<T>(vb2);
      for (; j < j1; ++j) {
        const T v = bn_pre<T>(x[j], k, b);
        const T gz = (all || (v > lo && v < hi)) ? g[j] : T(0);
        sa += gz;
        sb += gz * (x[j] - m);
      }
      s1[0] += sa;
      s2[0] += sb;
    }
    return;
  }
  T a[4096], b[4096];
  for (int64_t p0 = 0; p0 < len; p0 += BN_RUN / 16) {
    const int64_t p1 = p0 + BN_RUN / 16 < len ? p0 + BN_RUN / 16 : len;
    for (int64_t c = 0; c < C; ++c) a[c] = b[c] = T(0);
    for (int64_t p = p0; p < p1; ++p) {
      const T *gr = g + p * C, *xr = x + p * C;
      if (all) {
        for (int64_t c = 0; c < C; ++c) {
          a[c] += gr[c];
          b[c] += gr[c] * (xr[c] - mean[c]);
        }
      } else {
        for (int64_t c = 0; c < C; ++c) {
          const T v = bn_pre<T>(xr[c], scale[c], bias[c]);
          const T gz = (v > lo && v < hi) ? gr[c] : T(0);
          a[c] += gz;
          b[c] += gz * (xr[c] - mean[c]);
        }
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      s1[c] += a[c];
      s2[c] += b[c];
    }
  }
}

// gx = k1[c] * gz - k2[c] - k3[c] * (x - mean[c]) (gz as in bn_grad_sums); pg, px (planar,
// nullable): the g and x values read next, prefetched as in bn_apply; stream as in bn_apply
template <class T>
void bn_grad_apply(const T* g, const T* x, int64_t len, int64_t C, bool planar, const T* mean,
                   const T* scale, const T* bias, const T* k1, const T* k2, const T* k3, T lo,
                   T hi, T* gx, const T* pg, const T* px, bool stream) {
  const bool all = lo == -__builtin_inf() && hi == __builtin_inf();
  if (planar) {
    constexpr int64_t LINE = 64 / sizeof(T);
    const T m = mean[0], k = scale[0], b = bias[0], a = k1[0], b2 = k2[0], c3 = k3[0];
    const V<T> vm = splat<T>(m), vk = splat<T>(k), vb = splat<T>(b), vlo = splat<T>(lo),
               vhi = splat<T>(hi), va = splat<T>(a), vb2 = splat<T>(b2), vc3 = splat<T>(c3),
               zero{};
    const auto one = [&](int64_t j) {
      const T v = bn_pre<T>(x[j], k, b);
      const T gz = (all || (v > lo && v < hi)) ? g[j] : T(0);
      gx[j] = a * gz - b2 - c3 * (x[j] - m);
    };
    const auto vec = [&](int64_t j) {
      if (j % LINE == 0) {
        if (pg) __builtin_prefetch(pg + j, 0, 2);
        if (px) __builtin_prefetch(px + j, 0, 2);
      }
      const V<T> xv = ld(x + j), gv = ld(g + j);
      V<T> gz = gv;
      if (!all) {
        const V<T> v = bn_pre<V<T>>(xv, vk, vb);
        gz = ((v > vlo) & (v < vhi)) ? gv : zero;
      }
      return va * gz - vb2 - vc3 * (xv - vm);
    };
    store_values<T>(gx, len, stream, one, vec);
    return;
  }
  if (stream && C % NV<T> == 0 && reinterpret_cast<uintptr_t>(gx) % VB == 0) {
    const V<T> vlo = splat<T>(lo), vhi = splat<T>(hi), zero{};
    for (int64_t p = 0; p < len; ++p)
      for (int64_t c = 0; c < C; c += NV<T>) {
        const V<T> xv = ld(x + p * C + c), gv = ld(g + p * C + c);
        const V<T> v = bn_pre<V<T>>(xv, ld(scale + c), ld(bias + c));
        const V<T> gz = all ? gv : (((v > vlo) & (v < vhi)) ? gv : zero);
        st_stream(gx + p * C + c, ld(k1 + c) * gz - ld(k2 + c) - ld(k3 + c) * (xv - ld(mean + c)));
      }
    stream_fence();
    return;
  }
  for (int64_t p = 0; p < len; ++p) {
    const T *gr = g + p * C, *xr = x + p * C;
    T* d = gx + p * C;
    if (all) {
      for (int64_t c = 0; c < C; ++c) d[c] = k1[c] * gr[c] - k2[c] - k3[c] * (xr[c] - mean[c]);
    } else {
      for (int64_t c = 0; c < C; ++c) {
        const T v = bn_pre<T>(xr[c], scale[c], bias[c]);
        const T gz = (v > lo && v < hi) ? gr[c] : T(0);
        d[c] = k1[c] * gz - k2[c] - k3[c] * (xr[c] - mean[c]);
      }
    }
  }
}

// ------------------------------------------------------------------------------------------
// cross-entropy (kernels.h): vectors along the pixels, the classes a loop; exp and log as
// polynomials (no libm vector calls without -ffast-math), accurate to a few ulp of T.

// exp(r) for r <= ~0 (the argument here is x - max or (x - max) - lsum): 2^n exp(f),
// n = round(r / ln2), f = r - n ln2 in two parts (|f| <= ln2 / 2), exp(f) by its Taylor series
// (13 terms for double, 7 for float: the next term is below half an ulp); 0 below the smallest
// normal's log, the argument capped above at the largest finite result's (never reached from
// x - max)
template <class T>
DILCONV_INLINE V<T> vexp_neg(V<T> r) {
  using I = typename Vec<T>::mask;
  constexpr bool dbl = sizeof(T) == 8;
  constexpr int terms = dbl ? 13 : 7;
  const V<T> lo = splat<T>(dbl ? T(-708.0) : T(-87.0)), hi = splat<T>(dbl ? T(709.0) : T(88.0));
  V<T> rc = r < lo ? lo : r;
  rc = rc > hi ? hi : rc;
  const V<T> magic = splat<T>(dbl ? T(6755399441055744.0) : T(12582912.0));  // 1.5 * 2^52, 2^23
  const V<T> n = (rc * splat<T>(T(1.4426950408889634)) + magic) - magic;
  const V<T> f = (rc - n * splat<T>(T(0.693145751953125))) - n * splat<T>(T(1.4286068203094173e-06));
  // Horner on the coefficients 1 / k!: one FMA a term
  T inv_fact[terms + 1] = {T(1)};
  for (int k = 1; k <= terms; ++k) inv_fact[k] = inv_fact[k - 1] / T(k);
  V<T> p = splat<T>(inv_fact[terms]);
  for (int k = terms - 1; k >= 0; --k) p = p * f + splat<T>(inv_fact[k]);
  const I e = (__builtin_convertvector(n, I) + I{} + (dbl ? 1023 : 127)) << (dbl ? 52 : 23);
  V<T> two_n;
  __builtin_memcpy(&two_n, &e, sizeof e);
  const V<T> out = p * two_n;
  return r < lo ? V<T>{} : out;
}

// log(s) for s >= 1 (a sum of exp(x_c - max) over the classes): s = m 2^e with m in
// [sqrt(1/2), sqrt(2)), log m = 2 atanh(u), u = (m - 1) / (m + 1) <= 0.1716, by its series.
// NaN (a NaN logit) stays NaN (its bits would read as a finite number)
template <class T>
DILCONV_INLINE V<T> vlog_ge1(V<T> s) {
  using I = typename Vec<T>::mask;
  constexpr bool dbl = sizeof(T) == 8;
  constexpr int mbits = dbl ? 52 : 23, bias = dbl ? 1023 : 127, terms = dbl ? 12 : 6;
  I bits;
  __builtin_memcpy(&bits, &s, sizeof s);
  const I one = (I{} + bias) << mbits;
  const I mant = (I{} + 1) << mbits;
  I e = (bits >> mbits) - bias;
  I mb = (bits & (mant - 1)) | one;
  V<T> m;
  __builtin_memcpy(&m, &mb, sizeof m);
  const auto big = m > splat<T>(T(1.4142135623730951));
  m = big ? m * splat<T>(T(0.5)) : m;
  e = e + (big ? I{} + 1 : I{});
  const V<T> u = (m - splat<T>(T(1))) / (m + splat<T>(T(1))), u2 = u * u;
  V<T> p = splat<T>(T(1) / T(2 * terms + 1));
  for (int k = terms - 1; k >= 0; --k) p = p * u2 + splat<T>(T(1) / T(2 * k + 1));
  const V<T> out = __builtin_convertvector(e, V<T>) * splat<T>(T(0.6931471805599453)) +
                   splat<T>(T(2)) * u * p;
  return s == s ? out : s;
}

// the logits of pixels [p, p + L) as C rows of L values, rows `rs` apart: in place where the
// pixels are contiguous (ps == 1), else gathered into scratch (channels-last: a pixel's classes
// are the contiguous ones)
template <class T>
DILCONV_INLINE const T* ce_rows(const T* x, int64_t cs, int64_t ps, int64_t C, int64_t p,
                                T* scratch, int64_t& rs) {
  constexpr int64_t L = NV<T>;
  if (ps == 1) {
    rs = cs;
    return x + p;
  }
  for (int64_t i = 0; i < L; ++i) {
    const T* src = x + (p + i) * ps;
    for (int64_t c = 0; c < C; ++c) scratch[c * L + i] = src[c * cs];
  }
  rs = L;
  return scratch;
}

// the max over C classes `rs` apart, of one pixel or (_vec) of L pixels at once
template <class T>
DILCONV_INLINE T class_max(const T* x, int64_t rs, int64_t C) {
  T mx = x[0];
  for (int64_t c = 1; c < C; ++c) mx = x[c * rs] > mx ? x[c * rs] : mx;
  return mx;
}
template <class T>
DILCONV_INLINE V<T> class_max_vec(const T* x, int64_t rs, int64_t C) {
  V<T> mx = ld(x);
  for (int64_t c = 1; c < C; ++c) {
    const V<T> v = ld(x + c * rs);
    mx = mx > v ? mx : v;
  }
  return mx;
}

// The loss of pixels [0, m) (0 where ignored) and lsum = log(sum_c exp(x_c - max)), which the
// backward takes with the max it recomputes: the softmax as exp((x_c - max) - lsum), exact
// differences, where exp(x_c - lse) lost them to the rounding of lse = max + lsum (logits of
// 1e6: gradient errors of ~3e-2; 1e30: 1/C for every class). Returns the count of labels
// outside [0, C) that are not `ignore`.
template <class T>
int64_t ce_fwd(const T* x, int64_t cs, int64_t ps, int64_t C, const int64_t* t, int64_t m,
               int64_t ignore, T* loss, T* lsum, T* scratch) {
  constexpr int64_t L = NV<T>;
  int64_t bad = 0;
  int64_t p = 0;
  for (; p + L <= m; p += L) {
    int64_t rs;
    const T* xb = ce_rows(x, cs, ps, C, p, scratch, rs);
    const V<T> mx = class_max_vec(xb, rs, C);
    V<T> sum{};
    for (int64_t c = 0; c < C; ++c) sum += vexp_neg<T>(ld(xb + c * rs) - mx);
    // the loss as (max - x_k) + log(sum): lse - x_k cancels where the logits are large (1e30
    // had given 0 for log(C))
    const V<T> lg = vlog_ge1<T>(sum);
    for (int64_t i = 0; i < L; ++i) {
      const int64_t k = t[p + i];
      const bool ok = k >= 0 && k < C;
      bad += !ok && k != ignore;
      loss[p + i] = ok && k != ignore ? (mx[i] - xb[k * rs + i]) + lg[i] : T(0);
      lsum[p + i] = lg[i];
    }
  }
  for (; p < m; ++p) {  // the last pixels, one at a time (libm)
    const T* xp = x + p * ps;
    const T mx = class_max(xp, cs, C);
    double sum = 0;
    for (int64_t c = 0; c < C; ++c) sum += __builtin_exp(double(xp[c * cs] - mx));
    const T lg = T(__builtin_log(sum));
    const int64_t k = t[p];
    const bool ok = k >= 0 && k < C;
    bad += !ok && k != ignore;
    loss[p] = ok && k != ignore ? (mx - xp[k * cs]) + lg : T(0);
    lsum[p] = lg;
  }
  return bad;
}

template <class T>
int64_t ce_bwd(const T* x, int64_t cs, int64_t ps, int64_t C, const int64_t* t, const T* g,
               const T* lsum, int64_t m, int64_t ignore, T* gx, int64_t gcs, int64_t gps,
               T* scratch) {
  constexpr int64_t L = NV<T>;
  int64_t bad = 0;
  int64_t p = 0;
  for (; p + L <= m; p += L) {
    V<T> gv = ld(g + p);
    for (int64_t i = 0; i < L; ++i)
      if (t[p + i] == ignore) gv[i] = T(0);
    const V<T> l = ld(lsum + p);
    int64_t rs;
    const T* xb = ce_rows(x, cs, ps, C, p, scratch, rs);
    const V<T> mx = class_max_vec(xb, rs, C);
    // the gradient rows: in place where its pixels are contiguous, else in scratch, then spread
    T* gb = gps == 1 ? gx + p : scratch + C * L;
    const int64_t grs = gps == 1 ? gcs : L;
    for (int64_t c = 0; c < C; ++c)
      st(gb + c * grs, gv * vexp_neg<T>((ld(xb + c * rs) - mx) - l));
    for (int64_t i = 0; i < L; ++i) {
      const int64_t k = t[p + i];
      if (k >= 0 && k < C) gb[k * grs + i] -= gv[i];
      else bad += k != ignore;
    }
    if (gps != 1)
      for (int64_t i = 0; i < L; ++i) {
        T* dst = gx + (p + i) * gps;
        for (int64_t c = 0; c < C; ++c) dst[c * gcs] = gb[c * L + i];
      }
  }
  for (; p < m; ++p) {
    const T* xp = x + p * ps;
    T* gp_ = gx + p * gps;
    const bool ign = t[p] == ignore;
    const T gp = ign ? T(0) : g[p];
    const T mx = class_max(xp, cs, C);
    for (int64_t c = 0; c < C; ++c)
      gp_[c * gcs] = gp * T(__builtin_exp(double(xp[c * cs] - mx) - double(lsum[p])));
    if (t[p] >= 0 && t[p] < C) gp_[t[p] * gcs] -= gp;
    else bad += !ign;
  }
  return bad;
}

template <class T>
Kernels<T> make(const char* isa) {
  Kernels<T> k;
  k.vec = NV<T>;
  k.fwd = &fwd<T>;
  k.fwd_scratch = &fwd_scratch<T>;
  k.dw_flat_fwd = &dw_flat_fwd<T>;
  k.dw_flat_scratch = &dw_flat_scratch<T>;
  k.dw_flat_wgrad = &dw_flat_wgrad<T>;
  k.dw_flat_wgrad_scratch = &dw_flat_wgrad_scratch<T>;
  k.dw_flat_bwd = &dw_flat_bwd<T>;
  k.dw_flat_bwd_scratch = &dw_flat_bwd_scratch<T>;
  k.dgrad_scatter = &dgrad_scatter<T>;
  k.dw_s2_dgrad = &dw_s2_dgrad<T>;
  k.dw_s2_dgrad_scratch = &dw_s2_dgrad_scratch<T>;
  k.dgrad_scatter_scratch = &dgrad_scatter_scratch<T>;
  k.wgrad = &wgrad<T>;
  k.wgrad_scratch = &wgrad_scratch<T>;
  k.im2col = &im2col<T>;
  k.col2im = &col2im<T>;
  k.col2im_nhwc = &col2im_nhwc<T>;
  k.im2col_nhwc = &im2col_nhwc<T>;
  k.dw_nhwc_fwd = &dw_nhwc_fwd<T>;
  k.dw_nhwc_dgrad = &dw_nhwc_dgrad<T>;
  k.dw_nhwc_wgrad = &dw_nhwc_wgrad<T>;
  k.g_nhwc_fwd = &g_nhwc_fwd<T>;
  k.g_nhwc_wgrad = &g_nhwc_wgrad<T>;
  k.bias_act = &bias_act<T>;
  k.gemm_bcast = &gemm_bcast<T>;
  k.resize_fwd = &resize_fwd<T>;
  k.resize_bwd = &resize_bwd<T>;
  k.bn_moments = &bn_moments<T>;
  k.bn_apply = &bn_apply<T>;
  k.bn_grad_sums = &bn_grad_sums<T>;
  k.bn_grad_apply = &bn_grad_apply<T>;
  k.ce_fwd = &ce_fwd<T>;
  k.ce_bwd = &ce_bwd<T>;
  k.isa = isa;
  return k;
}
