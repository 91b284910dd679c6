// The emulation's own test kernels in the sanitizer matrix, and the deliberately broken kernels
// that prove each sanitizer catches what it should.
#include "sanitize/harness.h"
#include "emu/test_kernels.h"

namespace {

std::vector<double> matmul_ref(const std::vector<float>& A, const std::vector<float>& B, int M, int N, int K) {
  std::vector<double> C(size_t(M) * N, 0.0);
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j)
      for (int k = 0; k < K; ++k) C[size_t(i) * N + j] += double(A[size_t(i) * K + k]) * B[size_t(k) * N + j];
  return C;
}

}  // namespace

DC_SANITIZE_CASE(emu_matmul_tiled) {
  const int M = 19, N = 33, K = 21;
  auto A = dcs::random<float>(size_t(M) * K, 1), B = dcs::random<float>(size_t(K) * N, 2);
  std::vector<float> C(size_t(M) * N);
  dc::launch(dc_emu::matmul_tiled<float>, dim3(dc::ceil_div(N, 16), dc::ceil_div(M, 16)), dim3(16, 16), 0, dc::Stream{},
             A.data(), B.data(), C.data(), M, N, K);
  dcs::expect_close(C, matmul_ref(A, B, M, N, K), 1e-5, 1e-6, "matmul");
}

DC_SANITIZE_CASE(emu_block_sum) {
  const int blocks = 2, n = 300, threads = 96;
  auto in = dcs::random<float>(size_t(blocks) * n, 3);
  std::vector<float> out(blocks);
  dc::launch(dc_emu::block_sum, dim3(blocks), dim3(threads), sizeof(float) * 3, dc::Stream{}, in.data(), out.data(), n);
  std::vector<double> ref(blocks, 0.0);
  for (int b = 0; b < blocks; ++b)
    for (int i = 0; i < n; ++i) ref[b] += in[size_t(b) * n + i];
  dcs::expect_close(out, ref, 1e-5, 1e-4, "block_sum");
}

DC_SANITIZE_CASE(emu_wmma_gemm) {
  namespace wm = dc::wmma;
  const int M = 20, N = 36, K = 40;
  auto A = dcs::random<dc::half>(size_t(M) * K, 4), B = dcs::random<dc::half>(size_t(K) * N, 5);
  auto C = dcs::random<float>(size_t(M) * N, 6);
  std::vector<float> D(size_t(M) * N);
  dc::launch(dc_emu::wmma_gemm<dc::half, wm::row_major, wm::row_major>, dim3(dc::ceil_div(N, 32), dc::ceil_div(M, 32)),
             dim3(128), 0, dc::Stream{}, A.data(), B.data(), C.data(), D.data(), M, N, K, 1.0f);
  std::vector<double> ref(size_t(M) * N);
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      double s = C[size_t(n) * M + m];  // C is read column-major
      for (int k = 0; k < K; ++k) s += double(dc::to_float(A[size_t(m) * K + k])) * dc::to_float(B[size_t(k) * N + n]);
      ref[size_t(m) * N + n] = s;
    }
  dcs::expect_close(D, ref, 1e-5, 1e-5, "wmma gemm");
}

DC_SANITIZE_CASE(emu_reverse_with_barrier) {
  constexpr int N = 64;
  auto in = dcs::random<float>(2 * N, 7);
  std::vector<float> out(2 * N);
  dc::launch(dc_emu::reverse_kernel<N>, dim3(2), dim3(N), 0, dc::Stream{}, in.data(), out.data());
  std::vector<double> ref(2 * N);
  for (int b = 0; b < 2; ++b)
    for (int i = 0; i < N; ++i) ref[b * N + i] = in[b * N + N - 1 - i];
  dcs::expect_close(out, ref, 0, 0, "reverse");
}

// ---- deliberately broken kernels ----------------------------------------------------------
namespace dc_emu {

template <int N>
__global__ void reverse_no_barrier(const float* in, float* out) {
  __shared__ float tile[N];
  tile[threadIdx.x] = dc::load(in + blockIdx.x * N + threadIdx.x);
  // missing __syncthreads(): thread i reads what thread N-1-i writes
  dc::store(out + blockIdx.x * N + threadIdx.x, tile[N - 1 - threadIdx.x]);
}

__global__ void oob_global_store(float* out, int n) {
  // one thread too many writes: the bounds check is missing
  dc::store(out + threadIdx.x, float(n));
}

__global__ void oob_dynamic_shared(float* out) {
  DC_DYNAMIC_SHARED(float, buf);  // sized for blockDim.x floats
  buf[threadIdx.x + 1] = 1.f;     // the last thread writes one past the end
  __syncthreads();
  dc::store(out + threadIdx.x, buf[threadIdx.x]);
}

__global__ void oob_static_shared(float* out, int n) {
  __shared__ float tile[32];
  tile[threadIdx.x + n] = 1.f;  // n = 1: thread 31 writes tile[32]
  __syncthreads();
  dc::store(out + threadIdx.x, tile[threadIdx.x]);
}

}  // namespace dc_emu

DC_SANITIZE_BROKEN(missing_barrier) {
  constexpr int N = 64;
  auto in = dcs::random<float>(N, 8);
  std::vector<float> out(N);
  dc::launch(dc_emu::reverse_no_barrier<N>, dim3(1), dim3(N), 0, dc::Stream{}, in.data(), out.data());
}

DC_SANITIZE_BROKEN(oob_global) {
  std::vector<float> out(32);
  dc::launch(dc_emu::oob_global_store, dim3(1), dim3(33), 0, dc::Stream{}, out.data(), 32);
}

DC_SANITIZE_BROKEN(oob_dynamic_shared) {
  std::vector<float> out(32);
  dc::launch(dc_emu::oob_dynamic_shared, dim3(1), dim3(32), 32 * sizeof(float), dc::Stream{}, out.data());
}

DC_SANITIZE_BROKEN(oob_static_shared) {
  std::vector<float> out(32);
  dc::launch(dc_emu::oob_static_shared, dim3(1), dim3(32), 0, dc::Stream{}, out.data(), 1);
}
