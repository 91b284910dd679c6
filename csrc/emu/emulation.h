// CPU emulation of the CUDA execution model. Included by csrc/kernels/platform.cuh when
// DILCONV_EMU is defined; kernels never include it directly. platform.cuh's header comment is
// the user documentation; this file explains how the emulation works.
//
// Execution model
//   * dc::launch runs the grid's blocks one after another. A block runs as blockDim.x*y*z OS
//     threads (from a pool of parked threads, reused for every block and launch), so code
//     between barriers really runs concurrently and ThreadSanitizer sees a missing
//     __syncthreads as a data race.
//   * Because only one block is alive at a time, `__shared__` can be `static` storage (see
//     platform.cuh); for the same reason launches are serialised by a process-wide mutex.
//   * Every synchronisation point (__syncthreads, each warp intrinsic, the end of a block) is a
//     "rendezvous" guarded by one mutex per block and waited on through an atomic (futex). That
//     is slower than std::barrier but (a) ThreadSanitizer understands mutex and acquire/release
//     happens-before exactly (no false positives), (b) warp intrinsics with different masks can
//     be open at the same time, (c) misuse is detected instead of hanging: a thread that returns
//     while others wait at __syncthreads, a lane that is named in a mask but has returned,
//     and a deadlock (every live thread of the block waiting on something that cannot complete)
//     abort the launch with a std::runtime_error that says what happened.
//   * After a failure every thread unwinds at its next synchronisation point (dc::emu::Abort) and
//     the launch throws; the process stays usable.
#pragma once
#ifndef DILCONV_EMU
#error "emulation.h is included through csrc/kernels/platform.cuh with DILCONV_EMU defined"
#endif

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <new>
#include <semaphore>
#include <mutex>
#include <source_location>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <unistd.h>

// ---- CUDA vector and index types (global namespace, as in CUDA) -----------------------------
struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return {x, y, z}; }
};
#define DC_EMU_VEC2(T, N)                                                   \
  struct alignas(2 * sizeof(T)) N##2 { T x, y; };                            \
  inline constexpr N##2 make_##N##2(T x, T y) { return {x, y}; }
#define DC_EMU_VEC4(T, N, A)                                                \
  struct alignas(A) N##4 { T x, y, z, w; };                                  \
  inline constexpr N##4 make_##N##4(T x, T y, T z, T w) { return {x, y, z, w}; }
DC_EMU_VEC2(float, float)
DC_EMU_VEC2(int, int)
DC_EMU_VEC2(unsigned, uint)
DC_EMU_VEC2(double, double)
DC_EMU_VEC4(float, float, 16)
DC_EMU_VEC4(int, int, 16)
DC_EMU_VEC4(unsigned, uint, 16)
#undef DC_EMU_VEC2
#undef DC_EMU_VEC4

// The per-thread index variables. blockDim/gridDim are per launch but thread_local too: each
// worker thread sets them, so concurrent host threads never see each other's values.
inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local uint3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim{1, 1, 1};
inline thread_local dim3 gridDim{1, 1, 1};
inline constexpr int warpSize = 32;

namespace dc::emu {

// Thrown through kernel code to unwind a CUDA thread after its launch failed.
struct Abort {};

// ---- IEEE binary16 and bfloat16 (bits only: arithmetic goes through float, as with torch's
// __CUDA_NO_HALF_OPERATORS__/__CUDA_NO_HALF_CONVERSIONS__ nvcc flags) --------------------------
struct half {
  uint16_t x;
};
struct bfloat16 {
  uint16_t x;
};

inline float f32_from_bits(uint32_t w) { return std::bit_cast<float>(w); }
inline uint32_t f32_bits(float f) { return std::bit_cast<uint32_t>(f); }

// Exact conversions (the FP16 library's branch-free algorithms, also used by c10::Half); they
// rely on the default round-to-nearest-even FP environment and no -ffast-math.
inline float half_to_float(half h) {
  const uint32_t w = uint32_t(h.x) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  const float normalized = f32_from_bits((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  const float denormalized = f32_from_bits((two_w >> 17) | (126u << 23)) - 0.5f;
  const uint32_t r = sign | (two_w < (1u << 27) ? f32_bits(denormalized) : f32_bits(normalized));
  return f32_from_bits(r);
}
inline half float_to_half_rn(float f) {
  float base = (std::fabs(f) * 0x1.0p+112f) * 0x1.0p-110f;
  const uint32_t w = f32_bits(f);
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xFF000000u;
  if (bias < 0x71000000u) bias = 0x71000000u;
  base = f32_from_bits((bias >> 1) + 0x07800000u) + base;
  const uint32_t bits = f32_bits(base);
  const uint32_t nonsign = ((bits >> 13) & 0x00007C00u) + (bits & 0x00000FFFu);
  return half{uint16_t((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign))};
}
inline float bf16_to_float(bfloat16 b) { return f32_from_bits(uint32_t(b.x) << 16); }
inline float to_float_any(half h) { return half_to_float(h); }
inline float to_float_any(bfloat16 b) { return bf16_to_float(b); }
inline bfloat16 float_to_bf16_rn(float f) {
  const uint32_t u = f32_bits(f);
  if (std::isnan(f)) return bfloat16{0x7FFF};  // the canonical NaN of the GPU's cvt.rn.bf16.f32
  return bfloat16{uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16)};
}

// ---- block runtime ----------------------------------------------------------------------------
struct Rendezvous {
  const char* what;  // "__syncthreads", "__shfl_sync", ..., or kEndOfBlock
  uint32_t mask;     // warp intrinsics: the mask given; block barriers: unused
  unsigned expected, arrived = 0;
  long long acc = 0;  // __syncthreads_count/and/or
  // 0 open, 1 complete, 2 launch failed. Waiters block on it with std::atomic::wait (a futex)
  // instead of a condition variable so that releasing 256 threads does not make them all
  // re-acquire the block mutex; the release store/acquire load is the happens-before edge.
  std::atomic<uint32_t> state{0};
  void release(uint32_t v) {
    state.store(v, std::memory_order_release);
    state.notify_all();
  }
  alignas(16) unsigned char slot[32][32];  // warp intrinsics: each lane's operand
};
inline constexpr const char* kEndOfBlock = "<return from kernel>";

struct TrafficLog;  // emu_traffic.h

class Block {
 public:
  Block(dim3 grid, dim3 block, size_t dyn_bytes)
      : grid_(grid), block_(block), nthreads_(block.x * block.y * block.z),
        nwarps_((nthreads_ + 31) / 32), running_(nthreads_), exited_(nwarps_, 0),
        open_(nwarps_), dyn_bytes_(dyn_bytes),
        // exact size so that AddressSanitizer's redzones catch any overrun; 128-byte aligned like
        // DC_DYNAMIC_SHARED's declaration under nvcc
        dyn_(new (std::align_val_t(128)) unsigned char[dyn_bytes ? dyn_bytes : 1]) {
    poison_dynamic();
  }
  ~Block() { ::operator delete[](dyn_, std::align_val_t(128)); }

  unsigned nthreads() const { return nthreads_; }
  dim3 grid() const { return grid_; }
  dim3 block_dim() const { return block_; }
  size_t dyn_bytes() const { return dyn_bytes_; }
  unsigned char* dynamic_smem() const { return dyn_; }
  uint64_t block_linear() const { return block_linear_; }

  uint32_t lanes_of(unsigned warp) const {
    unsigned n = std::min(32u, nthreads_ - warp * 32);
    return n == 32 ? 0xFFFFFFFFu : ((1u << n) - 1);
  }

  // Block-wide barrier. `pred_sum` accumulates predicates for __syncthreads_count/and/or.
  long long block_barrier(const char* what, unsigned tid, int pred) {
    std::unique_lock<std::mutex> lk(mu_);
    if (failed_) throw Abort{};
    if (!bar_) {
      bar_ = std::make_shared<Rendezvous>();
      bar_->what = what;
      bar_->mask = 0;
      bar_->expected = nthreads_;
    } else if (std::strcmp(bar_->what, what) != 0) {
      const bool this_returns = std::strcmp(what, kEndOfBlock) == 0;
      const bool others_returned = std::strcmp(bar_->what, kEndOfBlock) == 0;
      const std::string others = std::to_string(bar_->arrived) + " thread(s) of its block ";
      fail_locked(thread_name(tid) +
                  (this_returns      ? " returned from the kernel while " + others + "wait at " + bar_->what
                   : others_returned ? " reached " + std::string(what) + " after " + others + "returned from the kernel"
                                     : " reached " + std::string(what) + " while " + others + "wait at " + bar_->what) +
                  ": every thread of a block must reach the same barrier (undefined behaviour in CUDA)");
    }
    std::shared_ptr<Rendezvous> r = bar_;
    r->acc += pred;
    if (++r->arrived == r->expected) {
      complete_locked(*r);
      bar_.reset();
      if (std::strcmp(what, kEndOfBlock) == 0) next_block_locked();
      r->release(1);
    } else {
      wait_locked(lk, *r);
    }
    return r->acc;
  }

  // Warp collective: deposit `n` (<= 32) bytes, wait for every lane of (mask & existing lanes),
  // then call read(rendezvous, participants, lane) while the slots are stable. `on_complete`
  // (optional) runs once, in the last lane to arrive, before any lane is released: it may write
  // into the other lanes' memory (WMMA fragments), which they see after the rendezvous.
  template <typename F, typename G = std::nullptr_t>
  void warp_collective(const char* what, unsigned tid, uint32_t mask, const void* in, size_t n, F&& read,
                       G&& on_complete = nullptr) {
    const unsigned warp = tid / 32, lane = tid % 32;
    std::unique_lock<std::mutex> lk(mu_);
    if (failed_) throw Abort{};
    if (!((mask >> lane) & 1u))
      fail_locked(thread_name(tid) + " called " + what + " with mask " + hex(mask) +
                  ", which does not include its own lane " + std::to_string(lane));
    const uint32_t part = mask & lanes_of(warp);
    if (part & exited_[warp])
      fail_locked(thread_name(tid) + " called " + what + " with mask " + hex(mask) + " but lane(s) " +
                  hex(part & exited_[warp]) + " of its warp already returned from the kernel");
    std::shared_ptr<Rendezvous> r;
    for (auto& o : open_[warp])
      if (o->mask == mask) r = o;
    if (!r) {
      r = std::make_shared<Rendezvous>();
      r->what = what;
      r->mask = mask;
      r->expected = unsigned(std::popcount(part));
      open_[warp].push_back(r);
    } else if (std::strcmp(r->what, what) != 0) {
      fail_locked(thread_name(tid) + " called " + what + " while other lanes of mask " + hex(mask) +
                  " wait in " + r->what + " (divergent warp intrinsics)");
    }
    if (n) std::memcpy(r->slot[lane], in, n);
    if (++r->arrived == r->expected) {
      if constexpr (!std::is_same_v<std::decay_t<G>, std::nullptr_t>) on_complete(*r, part);
      complete_locked(*r);
      auto& v = open_[warp];
      v.erase(std::find(v.begin(), v.end(), r));
      r->release(1);
    } else {
      wait_locked(lk, *r);
    }
    read(*r, part, lane);
  }

  // A thread returned from the kernel for this block.
  void thread_exit(unsigned tid) {
    {
      std::unique_lock<std::mutex> lk(mu_);
      if (failed_) throw Abort{};
      const unsigned warp = tid / 32, lane = tid % 32;
      exited_[warp] |= 1u << lane;
      for (auto& o : open_[warp])
        if ((o->mask >> lane) & 1u)
          fail_locked(thread_name(tid) + " returned from the kernel while lanes of its warp wait for it in " +
                      o->what + " with mask " + hex(o->mask));
    }
    block_barrier(kEndOfBlock, tid, 0);
  }

  // Record a failure from outside a synchronisation point (e.g. an exception in kernel code).
  void fail(const std::string& msg) {
    std::unique_lock<std::mutex> lk(mu_);
    set_failed_locked(msg);
  }
  [[noreturn]] void fail_in_kernel(const std::string& msg) {
    fail(msg);
    throw Abort{};
  }

  bool failed() {
    std::lock_guard<std::mutex> lk(mu_);
    return failed_;
  }
  std::string error() {
    std::lock_guard<std::mutex> lk(mu_);
    return error_;
  }

  // traffic counters (emu_traffic.h): called by the thread that completes the end-of-block
  // rendezvous, with the block mutex held, so every thread's log is stable.
  std::function<void()> on_block_end;

 private:
  static std::string hex(uint32_t v) {
    char b[16];
    std::snprintf(b, sizeof b, "0x%08x", v);
    return b;
  }
  std::string thread_name(unsigned tid) const {
    unsigned x = tid % block_.x, y = (tid / block_.x) % block_.y, z = tid / (block_.x * block_.y);
    return "thread (" + std::to_string(x) + "," + std::to_string(y) + "," + std::to_string(z) + ") of block " +
           std::to_string(block_linear_);
  }

  void complete_locked(Rendezvous& r) {
    running_ += r.expected - 1;  // the waiters resume; the completing thread never stopped
  }

  // Returns with the lock released (the rendezvous' slots are stable once it is complete).
  void wait_locked(std::unique_lock<std::mutex>& lk, Rendezvous& r) {
    if (--running_ == 0) fail_locked("deadlock: every live thread of the block waits: " + describe_locked());
    lk.unlock();
    r.state.wait(0, std::memory_order_acquire);
    if (r.state.load(std::memory_order_acquire) != 1) throw Abort{};
  }

  std::string describe_locked() const {
    std::string s;
    if (bar_)
      s += std::string(std::strcmp(bar_->what, kEndOfBlock) == 0 ? "returned from the kernel" : bar_->what) + ": " +
           std::to_string(bar_->arrived) + " of " + std::to_string(nthreads_) + " threads; ";
    for (unsigned w = 0; w < nwarps_; ++w)
      for (auto& o : open_[w])
        s += "warp " + std::to_string(w) + " " + o->what + "(mask " + hex(o->mask) + "): " +
             std::to_string(o->arrived) + " of " + std::to_string(o->expected) + " lanes; ";
    return s;
  }

  void set_failed_locked(const std::string& msg) {
    if (!failed_) {
      failed_ = true;
      error_ = msg;
    }
    if (bar_) bar_->release(2);
    for (auto& v : open_)
      for (auto& o : v) o->release(2);
  }
  [[noreturn]] void fail_locked(const std::string& msg) {
    set_failed_locked(msg);
    throw Abort{};
  }

  void next_block_locked() {
    if (on_block_end) on_block_end();
    std::fill(exited_.begin(), exited_.end(), 0u);
    ++block_linear_;
    poison_dynamic();
  }
  // Shared memory content is undefined at block start: all-ones bytes make a float read of it
  // NaN, so a kernel relying on it fails its tests.
  void poison_dynamic() { std::memset(dyn_, 0xFF, dyn_bytes_ ? dyn_bytes_ : 1); }

  std::mutex mu_;
  dim3 grid_, block_;
  unsigned nthreads_, nwarps_;
  unsigned running_;
  bool failed_ = false;
  std::string error_;
  std::shared_ptr<Rendezvous> bar_;
  std::vector<uint32_t> exited_;
  std::vector<std::vector<std::shared_ptr<Rendezvous>>> open_;
  size_t dyn_bytes_;
  unsigned char* dyn_;
  uint64_t block_linear_ = 0;
};

struct ThreadCtx {
  Block* block;
  unsigned tid;
  TrafficLog* traffic = nullptr;
};
inline thread_local ThreadCtx* tl_ctx = nullptr;

inline ThreadCtx& ctx(const char* what) {
  if (!tl_ctx) throw std::runtime_error(std::string(what) + " called outside an emulated kernel launch");
  return *tl_ctx;
}

inline unsigned char* dynamic_smem() { return ctx("dynamic shared memory").block->dynamic_smem(); }

// Launches are serialised: `__shared__` arrays are static storage shared by all launches.
inline std::mutex& launch_mutex() {
  static std::mutex m;
  return m;
}

// The OS threads that run the CUDA threads: created on demand, parked between launches (thread
// creation was most of the cost of a small launch). Worker i always runs CUDA thread i of the
// launch. Hand-off and completion go through semaphores/atomics (happens-before for TSan).
// The pool is deliberately leaked: parked threads end with the process. After fork() the child
// starts with an empty pool (the parent's threads do not exist there).
class WorkerPool {
 public:
  static WorkerPool& get() {
    static WorkerPool* pool = new WorkerPool;
    return *pool;
  }

  // Runs job(i) for i in [0, n) on n pool threads and returns when all have finished. `job`
  // must not throw. Callers are serialised by launch_mutex().
  void run(unsigned n, const std::function<void(unsigned)>& job) {
    if (pid_ != ::getpid()) {  // forked child: the parent's workers are gone (leak their records)
      workers_.clear();
      pid_ = ::getpid();
    }
    while (workers_.size() < n) {
      auto* w = new Worker;
      const unsigned index = unsigned(workers_.size());
      try {
        w->thread = std::thread([this, w, index] { loop(*w, index); });
      } catch (const std::system_error& e) {
        delete w;
        throw std::runtime_error(std::string("dilconv CUDA emulation: could not start an OS thread per CUDA thread (") +
                                 std::to_string(n) + " needed): " + e.what());
      }
      w->thread.detach();
      workers_.push_back(w);
    }
    job_ = &job;
    remaining_.store(n, std::memory_order_relaxed);
    for (unsigned i = 0; i < n; ++i) workers_[i]->go.release();
    for (unsigned r; (r = remaining_.load(std::memory_order_acquire)) != 0;) remaining_.wait(r, std::memory_order_acquire);
    job_ = nullptr;
  }

 private:
  struct Worker {
    std::thread thread;
    std::binary_semaphore go{0};
  };
  void loop(Worker& w, unsigned index) {
    for (;;) {
      w.go.acquire();
      (*job_)(index);
      if (remaining_.fetch_sub(1, std::memory_order_acq_rel) == 1) remaining_.notify_all();
    }
  }
  WorkerPool() : pid_(::getpid()) {}

  std::vector<Worker*> workers_;
  const std::function<void(unsigned)>* job_ = nullptr;
  std::atomic<unsigned> remaining_{0};
  pid_t pid_;
};

inline constexpr size_t kMaxDynamicSmem = 227 * 1024;  // sm_80/sm_90 opt-in maximum per block

}  // namespace dc::emu
#include "emu_traffic.h"
namespace dc::emu {

inline void check_config(dim3 grid, dim3 block, size_t dyn_smem) {
  auto bad = [&](const std::string& why) {
    throw std::runtime_error("dilconv CUDA emulation: invalid launch configuration grid=(" + std::to_string(grid.x) + "," +
                             std::to_string(grid.y) + "," + std::to_string(grid.z) + ") block=(" +
                             std::to_string(block.x) + "," + std::to_string(block.y) + "," + std::to_string(block.z) +
                             ") dynamic smem=" + std::to_string(dyn_smem) + ": " + why);
  };
  const uint64_t nt = uint64_t(block.x) * block.y * block.z;
  if (nt == 0 || nt > 1024) bad("threads per block must be 1..1024");
  if (block.x > 1024 || block.y > 1024 || block.z > 64) bad("block dimension limits are 1024x1024x64");
  if (grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535) bad("grid dimension limits are (2^31-1)x65535x65535");
  if (dyn_smem > kMaxDynamicSmem) bad("dynamic shared memory above 227 KiB");
}

// Runs `body` as every thread of every block of the grid (see the header comment).
inline void run_grid(dim3 grid, dim3 block, size_t dyn_smem, const std::function<void()>& body) {
  check_config(grid, block, dyn_smem);
  if (uint64_t(grid.x) * grid.y * grid.z == 0) return;
  std::lock_guard<std::mutex> launch_lock(launch_mutex());
  Block blk(grid, block, dyn_smem);
  const uint64_t nblocks = uint64_t(grid.x) * grid.y * grid.z;
  const unsigned nt = blk.nthreads();
  std::vector<ThreadCtx> ctxs(nt);
  for (unsigned t = 0; t < nt; ++t) ctxs[t] = ThreadCtx{&blk, t};
  traffic_begin_launch(blk, ctxs);

  auto worker = [&](unsigned tid) {
    tl_ctx = &ctxs[tid];
    blockDim = block;
    gridDim = grid;
    threadIdx = uint3{tid % block.x, (tid / block.x) % block.y, tid / (block.x * block.y)};
    for (uint64_t b = 0; b < nblocks; ++b) {
      blockIdx = uint3{unsigned(b % grid.x), unsigned((b / grid.x) % grid.y), unsigned(b / (uint64_t(grid.x) * grid.y))};
      try {
        body();
        blk.thread_exit(tid);
      } catch (const Abort&) {
        break;
      } catch (const std::exception& e) {
        blk.fail(std::string("exception in kernel code: ") + e.what());
        break;
      } catch (...) {
        blk.fail("unknown exception in kernel code");
        break;
      }
    }
    tl_ctx = nullptr;
  };

  try {
    WorkerPool::get().run(nt, worker);
  } catch (...) {
    traffic_end_launch(blk, false);
    throw;
  }
  const bool ok = !blk.failed();
  traffic_end_launch(blk, ok);
  if (!ok) throw std::runtime_error("dilconv CUDA emulation: kernel failed: " + blk.error());
}

// ---- warp intrinsics ----------------------------------------------------------------------
template <typename T>
inline constexpr bool shuffleable_v =
    std::is_arithmetic_v<T> || std::is_same_v<T, half> || std::is_same_v<T, bfloat16>;

// `src_of(lane)` gives the lane to read; returning the lane itself means "own value". Reading a
// lane that does not take part (not in the mask, or beyond the block) is undefined in CUDA: the
// emulation returns all-ones bytes (NaN for floating types) so that using it shows up in results.
template <typename T, typename SrcOf>
inline T shuffle(const char* what, uint32_t mask, T v, int width, SrcOf src_of) {
  static_assert(shuffleable_v<T>, "CUDA shuffles take arithmetic, half or bfloat16 operands");
  ThreadCtx& c = ctx(what);
  if (width <= 0 || width > 32 || (width & (width - 1)))
    c.block->fail_in_kernel(std::string(what) + ": width must be a power of two in 1..32, got " + std::to_string(width));
  T out;
  c.block->warp_collective(what, c.tid, mask, &v, sizeof(T), [&](const Rendezvous& r, uint32_t part, unsigned lane) {
    const unsigned s = src_of(lane);
    if (s == lane)
      out = v;
    else if (s < 32 && ((part >> s) & 1u))
      std::memcpy(&out, r.slot[s], sizeof(T));
    else
      std::memset(&out, 0xFF, sizeof(T));
  });
  return out;
}

template <typename T, typename Combine>
inline T warp_reduce(const char* what, uint32_t mask, T v, Combine combine) {
  ThreadCtx& c = ctx(what);
  T out{};
  c.block->warp_collective(what, c.tid, mask, &v, sizeof(T), [&](const Rendezvous& r, uint32_t part, unsigned) {
    bool first = true;
    for (unsigned l = 0; l < 32; ++l)
      if ((part >> l) & 1u) {
        T x;
        std::memcpy(&x, r.slot[l], sizeof(T));
        out = first ? x : combine(out, x);
        first = false;
      }
  });
  return out;
}

}  // namespace dc::emu

// ---- CUDA intrinsics (global namespace, as in CUDA) -------------------------------------------
inline void __syncthreads() {
  auto& c = dc::emu::ctx("__syncthreads");
  c.block->block_barrier("__syncthreads", c.tid, 0);
}
inline int __syncthreads_count(int pred) {
  auto& c = dc::emu::ctx("__syncthreads_count");
  return int(c.block->block_barrier("__syncthreads_count", c.tid, pred != 0));
}
inline int __syncthreads_and(int pred) {
  auto& c = dc::emu::ctx("__syncthreads_and");
  return c.block->block_barrier("__syncthreads_and", c.tid, pred != 0) == c.block->nthreads();
}
inline int __syncthreads_or(int pred) {
  auto& c = dc::emu::ctx("__syncthreads_or");
  return c.block->block_barrier("__syncthreads_or", c.tid, pred != 0) != 0;
}
inline void __syncwarp(unsigned mask = 0xFFFFFFFFu) {
  auto& c = dc::emu::ctx("__syncwarp");
  c.block->warp_collective("__syncwarp", c.tid, mask, nullptr, 0, [](const dc::emu::Rendezvous&, uint32_t, unsigned) {});
}

template <typename T>
inline T __shfl_sync(unsigned mask, T var, int srcLane, int width = warpSize) {
  return dc::emu::shuffle("__shfl_sync", mask, var, width, [&](unsigned lane) {
    return (lane & ~unsigned(width - 1)) + (unsigned(srcLane) & unsigned(width - 1));
  });
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  return dc::emu::shuffle("__shfl_up_sync", mask, var, width, [&](unsigned lane) {
    return (lane & unsigned(width - 1)) >= delta ? lane - delta : lane;
  });
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  return dc::emu::shuffle("__shfl_down_sync", mask, var, width, [&](unsigned lane) {
    return (lane & unsigned(width - 1)) + delta < unsigned(width) ? lane + delta : lane;
  });
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = warpSize) {
  // a lane may read from its own or an earlier group of `width` lanes, never a later one
  return dc::emu::shuffle("__shfl_xor_sync", mask, var, width, [&](unsigned lane) {
    const unsigned s = lane ^ (unsigned(laneMask) & 31u);
    return s < (lane & ~unsigned(width - 1)) + unsigned(width) ? s : lane;
  });
}

inline unsigned __ballot_sync(unsigned mask, int pred) {
  auto& c = dc::emu::ctx("__ballot_sync");
  int p = pred != 0;
  unsigned out = 0;
  c.block->warp_collective("__ballot_sync", c.tid, mask, &p, sizeof p,
                           [&](const dc::emu::Rendezvous& r, uint32_t part, unsigned) {
                             for (unsigned l = 0; l < 32; ++l)
                               if (((part >> l) & 1u) && r.slot[l][0]) out |= 1u << l;
                           });
  return out;
}
inline int __any_sync(unsigned mask, int pred) {
  auto& c = dc::emu::ctx("__any_sync");
  int p = pred != 0;
  int out = 0;
  c.block->warp_collective("__any_sync", c.tid, mask, &p, sizeof p,
                           [&](const dc::emu::Rendezvous& r, uint32_t part, unsigned) {
                             for (unsigned l = 0; l < 32; ++l) out |= ((part >> l) & 1u) && r.slot[l][0];
                           });
  return out;
}
inline int __all_sync(unsigned mask, int pred) {
  auto& c = dc::emu::ctx("__all_sync");
  int p = pred != 0;
  int out = 1;
  c.block->warp_collective("__all_sync", c.tid, mask, &p, sizeof p,
                           [&](const dc::emu::Rendezvous& r, uint32_t part, unsigned) {
                             for (unsigned l = 0; l < 32; ++l)
                               if ((part >> l) & 1u) out &= r.slot[l][0] != 0;
                           });
  return out;
}
inline unsigned __reduce_add_sync(unsigned mask, unsigned v) {
  return dc::emu::warp_reduce("__reduce_add_sync", mask, v, [](unsigned a, unsigned b) { return a + b; });
}
inline int __reduce_add_sync(unsigned mask, int v) {
  // two's complement wrap-around like the hardware, without signed-overflow UB
  return int(__reduce_add_sync(mask, unsigned(v)));
}
inline unsigned __reduce_min_sync(unsigned mask, unsigned v) {
  return dc::emu::warp_reduce("__reduce_min_sync", mask, v, [](unsigned a, unsigned b) { return std::min(a, b); });
}
inline int __reduce_min_sync(unsigned mask, int v) {
  return dc::emu::warp_reduce("__reduce_min_sync", mask, v, [](int a, int b) { return std::min(a, b); });
}
inline unsigned __reduce_max_sync(unsigned mask, unsigned v) {
  return dc::emu::warp_reduce("__reduce_max_sync", mask, v, [](unsigned a, unsigned b) { return std::max(a, b); });
}
inline int __reduce_max_sync(unsigned mask, int v) {
  return dc::emu::warp_reduce("__reduce_max_sync", mask, v, [](int a, int b) { return std::max(a, b); });
}
inline unsigned __reduce_and_sync(unsigned mask, unsigned v) {
  return dc::emu::warp_reduce("__reduce_and_sync", mask, v, [](unsigned a, unsigned b) { return a & b; });
}
inline unsigned __reduce_or_sync(unsigned mask, unsigned v) {
  return dc::emu::warp_reduce("__reduce_or_sync", mask, v, [](unsigned a, unsigned b) { return a | b; });
}
inline unsigned __reduce_xor_sync(unsigned mask, unsigned v) {
  return dc::emu::warp_reduce("__reduce_xor_sync", mask, v, [](unsigned a, unsigned b) { return a ^ b; });
}

// Atomics: relaxed, like CUDA's (they order nothing else; use __threadfence for that).
#define DC_EMU_ATOMIC(NAME, T, EXPR)                                       \
  inline T NAME(T* address, T val) {                                       \
    std::atomic_ref<T> a(*address);                                        \
    return EXPR;                                                           \
  }
#define DC_EMU_ATOMIC_RMW(T)                                                             \
  DC_EMU_ATOMIC(atomicAdd, T, a.fetch_add(val, std::memory_order_relaxed))               \
  DC_EMU_ATOMIC(atomicExch, T, a.exchange(val, std::memory_order_relaxed))               \
  DC_EMU_ATOMIC(atomicMax, T, dc::emu::atomic_update(a, val, [](T x, T y) { return x < y ? y : x; })) \
  DC_EMU_ATOMIC(atomicMin, T, dc::emu::atomic_update(a, val, [](T x, T y) { return y < x ? y : x; }))
#define DC_EMU_ATOMIC_INT(T)                                                             \
  DC_EMU_ATOMIC(atomicSub, T, a.fetch_sub(val, std::memory_order_relaxed))               \
  DC_EMU_ATOMIC(atomicAnd, T, a.fetch_and(val, std::memory_order_relaxed))               \
  DC_EMU_ATOMIC(atomicOr, T, a.fetch_or(val, std::memory_order_relaxed))                 \
  DC_EMU_ATOMIC(atomicXor, T, a.fetch_xor(val, std::memory_order_relaxed))               \
  inline T atomicCAS(T* address, T compare, T val) {                                     \
    std::atomic_ref<T> a(*address);                                                      \
    a.compare_exchange_strong(compare, val, std::memory_order_relaxed);                  \
    return compare;                                                                      \
  }
namespace dc::emu {
template <typename T, typename F>
inline T atomic_update(std::atomic_ref<T>& a, T val, F f) {
  T old = a.load(std::memory_order_relaxed);
  while (!a.compare_exchange_weak(old, f(old, val), std::memory_order_relaxed)) {
  }
  return old;
}
}  // namespace dc::emu
DC_EMU_ATOMIC_RMW(int)
DC_EMU_ATOMIC_RMW(unsigned)
DC_EMU_ATOMIC_RMW(unsigned long long)
DC_EMU_ATOMIC(atomicMax, long long, dc::emu::atomic_update(a, val, [](long long x, long long y) { return x < y ? y : x; }))
DC_EMU_ATOMIC(atomicMin, long long, dc::emu::atomic_update(a, val, [](long long x, long long y) { return y < x ? y : x; }))
DC_EMU_ATOMIC_INT(int)
DC_EMU_ATOMIC_INT(unsigned)
DC_EMU_ATOMIC_INT(unsigned long long)
DC_EMU_ATOMIC(atomicAdd, float, a.fetch_add(val, std::memory_order_relaxed))
DC_EMU_ATOMIC(atomicAdd, double, a.fetch_add(val, std::memory_order_relaxed))
DC_EMU_ATOMIC(atomicExch, float, a.exchange(val, std::memory_order_relaxed))
#undef DC_EMU_ATOMIC
#undef DC_EMU_ATOMIC_RMW
#undef DC_EMU_ATOMIC_INT

inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

template <typename T>
inline T __ldg(const T* p) {
  return *p;
}
inline int __popc(unsigned x) { return std::popcount(x); }
inline int __popcll(unsigned long long x) { return std::popcount(x); }
inline int __clz(int x) { return x ? std::countl_zero(unsigned(x)) : 32; }
inline int __ffs(int x) { return x ? std::countr_zero(unsigned(x)) + 1 : 0; }
inline unsigned __brev(unsigned x) {
  x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
  x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
  x = ((x >> 4) & 0x0F0F0F0Fu) | ((x & 0x0F0F0F0Fu) << 4);
  x = ((x >> 8) & 0x00FF00FFu) | ((x & 0x00FF00FFu) << 8);
  return (x >> 16) | (x << 16);
}
inline float __int_as_float(int x) { return std::bit_cast<float>(x); }
inline int __float_as_int(float x) { return std::bit_cast<int>(x); }
inline unsigned __float_as_uint(float x) { return std::bit_cast<unsigned>(x); }
inline float __uint_as_float(unsigned x) { return std::bit_cast<float>(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : (x == x ? x : 0.f)); }
