// dc::wmma — tensor-core fragments for kernels written once for nvcc and the emulation.
//   nvcc:      dc::wmma is nvcuda::wmma (<mma.h>; bf16 needs sm_80).
//   emulation: dc::wmma is dc::emu::wmma (csrc/emu/emu_wmma.h): m16n16k16 with half/bfloat16
//              A/B (row_major or col_major) and a float accumulator; fragment, fill_fragment,
//              load_matrix_sync, mma_sync, store_matrix_sync, mem_row_major/mem_col_major. The
//              emulation checks the CUDA rules (whole warp, warp-uniform pointer/ldm/layout,
//              32-byte aligned pointer, ldm a multiple of 16 bytes) and fails the launch otherwise.
// Lanes see each other's store_matrix_sync results only after __syncwarp()/__syncthreads(), as on
// the GPU (under ThreadSanitizer a missing one is a reported race).
// Use only that subset (no tf32/int8/other shapes) so both builds compile the same source. Host
// declaration mode (neither nvcc nor emulation) defines nothing.
#pragma once
#include "kernels/platform.cuh"

#if defined(DC_MODE_CUDA)
#include <mma.h>
namespace dc {
namespace wmma = nvcuda::wmma;
}
#elif defined(DC_MODE_EMU)
#include "../emu/emu_wmma.h"
namespace dc {
namespace wmma = ::dc::emu::wmma;
}
#endif
