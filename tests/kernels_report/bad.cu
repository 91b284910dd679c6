// Deliberately bad kernels for tests/test_kernels_report.py: register spills under a tight
// __launch_bounds__ (on and off the default path), and 200 KiB of dynamic shared memory (over
// sm_80's 163 KiB per-block limit, within sm_90's 227 KiB). Not part of the build. (Static shared
// memory above 48 KiB is rejected by ptxas itself.)
#include "kernels/platform.cuh"

namespace DC_TARGET_NS {

// 1024 threads x 2 CTAs/SM leaves 32 registers per thread; 96 live accumulators must spill
__device__ __forceinline__ void spill_body(const float* x, float* y, int n) {
  float acc[96];
#pragma unroll
  for (int i = 0; i < 96; ++i) acc[i] = dc::load(x + (threadIdx.x + i * 37) % n);
  for (int it = 0; it < n; ++it) {
#pragma unroll
    for (int i = 0; i < 96; ++i) acc[i] = acc[i] * acc[(i + 1) % 96] + float(it);
  }
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < 96; ++i) s += acc[i];
  dc::store(y + threadIdx.x, s);
}

__global__ void __launch_bounds__(1024, 2) spilling_kernel(const float* x, float* y, int n) { spill_body(x, y, n); }

// the same, but not on the default path: its spills are reported, not a --check failure
__global__ void __launch_bounds__(1024, 2) rare_spilling_kernel(const float* x, float* y, int n) {
  spill_body(x, y, n);
}

__global__ void __launch_bounds__(128) fine_kernel(const float* x, float* y) {
  DC_DYNAMIC_SHARED(float, buf);
  buf[threadIdx.x] = dc::load(x + threadIdx.x);
  __syncthreads();
  dc::store(y + threadIdx.x, 2.f * buf[127 - threadIdx.x]);
}

// dynamic shared memory without a dc:launch line: reported as unknown (None)
__global__ void __launch_bounds__(64) undeclared_dyn_kernel(const float* x, float* y) {
  DC_DYNAMIC_SHARED(float, buf);
  buf[threadIdx.x] = dc::load(x + threadIdx.x);
  __syncthreads();
  dc::store(y + threadIdx.x, buf[63 - threadIdx.x]);
}

void launch_all(const float* x, float* y, int n, dc::Stream s) {
  dc::launch(spilling_kernel, dim3(1), dim3(1024), 0, s, x, y, n);
  dc::launch(rare_spilling_kernel, dim3(1), dim3(1024), 0, s, x, y, n);
  dc::launch(fine_kernel, dim3(1), dim3(128), 200 * 1024, s, x, y);
  dc::launch(undeclared_dyn_kernel, dim3(1), dim3(64), 64 * sizeof(float), s, x, y);
}

}  // namespace DC_TARGET_NS
// dc:default ::spilling_kernel\(|fine_kernel
// dc:launch fine_kernel smem=204800
