// Launchers the torch-facing ops call; each returns the launch's cudaError_t.
#pragma once

#include <cuda_runtime.h>

#include "mla/params.h"

namespace mla {

cudaError_t run_metadata(const MetadataParams& params, cudaStream_t stream);

// Main split-KV kernel (sm90/decode): one CTA per (row tile of kDecodeRowsPerCta, part).
cudaError_t run_decode_main(const DecodeParams& params, cudaStream_t stream);

// Merges the partial results of sequences split across parts; no-op for unsplit ones.
cudaError_t run_combine(const DecodeParams& params, cudaStream_t stream);

// Query rows per CTA: one m64 wgmma tile. Fewer rows (16 or 32 heads at s_q = 1) are padded:
// measured on the H200, the padded wgmma tile still beat a 16/32-row mma.sync kernel by 1.4-1.5x
// when memory-bound (docs/perf.md, v2).
constexpr int kDecodeRowsPerCta = 64;

}  // namespace mla
