// Unit-test kernels for the CUDA emulation (tests/test_emulation.py builds this with g++ and runs
// one subcommand per test; each prints "OK" on success, or a diagnosis and exits non-zero).
#define DILCONV_EMU 1
#include "kernels/platform.cuh"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#include "emu/test_kernels.h"

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


// CUDA's shuffle semantics, written independently of the emulation's code
float expect_shfl(int mode, int lane, int arg, int width) {
  auto val = [](int l) { return 100.f + 1.5f * l; };
  const int base = lane - lane % width;
  switch (mode) {
    case 0: return val(base + (arg % width + width) % width);
    case 1: return lane % width >= arg ? val(lane - arg) : val(lane);
    case 2: return lane % width + arg < width ? val(lane + arg) : val(lane);
    default: {
      const int s = lane ^ arg;
      return s < base + width ? val(s) : val(lane);
    }
  }
}

void test_shfl() {
  for (int width : {32, 16, 8, 4, 2, 1})
    for (int mode = 0; mode < 4; ++mode)
      for (int arg = 0; arg < 40; ++arg) {
        if (mode == 3 && arg > 31) continue;
        std::vector<float> out(64, -1.f);
        dc::launch(dc_emu::shfl_kernel, dim3(1), dim3(64), 0, dc::Stream{}, out.data(), mode, arg, width);
        for (int t = 0; t < 64; ++t)
          check(out[t] == expect_shfl(mode, t % 32, arg, width) + 48.f * (t / 32),
                "shfl mode " + std::to_string(mode) + " arg " + std::to_string(arg) + " width " +
                    std::to_string(width) + " lane " + std::to_string(t) + " got " + std::to_string(out[t]));
      }
}

void test_half_warps() {
  std::vector<float> out(64, -1.f);
  dc::launch(dc_emu::half_warp_kernel, dim3(1), dim3(64), 0, dc::Stream{}, out.data());
  for (int t = 0; t < 64; ++t) {
    const int lane = t % 32, src = (lane & 16) + ((lane + 3) & 15);
    check(out[t] == 1000.f + (t - lane) + src, "half warp lane " + std::to_string(t));
  }
}

void test_vote() {
  std::mt19937 g(5);
  for (int trial = 0; trial < 6; ++trial) {
    const int nt = 64;
    std::vector<int> pred(nt);
    for (auto& p : pred) p = trial == 0 ? 1 : trial == 1 ? 0 : int(g() % 3 == 0) * int(g() % 5 + 1);
    std::vector<unsigned> out(nt * 9, 12345u);
    dc::launch(dc_emu::vote_kernel, dim3(1), dim3(nt), 0, dc::Stream{}, pred.data(), out.data());
    int cnt = 0;
    for (int t = 0; t < nt; ++t) cnt += pred[t] != 0;
    for (int t = 0; t < nt; ++t) {
      const int w = t / 32;
      unsigned b = 0, sum = 0, mx = 0;
      int any = 0, all = 1, mn = 1000;
      for (int l = 0; l < 32; ++l) {
        const int u = w * 32 + l;
        const bool p = pred[u] != 0;
        b |= unsigned(p) << l;
        any |= p;
        all &= p;
        sum += unsigned(pred[u]) * (u + 1);
        if (p) mn = std::min(mn, u), mx = std::max(mx, unsigned(u));
      }
      const unsigned* o = &out[t * 9];
      const std::string at = " trial " + std::to_string(trial) + " thread " + std::to_string(t);
      check(o[0] == b, "ballot" + at);
      check(o[1] == unsigned(any) && o[2] == unsigned(all), "any/all" + at);
      check(o[3] == sum, "reduce_add" + at);
      check(o[4] == unsigned(mn) && o[5] == mx, "reduce_min/max" + at);
      check(o[6] == unsigned(cnt) && o[7] == unsigned(cnt == nt) && o[8] == unsigned(cnt > 0), "syncthreads_count/and/or" + at);
    }
  }
}

void test_partial_warp() {
  std::vector<float> out(96, -1.f);
  dc::launch(dc_emu::partial_warp_kernel, dim3(1), dim3(48), 0, dc::Stream{}, out.data());
  for (int t = 0; t < 48; ++t) {
    const int seg = t - t % 16;
    const float sum = 16.f * seg + 120.f;  // sum of seg..seg+15
    check(out[2 * t] == sum, "partial-warp segment sum thread " + std::to_string(t));
    const int lane = t % 32;
    const float beyond = out[2 * t + 1];
    if (t < 32)  // full warp: lanes < 16 read lane+16, the others keep their own value
      check(beyond == float(lane < 16 ? t + 16 : t), "full-warp shfl_down thread " + std::to_string(t));
    else  // lanes 0-15 of warp 1 read lanes 16-31, which do not exist: poisoned
      check(std::isnan(beyond), "read beyond the block is NaN, thread " + std::to_string(t));
  }
}

void test_barrier() {
  constexpr int N = 128;
  auto in = randv(3 * N, 7);
  std::vector<float> out(3 * N, -1.f);
  dc::launch(dc_emu::reverse_kernel<N>, dim3(3), dim3(N), 0, dc::Stream{}, in.data(), out.data());
  for (int b = 0; b < 3; ++b)
    for (int i = 0; i < N; ++i) check(out[b * N + i] == in[b * N + N - 1 - i], "reverse");
}

void test_dynamic_smem() {
  for (int nt : {64, 200}) {
    auto in = randv(4 * nt, 9);
    std::vector<float> out(4 * nt, -1.f), probe(4, 0.f);
    dc::launch(dc_emu::dyn_smem_kernel, dim3(4), dim3(nt), sizeof(float) * (nt + 1), dc::Stream{}, in.data(),
               out.data(), probe.data());
    for (int b = 0; b < 4; ++b) {
      check(std::isnan(probe[b]), "dynamic smem is poisoned at block start");
      for (int i = 0; i < nt; ++i) check(out[b * nt + i] == 2.f * in[b * nt + nt - 1 - i], "dynamic smem exchange");
    }
  }
}

template <typename F>
void expect_throw(F f, const std::string& needle, const std::string& what) {
  try {
    f();
  } catch (const std::runtime_error& e) {
    check(std::string(e.what()).find(needle) != std::string::npos,
          what + ": message lacks '" + needle + "': " + e.what());
    return;
  }
  check(false, what + ": no exception");
}

void test_launch_errors() {
  std::vector<float> out(2048);
  float* o = out.data();
  expect_throw([&] { dc::launch(dc_emu::early_return_kernel, dim3(2), dim3(64), 0, dc::Stream{}, o); },
               "returned from the kernel", "early return before __syncthreads");
  expect_throw([&] { dc::launch(dc_emu::divergent_shfl_kernel, dim3(1), dim3(64), 0, dc::Stream{}, o); },
               "", "divergent shuffle");
  expect_throw([&] { dc::launch(dc_emu::bad_mask_kernel, dim3(1), dim3(32), 0, dc::Stream{}, o); },
               "does not include its own lane", "mask without own lane");
  expect_throw([&] { dc::launch(dc_emu::early_return_kernel, dim3(1), dim3(1025), 0, dc::Stream{}, o); },
               "1..1024", "block too large");
  expect_throw([&] { dc::launch(dc_emu::early_return_kernel, dim3(1, 70000), dim3(32), 0, dc::Stream{}, o); },
               "grid dimension", "grid too large");
  expect_throw([&] { dc::launch(dc_emu::dyn_smem_kernel, dim3(1), dim3(32), 228 * 1024, dc::Stream{}, o, o, o); },
               "227 KiB", "dynamic smem too large");
  expect_throw([] { __syncthreads(); }, "outside an emulated kernel launch", "intrinsic outside a launch");
  // the process stays usable after failed launches, and an empty grid launches nothing
  out.assign(out.size(), 0.f);
  dc::launch(dc_emu::early_return_kernel, dim3(0), dim3(64), 0, dc::Stream{}, o);
  check(out[0] == 0.f, "empty grid launches nothing");
  test_barrier();
}

void test_atomics() {
  int counter = 0, mx = -1, cas[2] = {0, 0};
  float fsum = 0.f;
  unsigned long long ull = 0;
  const int blocks = 5, nt = 96, n = blocks * nt;
  dc::launch(dc_emu::atomic_kernel, dim3(blocks), dim3(nt), 0, dc::Stream{}, &counter, &fsum, &ull, &mx, cas);
  float fref = 0;
  int mref = 0;
  for (int g = 0; g < n; ++g) fref += float(g % 7), mref = std::max(mref, (g * 37) % 1001);
  check(counter == n, "atomicAdd int");
  check(fsum == fref, "atomicAdd float");
  check(ull == (unsigned long long)n << 33, "atomicAdd unsigned long long");
  check(mx == mref, "atomicMax");
  check(cas[0] >= 1 && cas[0] <= n && cas[1] == 1, "atomicCAS: exactly one winner");
}

// half/bf16 conversions: `convert in.bin out.bin` reads N float32 and writes N half bits, N bf16
// bits, then float32 of all 65536 half and all 65536 bf16 bit patterns (compared with torch).
int convert(const char* in_path, const char* out_path) {
  FILE* f = std::fopen(in_path, "rb");
  if (!f) return 2;
  std::vector<float> in;
  float x;
  while (std::fread(&x, 4, 1, f) == 1) in.push_back(x);
  std::fclose(f);
  std::vector<uint16_t> h, b;
  for (float v : in) h.push_back(dc::from_float<dc::half>(v).x), b.push_back(dc::from_float<dc::bfloat16>(v).x);
  std::vector<float> hf, bf;
  for (uint32_t u = 0; u < 65536; ++u)
    hf.push_back(dc::to_float(dc::half{uint16_t(u)})), bf.push_back(dc::to_float(dc::bfloat16{uint16_t(u)}));
  f = std::fopen(out_path, "wb");
  std::fwrite(h.data(), 2, h.size(), f);
  std::fwrite(b.data(), 2, b.size(), f);
  std::fwrite(hf.data(), 4, hf.size(), f);
  std::fwrite(bf.data(), 4, bf.size(), f);
  std::fclose(f);
  std::printf("OK\n");
  return 0;
}

template <typename T, typename LA, typename LB>
void wmma_case(int M, int N, int K, unsigned seed) {
  auto a32 = randv(size_t(M) * K, seed), b32 = randv(size_t(K) * N, seed + 1), c = randv(size_t(M) * N, seed + 2);
  std::vector<T> a, b;
  for (float v : a32) a.push_back(dc::from_float<T>(v));
  for (float v : b32) b.push_back(dc::from_float<T>(v));
  constexpr bool a_row = std::is_same_v<LA, dc::wmma::row_major>, b_row = std::is_same_v<LB, dc::wmma::row_major>;
  std::vector<float> d(size_t(M) * N, -5.f);
  const float alpha = 0.75f;
  dc::launch(dc_emu::wmma_gemm<T, LA, LB>, dim3(dc::ceil_div(N, 32), dc::ceil_div(M, 32)), dim3(128), 0, dc::Stream{},
             a.data(), b.data(), c.data(), d.data(), M, N, K, alpha);
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      double ref = 0;
      for (int k = 0; k < K; ++k)
        ref += double(dc::to_float(a[a_row ? size_t(m) * K + k : size_t(k) * M + m])) *
               dc::to_float(b[b_row ? size_t(k) * N + n : size_t(n) * K + k]);
      ref = alpha * ref + c[size_t(n) * M + m];
      check(close(d[size_t(m) * N + n], ref, 1e-5, 1e-5),
            "wmma " + std::to_string(M) + "x" + std::to_string(N) + "x" + std::to_string(K) + " at " +
                std::to_string(m) + "," + std::to_string(n) + ": " + std::to_string(d[size_t(m) * N + n]) + " vs " +
                std::to_string(ref));
    }
}

void test_wmma() {
  namespace wm = dc::wmma;
  wmma_case<dc::half, wm::row_major, wm::row_major>(37, 45, 50, 11);
  wmma_case<dc::half, wm::col_major, wm::row_major>(32, 32, 16, 12);
  wmma_case<dc::half, wm::row_major, wm::col_major>(20, 33, 40, 13);
  wmma_case<dc::bfloat16, wm::col_major, wm::col_major>(48, 17, 35, 14);
  wmma_case<dc::bfloat16, wm::row_major, wm::row_major>(33, 64, 64, 15);
  expect_throw([] { dc::launch(dc_emu::wmma_bad_kernel, dim3(1), dim3(32), 0, dc::Stream{}, 0); }, "same pointer",
               "wmma non-uniform pointer");
  expect_throw([] { dc::launch(dc_emu::wmma_bad_kernel, dim3(1), dim3(32), 0, dc::Stream{}, 1); }, "32-byte",
               "wmma misaligned pointer");
  expect_throw([] { dc::launch(dc_emu::wmma_bad_kernel, dim3(1), dim3(48), 0, dc::Stream{}, 2); }, "all 32 lanes",
               "wmma partial warp");
}

// `traffic`: one launch per access pattern, then the JSON report on stdout (checked in Python)
int traffic() {
  dc::emu::traffic_reset();
  dc::emu::traffic_enable(true);
  // sector-aligned buffers, so that the expected counts are exact
  alignas(128) static float in[64 * 64 + 64], out[256];
  alignas(128) static float4 in4[256], out4[256];
  auto copy = [&](int stride, int offset, int broadcast) {
    dc::launch(dc_emu::strided_copy<float>, dim3(2), dim3(64), 0, dc::Stream{}, in, out, stride, offset, broadcast);
  };
  copy(1, 0, 0);   // coalesced
  copy(8, 0, 0);   // one 32-byte sector per lane
  copy(1, 1, 0);   // misaligned by 4 bytes
  copy(1, 5, 1);   // broadcast: every lane reads the same float
  copy(2, 0, 0);   // every other float
  dc::launch(dc_emu::strided_copy<float4>, dim3(1), dim3(32), 0, dc::Stream{}, in4, out4, 1, 0, 0);
  dc::launch(dc_emu::predicated_copy, dim3(1), dim3(64), 0, dc::Stream{}, in, out);
  dc::emu::traffic_enable(false);
  copy(1, 0, 0);  // not recorded
  std::printf("%s\n", dc::emu::traffic_report_json().c_str());
  return 0;
}

// launches from several host threads at once (serialised inside), and a launch in a forked child
// (the parent's parked worker threads do not exist there)
void test_host_threads_and_fork() {
  std::vector<std::thread> hosts;
  std::atomic<int> bad{0};
  for (int h = 0; h < 4; ++h)
    hosts.emplace_back([&, h] {
      for (int rep = 0; rep < 3; ++rep) {
        const int n = 200 + 37 * h;
        auto in = randv(size_t(2) * n, 100 + h);
        std::vector<float> out(2, -1.f);
        dc::launch(dc_emu::block_sum, dim3(2), dim3(64 + 32 * h), sizeof(float) * (2 + h), dc::Stream{}, in.data(),
                   out.data(), n);
        for (int b = 0; b < 2; ++b) {
          double ref = 0;
          for (int i = 0; i < n; ++i) ref += in[size_t(b) * n + i];
          if (!close(out[b], ref, 1e-5, 1e-4)) ++bad;
        }
      }
    });
  for (auto& t : hosts) t.join();
  check(bad == 0, "concurrent launches from host threads");
  std::fflush(stdout);
  const pid_t pid = fork();
  if (pid == 0) {
    fails = 0;
    test_matmul();
    std::_Exit(fails == 0 ? 0 : 1);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  check(WIFEXITED(status) && WEXITSTATUS(status) == 0, "launch in a forked child");
}

const std::map<std::string, std::function<void()>> tests = {
    {"matmul", test_matmul},
    {"block_sum", test_block_sum},
    {"shfl", test_shfl},
    {"half_warps", test_half_warps},
    {"vote", test_vote},
    {"partial_warp", test_partial_warp},
    {"barrier", test_barrier},
    {"dynamic_smem", test_dynamic_smem},
    {"launch_errors", test_launch_errors},
    {"atomics", test_atomics},
    {"wmma", test_wmma},
    {"host_threads_and_fork", test_host_threads_and_fork},
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    for (auto& [name, _] : tests) std::printf("%s\n", name.c_str());
    return 0;
  }
  if (std::string(argv[1]) == "convert" && argc == 4) return convert(argv[2], argv[3]);
  if (std::string(argv[1]) == "traffic") return traffic();
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
