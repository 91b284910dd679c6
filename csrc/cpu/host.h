// Host-side helpers shared by the CPU-key ops (conv_cpu.cpp, resize_cpu.cpp, batchnorm_cpu.cpp):
// argument checks, the compute type and the output layout rule.
#pragma once

#include <ATen/ATen.h>

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

}  // namespace dilconv::cpu
