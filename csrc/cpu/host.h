// Host-side helpers shared by the CPU-key ops (conv_cpu.cpp, resize_cpu.cpp, batchnorm_cpu.cpp,
// loss_cpu.cpp): argument checks, the compute type, the output layout rule and the bilinear
// resize's coefficients.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace dilconv::cpu {

inline void check_dtype(const char* op, const at::Tensor& t) {
  const auto st = t.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16, op,
              ": unsupported dtype ", st, " (float32, float64, float16, bfloat16)");
  TORCH_CHECK(t.device().is_cpu(), op, ": expected CPU tensors, got ", t.device());
}

inline void check_dim(const char* op, const at::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.dim() == dim, op, ": expected ", name, " to be ", dim, "-D, got ", t.sizes());
}

// fp16/bf16 are computed in float32, float64 in float64
inline at::ScalarType compute_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// dilconv._ops.output_memory_format: channels_last when t is channels_last and not also plain
// contiguous
inline at::MemoryFormat out_format(const at::Tensor& t) {
  if (t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast))
    return at::MemoryFormat::ChannelsLast;
  return at::MemoryFormat::Contiguous;
}

// torch's coefficients (aten/src/ATen/native/UpSample.h: area_pixel_compute_scale,
// area_pixel_compute_source_index, guard_index_and_lambda) for `out` positions read from `in`:
// per position the two source indices and their weights, computed in double.
struct ResizeAxis {
  std::vector<int64_t> idx;  // 2 per output position
  std::vector<double> lam;   // 2 per output position
  // per input position i the output positions [lo[i], hi[i]) that read it (lo >= hi: none): a
  // contiguous range, since the source positions never decrease along the output
  void readers(int64_t in, std::vector<int64_t>& lo, std::vector<int64_t>& hi) const {
    const int64_t out = int64_t(idx.size()) / 2;
    lo.assign(in, out);
    hi.assign(in, 0);
    for (int64_t o = 0; o < out; ++o)
      for (int j = 0; j < 2; ++j) {
        const int64_t i = idx[2 * o + j];
        lo[i] = std::min(lo[i], o);
        hi[i] = std::max(hi[i], o + 1);
      }
  }
};

inline ResizeAxis resize_axis(int64_t in, int64_t out, bool align_corners) {
  ResizeAxis a;
  a.idx.resize(2 * out);
  a.lam.resize(2 * out);
  const double scale = align_corners ? (out > 1 ? double(in - 1) / double(out - 1) : 0.0)
                                     : double(in) / double(out);
  for (int64_t o = 0; o < out; ++o) {
    int64_t i0 = o, i1 = o;
    double l1 = 0.0;
    if (in != out) {
      double real = align_corners ? scale * o : scale * (o + 0.5) - 0.5;
      if (real < 0) real = 0;
      i0 = std::min(static_cast<int64_t>(std::floor(real)), in - 1);
      l1 = std::min(std::max(real - i0, 0.0), 1.0);
      i1 = i0 + (i0 < in - 1 ? 1 : 0);
    }
    a.idx[2 * o] = i0;
    a.idx[2 * o + 1] = i1;
    a.lam[2 * o] = 1.0 - l1;
    a.lam[2 * o + 1] = l1;
  }
  return a;
}

}  // namespace dilconv::cpu
