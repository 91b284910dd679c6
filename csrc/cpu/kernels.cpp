// Builds the kernels of kernels_impl.h once per instruction set and picks one at run time
// (no global -march: the extension must load on any x86-64).
#include "cpu/kernels.h"

#include <cstdlib>
#include <cstring>

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

template <class T, class A, class B, class C>
const Kernels<T>& pick(const A& avx512, const B& avx2, const C& base) {
  switch (isa_level()) {
#ifdef DILCONV_X86
    case 2: return avx512;
    case 1: return avx2;
#endif
    default: return base;
  }
}
}  // namespace

const Kernels<float>& kernels_f32() {
#ifdef DILCONV_X86
  static const Kernels<float> a = isa_avx512::make<float>("avx512"), b = isa_avx2::make<float>("avx2");
#else
  static const Kernels<float> a{}, b{};
#endif
  static const Kernels<float> c = isa_base::make<float>("base");
  return pick<float>(a, b, c);
}

const Kernels<double>& kernels_f64() {
#ifdef DILCONV_X86
  static const Kernels<double> a = isa_avx512::make<double>("avx512"), b = isa_avx2::make<double>("avx2");
#else
  static const Kernels<double> a{}, b{};
#endif
  static const Kernels<double> c = isa_base::make<double>("base");
  return pick<double>(a, b, c);
}

}  // namespace dilconv::cpu
