// Asynchronous global->shared tile copies for the multi-stage pipelines of the implicit-GEMM
// kernels (csrc/kernels/gemm_conv.cuh).
//
//   dc::cp_async<BYTES>(smem_dst, gmem_src, valid)  copy BYTES (2, 4, 8 or 16) bytes; when !valid
//                                                   the destination is zero-filled and gmem_src is
//                                                   not dereferenced (it must still be a pointer
//                                                   into the tensor, e.g. its base)
//   dc::cp_async_commit()                           close the current group of copies
//   dc::cp_async_wait<N>()                          wait until at most N groups are in flight
//
// nvcc, sm_80+: `cp.async` through inline PTX (16 bytes: .cg, L1 bypass; 4/8 bytes: .ca) with the
// src-size operand for zero fill, so out-of-image halo pixels cost no branch. 2-byte copies (one
// fp16/bf16 element, when the channel dimension is not vectorisable) and older archs fall back
// to a synchronous load + shared store, which is still correct inside the same pipeline.
// Emulation: synchronous, through dc::load so the traffic counters see every global read; the
// waits are no-ops. The pipeline's __syncthreads placement is what makes the asynchronous version
// correct, and ThreadSanitizer checks exactly that placement on the synchronous one.
#pragma once

#include "kernels/platform.cuh"

namespace dc {

template <int BYTES>
struct alignas(BYTES) raw_bytes {
  unsigned char b[BYTES];
};

// In the emulation the caller's source location is forwarded to dc::load, so the traffic
// counters attribute each copy to the loader line that issued it.
template <int BYTES>
__device__ __forceinline__ void cp_async(void* smem_dst, const void* gmem_src, bool valid
#if defined(DC_MODE_EMU)
                                         ,
                                         const std::source_location& loc = std::source_location::current()
#endif
) {
  static_assert(BYTES == 2 || BYTES == 4 || BYTES == 8 || BYTES == 16, "cp_async: bad size");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (BYTES >= 4) {
    const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
    const int src_size = valid ? BYTES : 0;
    if constexpr (BYTES == 16) {
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem_src),
                   "r"(src_size));
    } else {
      asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(dst), "l"(gmem_src),
                   "n"(BYTES), "r"(src_size));
    }
    return;
  }
#endif
  using V = raw_bytes<BYTES>;
  V v;
  if (valid) {
#if defined(__CUDACC__)
    v = *static_cast<const V*>(gmem_src);
#else
    v = dc::load(static_cast<const V*>(gmem_src), loc);
#endif
  } else {
    for (int i = 0; i < BYTES; ++i) v.b[i] = 0;
#if defined(DC_MODE_EMU)
    // a predicated-off lane moves no bytes but still executes the instruction: a zero-byte record
    // keeps this lane's request numbering aligned with the other lanes of its warp
    if (::dc::emu::traffic_enabled() && ::dc::emu::tl_ctx)
      ::dc::emu::traffic_record(::dc::emu::tl_ctx->traffic, loc, gmem_src, 0, false);
#endif
  }
  *static_cast<V*>(smem_dst) = v;
}

__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

}  // namespace dc
