// Emulated WMMA (nvcuda::wmma subset): m16n16k16, A/B in half or bfloat16 (row or column major),
// float accumulator. Included through csrc/kernels/wmma.cuh; use it as dc::wmma.
//
// Fragments are distributed per lane like on the GPU: each lane's fragment object holds
// num_elements = 8 of the 256 matrix elements (element i of lane l is the element at row-major
// position i*32 + l). Which lane holds which element is unspecified in CUDA, so kernels may only
// apply the same operation to every x[i] (scaling, activation), exactly as on the GPU.
//   load_matrix_sync / store_matrix_sync  warp collectives that check that every lane passes the
//       same pointer, ldm and layout, the pointer is 32-byte aligned and ldm is a multiple of 16
//       bytes (the CUDA requirements; violating them is undefined on the GPU, an error here); then
//       each lane reads/writes its own elements.
//   mma_sync  a warp collective: the last lane to arrive computes D = A*B + C in fp32 for the whole
//       warp (products exact, sums in k order) from every lane's fragments and writes each lane's
//       D before releasing the warp (D may alias C).
//   fill_fragment  lane-local.
// All 32 lanes of the warp must take part (a partial warp fails the launch). Element accesses from
// global memory are recorded by the traffic counters like dc::load/dc::store (one access per
// element); stage tiles through shared memory for coalesced traffic anyway.
#pragma once
#include <type_traits>

namespace dc::emu::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "dc::wmma emulates the m16n16k16 shape only");
  static_assert(std::is_same_v<Use, accumulator> ? std::is_same_v<T, float> && std::is_void_v<Layout>
                                                 : (std::is_same_v<T, half> || std::is_same_v<T, bfloat16>) &&
                                                       (std::is_same_v<Layout, row_major> || std::is_same_v<Layout, col_major>),
                "dc::wmma: matrix_a/matrix_b are half or bfloat16 with row_major/col_major; the accumulator is float");
  using element_type = T;
  static constexpr int num_elements = 8;
  T x[num_elements];
};

namespace detail {

struct MemOp {
  const void* ptr;
  unsigned ldm;
  int layout;  // 0 row-major, 1 column-major
};

inline constexpr uint32_t kFullWarp = 0xFFFFFFFFu;

// Collective check of a load/store's arguments; returns this lane's id.
template <typename T>
inline unsigned mem_collective(const char* what, const void* ptr, unsigned ldm, int layout) {
  ThreadCtx& c = ctx(what);
  Block& b = *c.block;
  if (b.lanes_of(c.tid / 32) != kFullWarp)
    b.fail_in_kernel(std::string(what) + ": WMMA needs all 32 lanes of the warp; the block size is not a multiple of 32");
  MemOp mine{ptr, ldm, layout}, first{};
  b.warp_collective(what, c.tid, kFullWarp, &mine, sizeof mine, [&](const Rendezvous& r, uint32_t, unsigned) {
    std::memcpy(&first, r.slot[0], sizeof first);
  });
  if (first.ptr != ptr || first.ldm != ldm || first.layout != layout)
    b.fail_in_kernel(std::string(what) + ": every lane of the warp must pass the same pointer, ldm and layout");
  if (reinterpret_cast<uintptr_t>(ptr) % 32 != 0)
    b.fail_in_kernel(std::string(what) + ": the pointer must be 256-bit (32-byte) aligned");
  if ((size_t(ldm) * sizeof(T)) % 16 != 0)
    b.fail_in_kernel(std::string(what) + ": ldm must be a multiple of 16 bytes (" + std::to_string(16 / sizeof(T)) +
                     " elements), got " + std::to_string(ldm));
  return c.tid % 32;
}

// position of element i of `lane` in the logical 16x16 matrix
inline void pos(unsigned lane, int i, int& row, int& col) {
  const int p = i * 32 + int(lane);
  row = p / 16;
  col = p % 16;
}

template <typename T>
inline T mem_load(const T* p, const std::source_location& loc) {
  if (traffic_enabled() && tl_ctx) traffic_record(tl_ctx->traffic, loc, p, sizeof(T), false);
  return *p;
}

}  // namespace detail

template <typename Use, typename T, typename Layout>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& f, const T* p, unsigned ldm,
                             const std::source_location& loc = std::source_location::current()) {
  static_assert(!std::is_same_v<Use, accumulator>, "accumulator loads take a layout_t argument");
  constexpr bool row = std::is_same_v<Layout, row_major>;
  const unsigned lane = detail::mem_collective<T>("wmma::load_matrix_sync", p, ldm, row ? 0 : 1);
  for (int i = 0; i < f.num_elements; ++i) {
    int r, c;  // logical (row, col) of A[m][k] or B[k][n]
    detail::pos(lane, i, r, c);
    f.x[i] = detail::mem_load(row ? p + size_t(r) * ldm + c : p + size_t(c) * ldm + r, loc);
  }
}

inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const float* p, unsigned ldm, layout_t layout,
                             const std::source_location& loc = std::source_location::current()) {
  const unsigned lane = detail::mem_collective<float>("wmma::load_matrix_sync", p, ldm, int(layout));
  for (int i = 0; i < f.num_elements; ++i) {
    int r, c;
    detail::pos(lane, i, r, c);
    f.x[i] = detail::mem_load(layout == mem_row_major ? p + size_t(r) * ldm + c : p + size_t(c) * ldm + r, loc);
  }
}

inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm, layout_t layout,
                              const std::source_location& loc = std::source_location::current()) {
  const unsigned lane = detail::mem_collective<float>("wmma::store_matrix_sync", p, ldm, int(layout));
  for (int i = 0; i < f.num_elements; ++i) {
    int r, c;
    detail::pos(lane, i, r, c);
    float* q = layout == mem_row_major ? p + size_t(r) * ldm + c : p + size_t(c) * ldm + r;
    if (traffic_enabled() && tl_ctx) traffic_record(tl_ctx->traffic, loc, q, sizeof(float), true);
    *q = f.x[i];
  }
}

template <typename Use, typename T, typename Layout>
inline void fill_fragment(fragment<Use, 16, 16, 16, T, Layout>& f, const std::type_identity_t<T>& v) {
  for (int i = 0; i < f.num_elements; ++i) f.x[i] = v;
}

template <typename T, typename LA, typename LB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, T, LA>& a,
                     const fragment<matrix_b, 16, 16, 16, T, LB>& b, const fragment<accumulator, 16, 16, 16, float>& c,
                     bool satf = false) {
  using Acc = fragment<accumulator, 16, 16, 16, float>;
  using FA = fragment<matrix_a, 16, 16, 16, T, LA>;
  using FB = fragment<matrix_b, 16, 16, 16, T, LB>;
  struct Ptrs {
    Acc* d;
    const FA* a;
    const FB* b;
    const Acc* c;
  };
  static_assert(sizeof(Ptrs) <= 32);
  ThreadCtx& cx = ctx("wmma::mma_sync");
  Block& blk = *cx.block;
  if (blk.lanes_of(cx.tid / 32) != detail::kFullWarp)
    blk.fail_in_kernel("wmma::mma_sync: WMMA needs all 32 lanes of the warp; the block size is not a multiple of 32");
  Ptrs mine{&d, &a, &b, &c};
  blk.warp_collective(
      "wmma::mma_sync", cx.tid, detail::kFullWarp, &mine, sizeof mine, [](const Rendezvous&, uint32_t, unsigned) {},
      [&](Rendezvous& r, uint32_t) {
        float A[16][16], B[16][16], C[16][16];
        Ptrs lanes[32];
        for (unsigned l = 0; l < 32; ++l) std::memcpy(&lanes[l], r.slot[l], sizeof(Ptrs));
        for (unsigned l = 0; l < 32; ++l)
          for (int i = 0; i < 8; ++i) {
            int row, col;
            detail::pos(l, i, row, col);
            A[row][col] = dc::emu::to_float_any(lanes[l].a->x[i]);
            B[row][col] = dc::emu::to_float_any(lanes[l].b->x[i]);
            C[row][col] = lanes[l].c->x[i];
          }
        for (unsigned l = 0; l < 32; ++l)
          for (int i = 0; i < 8; ++i) {
            int m, n;
            detail::pos(l, i, m, n);
            float acc = C[m][n];
            for (int k = 0; k < 16; ++k) acc += A[m][k] * B[k][n];
            if (satf) acc = std::isnan(acc) ? 0.f : std::min(1.f, std::max(-1.f, acc));
            lanes[l].d->x[i] = acc;
          }
      });
}

}  // namespace dc::emu::wmma
