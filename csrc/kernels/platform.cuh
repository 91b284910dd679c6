// platform.cuh — the one header CUDA kernels include for CUDA-isms. ONE kernel source, two
// compilers: nvcc builds it for the GPU (backend "cuda"); g++ builds the same source against a
// CPU emulation of the CUDA execution model (backend "cuda-emu", csrc/emu/emulation.h).
//
// MODES (chosen by the includer, never by kernels)
//   nvcc (__CUDACC__)       plain CUDA.                       DC_TARGET_NS = dc_cuda, DC_KERNEL_BODIES 1
//   g++ + DILCONV_EMU       the emulation.                    DC_TARGET_NS = dc_emu,  DC_KERNEL_BODIES 1
//   g++ (neither)           host declarations only, for csrc/cuda/ops_cuda.cpp which calls the
//                           nvcc-built launch functions: types, params, declarations; guard kernel
//                           bodies and launch-function *definitions* with `#if DC_KERNEL_BODIES`.
//                                                             DC_TARGET_NS = dc_cuda, DC_KERNEL_BODIES 0
//   Put kernels and launch functions in `namespace DC_TARGET_NS { ... }` so the nvcc and the
//   emulated instantiations link into the same library. In emulation TUs that also include torch
//   headers, include the torch headers FIRST (this header defines __device__, __shared__, ... as
//   macros in emulation mode).
//
// WHAT KERNELS MAY USE (identical in both builds)
//   threadIdx blockIdx blockDim gridDim, warpSize (or dc::kWarpSize, a constant in both builds)
//   __global__ __device__ __host__ __forceinline__ __launch_bounds__(...) __align__(n) __restrict__
//   __shared__ T a[N];  static arrays. Emulation: `#define __shared__ static` — correct only
//       because the emulation runs one block at a time and serialises launches. Consequences:
//       no initialiser on __shared__ variables (as in CUDA), no __shared__ in recursive code, and
//       the emulation cannot see races BETWEEN blocks (no inter-block communication in kernels).
//   DC_DYNAMIC_SHARED(T, name);  declares `T* name` = the block's dynamic shared memory (the
//       dyn_smem bytes of dc::launch; 128-byte aligned). Emulation: an exact-size heap buffer
//       (AddressSanitizer catches overruns), filled with 0xFF bytes at every block start
//       (uninitialised float reads give NaN).
//   __syncthreads(), __syncthreads_count/and/or(pred), __syncwarp(mask)
//   __shfl_sync/__shfl_up_sync/__shfl_down_sync/__shfl_xor_sync(mask, v, lane|delta, width=32) for
//       arithmetic types, dc::half, dc::bfloat16; __ballot_sync __any_sync __all_sync;
//       __reduce_{add,min,max}_sync(int|unsigned), __reduce_{and,or,xor}_sync(unsigned).
//       Mask semantics in the emulation: the lanes named in `mask` that exist in the block
//       rendezvous (any mask, several disjoint masks may be in flight at once). A lane calling
//       with a mask that does not include itself, a named lane that has returned from the
//       kernel, different intrinsics under the same mask, or a deadlock fail the launch. Reading
//       (shfl) from a lane outside the mask/block is undefined in CUDA; the emulation returns
//       all-ones bytes (NaN for float types) so that using such a value shows in results.
//       __activemask() is not provided (convergence cannot be emulated): pass explicit masks.
//   atomicAdd (int, unsigned, unsigned long long, float, double), atomicSub/Exch/Min/Max/CAS/
//       And/Or/Xor for integers; relaxed ordering as on the GPU. Weight gradients must not use
//       float atomics (determinism) — use a fixed-order reduction.
//   __ldg(p), __threadfence(), __popc __clz __ffs __brev __float_as_int ... rsqrtf __expf
//   dc::half / dc::bfloat16 (nvcc: __half / __nv_bfloat16; emulation: IEEE bit containers with
//       round-to-nearest-even conversion). NO arithmetic or implicit conversions on them (torch
//       compiles nvcc with __CUDA_NO_HALF_OPERATORS__/CONVERSIONS__): convert explicitly with
//       dc::to_float(x), dc::from_float<T>(f), or generically dc::to_acc(x) -> dc::acc_t<T>
//       (double for double, float otherwise) and dc::from_acc<T>(a).
//   dc::min dc::max dc::ceil_div
//   float2/float4/int2/int4/uint2/uint4/double2 and make_float4(...) etc.
//   Global memory: ALL global loads and stores go through
//       dc::load(p)        plain load
//       dc::ldg(p)         read-only-cache load (__ldg): only for data no thread of the kernel writes
//       dc::store(p, v)    store (v is converted to T only if implicitly convertible)
//     nvcc: plain/ldg accesses. Emulation: with the traffic counters on they record the call site
//     and address per lane (csrc/emu/emu_traffic.h; Python: dilconv.emu_traffic). Vector types
//     (dc::load(reinterpret_cast<const float4*>(p))) count as one 16-byte access. Accesses are
//     attributed to the source line of the dc::load call; a helper that wraps dc::load can take
//     `const std::source_location& loc = std::source_location::current()` under DC_MODE_EMU and
//     pass it on (dc::load(p, loc)) to attribute them to its callers.
//   dc::launch(kernel, dim3 grid, dim3 block, size_t dyn_smem, dc::Stream stream, args...)
//     nvcc: sets cudaFuncAttributeMaxDynamicSharedMemorySize when dyn_smem > 48 KiB, launches
//     kernel<<<grid, block, dyn_smem, stream>>>(args...) and throws std::runtime_error on a launch
//     error. Emulation: validates the configuration (<= 1024 threads, dim limits, dyn_smem <= 227
//     KiB; note sm_80 allows only 163 KiB: the resource report checks that) and throws
//     std::runtime_error, then runs every block (one OS thread per CUDA thread,
//     blocks sequential) and throws std::runtime_error if the kernel misused a barrier/warp
//     intrinsic or deadlocked. Both: an empty grid (a zero dimension) launches nothing.
//   dc::Stream: cudaStream_t under nvcc, an empty struct under emulation (dc::Stream{}).
//   WMMA (tensor cores): see csrc/kernels/wmma.cuh.
//
// RESOURCE REPORT (`python -m dilconv kernels`, dilconv/kernels_report.py): compiles every
// csrc/cuda/*.cu with nvcc -Xptxas -v for sm_80 and sm_90 (registers, spills, static smem per
// kernel instantiation) and computes occupancy with cuda_occupancy.h. Annotate the .cu with
//     // dc:default <python regex>   kernels (demangled name, re.search) on the default path;
//                                    a .cu without dc:default lines: all its kernels are default
//     // dc:launch <regex> [threads=N] [smem=BYTES]   block size and the LARGEST dynamic shared
//                                    memory the launch code requests for matching kernels
//   Threads default to __launch_bounds__(N) (use it on every kernel); without either, occupancy
//   is not computed. `--check` (run in CI) fails on spills in default-path kernels, static + dynamic
//   smem above the arch's per-block limit (sm_80: 163 KiB, sm_90: 227 KiB) or 0 CTAs per SM.
//
// SANITIZERS: tests/test_sanitizers.py builds csrc/emu/*_emu.cpp with the cases in
// tests/sanitize/case_*.cpp (see tests/sanitize/harness.h) under ASan+UBSan(bounds) and TSan.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#if defined(__CUDACC__)
#define DC_MODE_CUDA 1
#define DC_TARGET_NS dc_cuda
#define DC_KERNEL_BODIES 1
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#define DC_HD __host__ __device__ __forceinline__
#elif defined(DILCONV_EMU)
#define DC_MODE_EMU 1
#define DC_TARGET_NS dc_emu
#define DC_KERNEL_BODIES 1
#include "../emu/emulation.h"
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static
#define DC_HD inline
#else
#define DC_MODE_HOST 1
#define DC_TARGET_NS dc_cuda
#define DC_KERNEL_BODIES 0
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#define DC_HD inline
#endif

namespace dc {
inline namespace DC_TARGET_NS {

#if defined(DC_MODE_EMU)
using half = ::dc::emu::half;
using bfloat16 = ::dc::emu::bfloat16;
struct Stream {};
#else
using half = __half;
using bfloat16 = __nv_bfloat16;
using Stream = cudaStream_t;
#endif

inline constexpr int kWarpSize = 32;

template <typename T>
struct identity {
  using type = T;
};
template <typename T>
using identity_t = typename identity<T>::type;

template <typename T>
struct acc_type {
  using type = float;
};
template <>
struct acc_type<double> {
  using type = double;
};
template <typename T>
using acc_t = typename acc_type<T>::type;

DC_HD float to_float(float x) { return x; }
DC_HD float to_float(double x) { return float(x); }
#if defined(DC_MODE_EMU)
DC_HD float to_float(half x) { return ::dc::emu::half_to_float(x); }
DC_HD float to_float(bfloat16 x) { return ::dc::emu::bf16_to_float(x); }
#else
DC_HD float to_float(half x) { return __half2float(x); }
DC_HD float to_float(bfloat16 x) { return __bfloat162float(x); }
#endif

template <typename T>
DC_HD T from_float(float f) {
  if constexpr (std::is_same_v<T, half>) {
#if defined(DC_MODE_EMU)
    return ::dc::emu::float_to_half_rn(f);
#else
    return __float2half_rn(f);
#endif
  } else if constexpr (std::is_same_v<T, bfloat16>) {
#if defined(DC_MODE_EMU)
    return ::dc::emu::float_to_bf16_rn(f);
#else
    return __float2bfloat16_rn(f);
#endif
  } else {
    return static_cast<T>(f);
  }
}

template <typename T>
DC_HD acc_t<T> to_acc(T x) {
  if constexpr (std::is_same_v<T, double>)
    return x;
  else
    return to_float(x);
}
template <typename T>
DC_HD T from_acc(acc_t<T> a) {
  if constexpr (std::is_same_v<T, double>)
    return a;
  else
    return from_float<T>(a);
}

template <typename T>
DC_HD T min(T a, T b) { return b < a ? b : a; }
template <typename T>
DC_HD T max(T a, T b) { return a < b ? b : a; }
template <typename T>
DC_HD T ceil_div(T a, T b) { return (a + b - 1) / b; }

#if defined(DC_MODE_CUDA)

template <typename T>
__device__ __forceinline__ T load(const T* p) {
  return *p;
}
template <typename T>
__device__ __forceinline__ T ldg(const T* p) {
  return __ldg(p);
}
template <typename T>
__device__ __forceinline__ void store(T* p, identity_t<T> v) {
  *p = v;
}

#define DC_DYNAMIC_SHARED(T, name)                                   \
  extern __shared__ __align__(128) unsigned char dc_dynamic_smem_[]; \
  T* name = reinterpret_cast<T*>(dc_dynamic_smem_)

inline void cuda_check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string("dilconv CUDA: ") + what + ": " + cudaGetErrorString(e));
}

template <typename... KArgs, typename... Args>
inline void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t dyn_smem, Stream stream,
                   Args&&... args) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;
  if (dyn_smem > 48 * 1024)
    cuda_check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(dyn_smem)),
               "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
  kernel<<<grid, block, dyn_smem, stream>>>(static_cast<KArgs>(args)...);
  cuda_check(cudaGetLastError(), "kernel launch");
}

#elif defined(DC_MODE_EMU)

template <typename T>
inline void record_access(const T* p, bool store, const std::source_location& loc) {
  if (::dc::emu::traffic_enabled() && ::dc::emu::tl_ctx)
    ::dc::emu::traffic_record(::dc::emu::tl_ctx->traffic, loc, p, sizeof(T), store);
}
template <typename T>
inline T load(const T* p, const std::source_location& loc = std::source_location::current()) {
  record_access(p, false, loc);
  return *p;
}
template <typename T>
inline T ldg(const T* p, const std::source_location& loc = std::source_location::current()) {
  record_access(p, false, loc);
  return *p;
}
template <typename T>
inline void store(T* p, identity_t<T> v, const std::source_location& loc = std::source_location::current()) {
  record_access(p, true, loc);
  *p = v;
}

#define DC_DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(::dc::emu::dynamic_smem())

template <typename... KArgs, typename... Args>
inline void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t dyn_smem, Stream, Args&&... args) {
  // one copy of the arguments per launch, converted to the kernel's parameter types; every
  // CUDA thread then gets its own by-value copy (CUDA's parameter space is per launch, read-only)
  std::tuple<std::decay_t<KArgs>...> params(static_cast<std::decay_t<KArgs>>(args)...);
  ::dc::emu::run_grid(grid, block, dyn_smem, [&] { std::apply(kernel, params); });
}

#endif

}  // namespace DC_TARGET_NS
}  // namespace dc
