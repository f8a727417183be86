// Launchers the torch-facing ops call; each returns the launch's cudaError_t.
#pragma once

#include <cuda_runtime.h>

#include "mla/params.h"

namespace mla {

cudaError_t run_metadata(const MetadataParams& params, cudaStream_t stream);

// Main split-KV kernel (sm90/decode): one CTA per (tile of 64 query rows, part).
cudaError_t run_decode_main(const DecodeParams& params, cudaStream_t stream);

// Merges the partial results of sequences split across parts; no-op for unsplit ones.
cudaError_t run_combine(const DecodeParams& params, cudaStream_t stream);

// Query rows per CTA: every row count runs tiles of 64 rows (rows on the wgmma M dimension, fewer
// rows padded). The swap-AB kernel that ran up to 16 rows on the N dimension without padding
// measured 1.05-1.07x slower than the padded tile on an H200 (docs/perf.md, v9): decode is
// memory-bound there, and its one stage per warpgroup kept fewer bytes in flight.
constexpr int kDecodeRowsPerCta = 64;

}  // namespace mla
