// Sanitizer matrix harness: the emulated CUDA kernels built as one host program with
// AddressSanitizer + UBSan(bounds) and, separately, with ThreadSanitizer (tests/test_sanitizers.py).
//
// The program links every csrc/emu/*.cpp that does not include torch headers (the *_emu.cpp
// instantiation files of each kernel family, emu_runtime.cpp) with tests/sanitize/*.cpp. To add
// a kernel family to the matrix, add tests/sanitize/case_<family>.cpp:
//
//     #include "sanitize/harness.h"
//     #include "kernels/<family>_api.h"          // declarations of the dc_emu:: launch functions
//     DC_SANITIZE_CASE(depthwise_fwd_small) {    // a plain function body; throw to fail
//       auto x = dcs::random<float>(2 * 3 * 9 * 9, /*seed=*/1);
//       ... call dc_emu::<launch function>(params, dc::Stream{}) on tiny shapes ...
//       dcs::expect_close(out.data(), ref, out.size(), 1e-5, 1e-6, "depthwise fwd");  // naive reference
//     }
//
// Keep each case to a few small launches (<= 256 threads per block, a handful of blocks): under
// TSan every CUDA thread is an instrumented OS thread. Cover each kernel variant the selection
// code can pick (dtypes, layouts, tile configs), forward and backward.
// Sanitizer reports fail the run: ASan/UBSan abort at the first error, TSan exits non-zero at the
// end if it reported anything. What they can see: out-of-bounds global, dynamic-shared and
// (UBSan bounds) static-shared array indexing, use-after-free, races between the threads of a
// block (a missing __syncthreads/__syncwarp). Not visible: races between blocks (blocks run one
// after another) and out-of-bounds static shared memory reached through pointer arithmetic.
#pragma once
#ifndef DILCONV_EMU
#define DILCONV_EMU 1
#endif
#include <cmath>
#include <cstdint>
#include <random>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/platform.cuh"

namespace dcs {

using CaseFn = void (*)();
struct Case {
  const char* name;
  CaseFn fn;
};
inline std::vector<Case>& cases() {
  static std::vector<Case> v;
  return v;
}
// deliberately broken kernels: run only on request (`harness --broken NAME`), to prove that the
// sanitizers catch them
inline std::vector<Case>& broken_cases() {
  static std::vector<Case> v;
  return v;
}
struct Registrar {
  Registrar(std::vector<Case>& (*reg)(), const char* name, CaseFn fn) { reg().push_back({name, fn}); }
};

// Uniform random values in [lo, hi) converted to T (float, double, dc::half, dc::bfloat16, ints).
template <typename T>
std::vector<T> random(size_t n, uint64_t seed, float lo = -1.f, float hi = 1.f) {
  std::mt19937_64 g(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<T> v(n);
  for (auto& x : v) {
    if constexpr (std::is_integral_v<T>)
      x = T(d(g));
    else
      x = dc::from_float<T>(d(g));
  }
  return v;
}

template <typename T>
double to_double(T x) {
  if constexpr (std::is_same_v<T, double>)
    return x;
  else if constexpr (std::is_integral_v<T>)
    return double(x);
  else
    return double(dc::to_float(x));
}

// Throws std::runtime_error naming the first element where |got - ref| > atol + rtol * |ref|.
template <typename T>
void expect_close(const T* got, const double* ref, size_t n, double rtol, double atol, const std::string& what) {
  for (size_t i = 0; i < n; ++i) {
    const double g = to_double(got[i]);
    if (!(std::abs(g - ref[i]) <= atol + rtol * std::abs(ref[i])))
      throw std::runtime_error(what + ": element " + std::to_string(i) + " is " + std::to_string(g) + ", expected " +
                               std::to_string(ref[i]));
  }
}
template <typename T>
void expect_close(const std::vector<T>& got, const std::vector<double>& ref, double rtol, double atol,
                  const std::string& what) {
  if (got.size() != ref.size()) throw std::runtime_error(what + ": size mismatch");
  expect_close(got.data(), ref.data(), got.size(), rtol, atol, what);
}

}  // namespace dcs

#define DC_SANITIZE_REGISTER_(REG, NAME)                                       \
  static void dcs_case_##NAME();                                              \
  static ::dcs::Registrar dcs_registrar_##NAME(REG, #NAME, dcs_case_##NAME); \
  static void dcs_case_##NAME()
#define DC_SANITIZE_CASE(NAME) DC_SANITIZE_REGISTER_(::dcs::cases, NAME)
#define DC_SANITIZE_BROKEN(NAME) DC_SANITIZE_REGISTER_(::dcs::broken_cases, NAME)
