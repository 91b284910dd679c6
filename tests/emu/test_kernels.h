// Test kernels of the CUDA emulation: correct kernels (tiled matmul, reductions, shuffles, votes,
// barriers, dynamic smem, atomics, WMMA) and deliberately misused ones. Used by tests/emu/emu_unit.cpp
// (unit tests) and tests/sanitize/case_emu.cpp (the sanitizer matrix).
#pragma once
#include <type_traits>

#include "kernels/platform.cuh"
#include "kernels/wmma.cuh"

namespace DC_TARGET_NS {

constexpr int TILE = 16;

// C[M,N] = A[M,K] * B[K,N], 16x16 shared-memory tiles
template <typename T>
__global__ void matmul_tiled(const T* A, const T* B, T* C, int M, int N, int K) {
  __shared__ float As[TILE][TILE];
  __shared__ float Bs[TILE][TILE];
  const int row = blockIdx.y * TILE + threadIdx.y, col = blockIdx.x * TILE + threadIdx.x;
  float acc = 0.f;
  for (int k0 = 0; k0 < K; k0 += TILE) {
    const int ka = k0 + threadIdx.x, kb = k0 + threadIdx.y;
    As[threadIdx.y][threadIdx.x] = (row < M && ka < K) ? dc::to_float(dc::load(A + size_t(row) * K + ka)) : 0.f;
    Bs[threadIdx.y][threadIdx.x] = (kb < K && col < N) ? dc::to_float(dc::load(B + size_t(kb) * N + col)) : 0.f;
    __syncthreads();
    for (int k = 0; k < TILE; ++k) acc += As[threadIdx.y][k] * Bs[k][threadIdx.x];
    __syncthreads();
  }
  if (row < M && col < N) dc::store(C + size_t(row) * N + col, dc::from_float<T>(acc));
}

// out[b] = sum of in[b*n : (b+1)*n]: grid-stride partial sums, warp shuffles, smem across warps
__global__ void block_sum(const float* in, float* out, int n) {
  DC_DYNAMIC_SHARED(float, warp_sums);
  float v = 0.f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) v += dc::load(in + size_t(blockIdx.x) * n + i);
  for (int off = 16; off > 0; off /= 2) v += __shfl_down_sync(0xFFFFFFFFu, v, off);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    const int nw = (blockDim.x + 31) / 32;
    float w = lane < nw ? warp_sums[lane] : 0.f;
    for (int off = 16; off > 0; off /= 2) w += __shfl_xor_sync(0xFFFFFFFFu, w, off);
    if (lane == 0) dc::store(out + blockIdx.x, w);
  }
}


// ---- warp intrinsics: every lane writes what it received --------------------------------------
// mode selects the intrinsic; arg is srcLane/delta/laneMask; width the segment width.
__global__ void shfl_kernel(float* out, int mode, int arg, int width) {
  const float v = 100.f + 1.5f * threadIdx.x;
  float r = 0.f;
  switch (mode) {
    case 0: r = __shfl_sync(0xFFFFFFFFu, v, arg, width); break;
    case 1: r = __shfl_up_sync(0xFFFFFFFFu, v, unsigned(arg), width); break;
    case 2: r = __shfl_down_sync(0xFFFFFFFFu, v, unsigned(arg), width); break;
    case 3: r = __shfl_xor_sync(0xFFFFFFFFu, v, arg, width); break;
  }
  dc::store(out + threadIdx.x, r);
}

// lanes of each half warp shuffle among themselves with disjoint masks, concurrently
__global__ void half_warp_kernel(float* out) {
  const unsigned lane = threadIdx.x % 32;
  const unsigned mask = lane < 16 ? 0x0000FFFFu : 0xFFFF0000u;
  const double v = 1000.0 + threadIdx.x;
  // rotate by 3 within the own half: srcLane is absolute, so add the half's base
  const int src = int((lane & 16u) + ((lane + 3u) & 15u));
  dc::store(out + threadIdx.x, float(__shfl_sync(mask, v, src)));
}

__global__ void vote_kernel(const int* pred, unsigned* out) {
  const int p = dc::load(pred + threadIdx.x);
  const unsigned b = __ballot_sync(0xFFFFFFFFu, p);
  const int any = __any_sync(0xFFFFFFFFu, p), all = __all_sync(0xFFFFFFFFu, p);
  const unsigned sum = __reduce_add_sync(0xFFFFFFFFu, unsigned(p) * (threadIdx.x + 1));
  const int mn = __reduce_min_sync(0xFFFFFFFFu, p ? int(threadIdx.x) : 1000);
  const unsigned mx = __reduce_max_sync(0xFFFFFFFFu, p ? threadIdx.x : 0u);
  const int cnt = __syncthreads_count(p), band = __syncthreads_and(p), bor = __syncthreads_or(p);
  unsigned* o = out + threadIdx.x * 9;
  dc::store(o + 0, b);
  dc::store(o + 1, unsigned(any));
  dc::store(o + 2, unsigned(all));
  dc::store(o + 3, sum);
  dc::store(o + 4, unsigned(mn));
  dc::store(o + 5, mx);
  dc::store(o + 6, unsigned(cnt));
  dc::store(o + 7, unsigned(band));
  dc::store(o + 8, unsigned(bor));
}

// block of 48 threads: warp 1 has 16 lanes. A full-mask sum over the existing lanes works; a
// read of a lane beyond the block is NaN.
__global__ void partial_warp_kernel(float* out) {
  float v = float(threadIdx.x);
  const float beyond = __shfl_down_sync(0xFFFFFFFFu, v, 16);  // lanes 0-15 of warp 1 read lanes 16-31
  for (int off = 8; off > 0; off /= 2) v += __shfl_xor_sync(0xFFFFFFFFu, v, off, 16);
  dc::store(out + 2 * threadIdx.x, v);
  dc::store(out + 2 * threadIdx.x + 1, beyond);
}

// reverse within a block through shared memory: wrong without the barrier
template <int N>
__global__ void reverse_kernel(const float* in, float* out) {
  __shared__ float tile[N];
  tile[threadIdx.x] = dc::load(in + blockIdx.x * N + threadIdx.x);
  __syncthreads();
  dc::store(out + blockIdx.x * N + threadIdx.x, tile[N - 1 - threadIdx.x]);
}

// dynamic shared memory: the first half of the threads read what the second half wrote before
// the barrier; `probe` returns what an unwritten element holds at block start
__global__ void dyn_smem_kernel(const float* in, float* out, float* probe) {
  DC_DYNAMIC_SHARED(float, buf);
  if (threadIdx.x == 0) dc::store(probe + blockIdx.x, buf[blockDim.x]);  // never written
  __syncthreads();
  buf[threadIdx.x] = 2.f * dc::load(in + blockIdx.x * blockDim.x + threadIdx.x);
  __syncthreads();
  dc::store(out + blockIdx.x * blockDim.x + threadIdx.x, buf[blockDim.x - 1 - threadIdx.x]);
}

__global__ void atomic_kernel(int* counter, float* fsum, unsigned long long* ull, int* mx, int* cas_winners) {
  const int gid = blockIdx.x * blockDim.x + threadIdx.x;
  atomicAdd(counter, 1);
  atomicAdd(fsum, float(gid % 7));  // integers: exact in float at this size, any order
  atomicAdd(ull, 1ull << 33);
  atomicMax(mx, (gid * 37) % 1001);
  if (atomicCAS(cas_winners, 0, gid + 1) == 0) atomicAdd(cas_winners + 1, 1);
}

// misuse: returns before a barrier the others reach
__global__ void early_return_kernel(float* out) {
  if (threadIdx.x == 5) return;
  __syncthreads();
  dc::store(out + threadIdx.x, 1.f);
}
// misuse: lane 3 waits in a shuffle the other lanes never execute
__global__ void divergent_shfl_kernel(float* out) {
  float v = 1.f;
  if (threadIdx.x % 32 == 3) v = __shfl_sync(0xFFFFFFFFu, v, 0);
  dc::store(out + threadIdx.x, v);
  __syncthreads();
}
// misuse: a mask that does not include the calling lane
__global__ void bad_mask_kernel(float* out) {
  dc::store(out + threadIdx.x, __shfl_sync(0x1u, 1.f, 0));
}

// ---- WMMA: D[M,N] = alpha * A[M,K] B[K,N] + C, one 16x16 output tile per warp, 2x2 warps ----
// A is [M,K] (a_row) or [K,M]; B is [K,N] (b_row) or [N,K]; C is read column-major from global.
template <typename T, typename LA, typename LB>
__global__ void wmma_gemm(const T* A, const T* B, const float* C, float* D, int M, int N, int K, float alpha) {
  namespace wm = dc::wmma;
  constexpr bool a_row = std::is_same_v<LA, wm::row_major>, b_row = std::is_same_v<LB, wm::row_major>;
  __shared__ __align__(32) T As[32 * 16];
  __shared__ __align__(32) T Bs[16 * 32];
  __shared__ __align__(32) float Cs[4][16 * 16];
  const int warp = threadIdx.x / 32, wm_ = warp / 2, wn = warp % 2;
  const int m0 = blockIdx.y * 32, n0 = blockIdx.x * 32;
  wm::fragment<wm::accumulator, 16, 16, 16, float> acc;
  wm::fill_fragment(acc, 0.0f);
  for (int k0 = 0; k0 < K; k0 += 16) {
    for (int e = threadIdx.x; e < 32 * 16; e += blockDim.x) {
      // As holds the 32x16 A tile in the fragment's layout: row-major [m][k] or col-major [k][m]
      const int m = a_row ? e / 16 : e % 32, k = a_row ? e % 16 : e / 32;
      const bool ok = m0 + m < M && k0 + k < K;
      As[e] = ok ? dc::load(A + (a_row ? size_t(m0 + m) * K + k0 + k : size_t(k0 + k) * M + m0 + m)) : dc::from_float<T>(0.f);
      const int kb = b_row ? e / 32 : e % 16, n = b_row ? e % 32 : e / 16;
      const bool okb = k0 + kb < K && n0 + n < N;
      Bs[e] = okb ? dc::load(B + (b_row ? size_t(k0 + kb) * N + n0 + n : size_t(n0 + n) * K + k0 + kb)) : dc::from_float<T>(0.f);
    }
    __syncthreads();
    wm::fragment<wm::matrix_a, 16, 16, 16, T, LA> fa;
    wm::fragment<wm::matrix_b, 16, 16, 16, T, LB> fb;
    wm::load_matrix_sync(fa, a_row ? As + wm_ * 16 * 16 : As + wm_ * 16, a_row ? 16 : 32);
    wm::load_matrix_sync(fb, b_row ? Bs + wn * 16 : Bs + wn * 16 * 16, b_row ? 32 : 16);
    wm::mma_sync(acc, fa, fb, acc);
    __syncthreads();
  }
  for (int i = 0; i < acc.num_elements; ++i) acc.x[i] *= alpha;
  // C tile, column-major in Cs, through an accumulator load with mem_col_major
  float* cs = Cs[warp];
  for (int l = threadIdx.x % 32; l < 256; l += 32) {
    const int m = l % 16, n = l / 16, gm = m0 + wm_ * 16 + m, gn = n0 + wn * 16 + n;
    cs[l] = gm < M && gn < N ? dc::load(C + size_t(gn) * M + gm) : 0.f;
  }
  __syncwarp();
  wm::fragment<wm::accumulator, 16, 16, 16, float> c;
  wm::load_matrix_sync(c, cs, 16, wm::mem_col_major);
  __syncwarp();
  for (int i = 0; i < c.num_elements; ++i) acc.x[i] += c.x[i];
  wm::store_matrix_sync(cs, acc, 16, wm::mem_row_major);
  __syncwarp();
  for (int l = threadIdx.x % 32; l < 256; l += 32) {
    const int m = l / 16, n = l % 16, gm = m0 + wm_ * 16 + m, gn = n0 + wn * 16 + n;
    if (gm < M && gn < N) dc::store(D + size_t(gm) * N + gn, cs[l]);
  }
}

// misuse: lanes pass different pointers / a misaligned pointer
__global__ void wmma_bad_kernel(int mode) {
  namespace wm = dc::wmma;
  __shared__ __align__(32) dc::half buf[16 * 64];
  wm::fragment<wm::matrix_a, 16, 16, 16, dc::half, wm::row_major> fa;
  const dc::half* p = mode == 0 ? buf + (threadIdx.x % 2) * 16 : mode == 1 ? buf + 8 : buf;
  wm::load_matrix_sync(fa, p, 64);
}

// ---- traffic counters: thread t reads in[offset + t * stride] (as T) and writes out[t] ----------
template <typename T>
__global__ void strided_copy(const T* in, T* out, int stride, int offset, int broadcast) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  const T v = dc::load(in + (broadcast ? offset : offset + t * stride));
  dc::store(out + t, v);
}

// lanes >= 16 are predicated off: they record a zero-byte access at a misaligned address, as the
// emulated cp.async does, which must not count a sector
__global__ void predicated_copy(const float* in, float* out) {
  const int t = threadIdx.x;
  float v = 0.f;
  if (t % 32 < 16)
    v = dc::load(in + t);
  else if (::dc::emu::traffic_enabled() && ::dc::emu::tl_ctx)
    ::dc::emu::traffic_record(::dc::emu::tl_ctx->traffic, std::source_location::current(), in + 1, 0, false);
  dc::store(out + t, v);
}

}  // namespace DC_TARGET_NS
