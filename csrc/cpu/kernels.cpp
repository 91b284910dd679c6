// Builds the kernels of kernels_impl.h once per instruction set and picks one at run time
// (no global -march: the extension must load on any x86-64).
#include "cpu/kernels.h"

#include <cstdlib>
#include <cstring>
#include <memory>  // gemm_bcast: columns kept aside

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>  // streaming stores (kernels_impl.h: st_stream)
#endif

namespace dilconv::cpu {

#if defined(__x86_64__) || defined(__i386__)
#define DILCONV_X86 1
namespace isa_avx512 {
#pragma GCC push_options
#pragma GCC target("avx2,fma,avx512f,avx512dq,avx512bw,avx512vl")
#define DILCONV_VBYTES 64
#include "cpu/kernels_impl.h"
#undef DILCONV_VBYTES
#undef DILCONV_INLINE
#pragma GCC pop_options
}  // namespace isa_avx512

namespace isa_avx2 {
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define DILCONV_VBYTES 32
#include "cpu/kernels_impl.h"
#undef DILCONV_VBYTES
#undef DILCONV_INLINE
#pragma GCC pop_options
}  // namespace isa_avx2
#endif

namespace isa_base {
#define DILCONV_VBYTES 16
#include "cpu/kernels_impl.h"
#undef DILCONV_VBYTES
#undef DILCONV_INLINE
}  // namespace isa_base

namespace {
// 2 = AVX-512, 1 = AVX2+FMA, 0 = baseline; capped by DILCONV_CPU_ISA (read per call: cheap,
// and lets a test switch variants in one process)
int isa_level() {
  static const int hw = [] {
#ifdef DILCONV_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
      return 2;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
#endif
    return 0;
  }();
  int level = hw;
  if (const char* e = std::getenv("DILCONV_CPU_ISA")) {
    if (!std::strcmp(e, "avx2") && level > 1) level = 1;
    if (!std::strcmp(e, "base")) level = 0;
  }
  return level;
}

}  // namespace

// Each variant's table is built on first use and only for the variant picked: make<T> of the
// AVX-512 namespace is itself compiled for AVX-512 (the compiler fills the table with 512-bit
// stores), so building it on a CPU without AVX-512 dies with SIGILL.
template <class T>
static const Kernels<T>& kernels_for() {
  switch (isa_level()) {
#ifdef DILCONV_X86
    case 2: { static const Kernels<T> k = isa_avx512::make<T>("avx512"); return k; }
    case 1: { static const Kernels<T> k = isa_avx2::make<T>("avx2"); return k; }
#endif
    default: { static const Kernels<T> k = isa_base::make<T>("base"); return k; }
  }
}

const Kernels<float>& kernels_f32() { return kernels_for<float>(); }
const Kernels<double>& kernels_f64() { return kernels_for<double>(); }

const char* cpu_vendor() {
#ifdef DILCONV_X86
  __builtin_cpu_init();
  if (__builtin_cpu_is("intel")) return "intel";
  if (__builtin_cpu_is("amd")) return "amd";
#endif
  return "other";
}

bool cpu_is_intel() {
  static const bool intel = !std::strcmp(cpu_vendor(), "intel");
  return intel;
}

}  // namespace dilconv::cpu
