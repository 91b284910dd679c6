// Unit-test kernels for the CUDA emulation (tests/test_emulation.py builds this with g++ and runs
// one subcommand per test; each prints "OK" on success, or a diagnosis and exits non-zero).
#define DILCONV_EMU 1
#include "kernels/platform.cuh"

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

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

}  // namespace DC_TARGET_NS

namespace {

int fails = 0;
void check(bool ok, const std::string& what) {
  if (!ok) {
    std::printf("FAIL: %s\n", what.c_str());
    ++fails;
  }
}
bool close(double a, double b, double rtol, double atol = 1e-6) { return std::abs(a - b) <= atol + rtol * std::abs(b); }

std::vector<float> randv(size_t n, unsigned seed) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<float> d(-1.f, 1.f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

void test_matmul() {
  for (auto [M, N, K] : {std::tuple{37, 29, 45}, std::tuple{16, 16, 16}, std::tuple{1, 33, 7}}) {
    auto A = randv(size_t(M) * K, 1), B = randv(size_t(K) * N, 2);
    std::vector<float> C(size_t(M) * N, -7.f);
    dc::launch(dc_emu::matmul_tiled<float>, dim3(dc::ceil_div(N, 16), dc::ceil_div(M, 16)), dim3(16, 16), 0,
               dc::Stream{}, A.data(), B.data(), C.data(), M, N, K);
    for (int i = 0; i < M; ++i)
      for (int j = 0; j < N; ++j) {
        double ref = 0;
        for (int k = 0; k < K; ++k) ref += double(A[size_t(i) * K + k]) * B[size_t(k) * N + j];
        check(close(C[size_t(i) * N + j], ref, 1e-5), "matmul " + std::to_string(i) + "," + std::to_string(j));
      }
  }
}

void test_block_sum() {
  for (int threads : {32, 96, 256, 1024}) {
    const int blocks = 3, n = 1000;
    auto in = randv(size_t(blocks) * n, 3);
    std::vector<float> out(blocks, -1.f);
    dc::launch(dc_emu::block_sum, dim3(blocks), dim3(threads), sizeof(float) * ((threads + 31) / 32), dc::Stream{},
               in.data(), out.data(), n);
    for (int b = 0; b < blocks; ++b) {
      double ref = 0;
      for (int i = 0; i < n; ++i) ref += in[size_t(b) * n + i];
      check(close(out[b], ref, 1e-5, 1e-4), "block_sum threads=" + std::to_string(threads));
    }
  }
}

const std::map<std::string, std::function<void()>> tests = {
    {"matmul", test_matmul},
    {"block_sum", test_block_sum},
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    for (auto& [name, _] : tests) std::printf("%s\n", name.c_str());
    return 0;
  }
  for (int i = 1; i < argc; ++i) {
    auto it = tests.find(argv[i]);
    if (it == tests.end()) {
      std::printf("unknown test %s\n", argv[i]);
      return 2;
    }
    try {
      it->second();
    } catch (const std::exception& e) {
      std::printf("FAIL: %s threw: %s\n", argv[i], e.what());
      ++fails;
    }
  }
  if (fails) return 1;
  std::printf("OK\n");
  return 0;
}
