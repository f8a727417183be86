// Launchers the torch-facing ops call; each returns the launch's cudaError_t.
#pragma once

#include <cuda_runtime.h>

#include "mla/params.h"

namespace mla {

cudaError_t run_metadata(const MetadataParams& params, cudaStream_t stream);

// Main split-KV kernel (sm90/decode): one CTA per (tile of 64 query rows, part).
cudaError_t run_decode_main(const DecodeParams& params, cudaStream_t stream);

// Swap-AB split-KV kernel (sm90/decode_swapab) for problems of at most 16 query rows.
cudaError_t run_decode_swapab(const DecodeParams& params, cudaStream_t stream);

// Merges the partial results of sequences split across parts; no-op for unsplit ones.
cudaError_t run_combine(const DecodeParams& params, cudaStream_t stream);

// Query rows per CTA: up to 16 rows run the swap-AB kernel (rows on the wgmma N dimension, no
// padding waste); more rows run 64-row tiles (rows on M). A 32-row swap-AB tile measured slower
// than the padded 64-row tile (docs/perf.md, v3), so there is none.
inline int decode_rows_per_cta(int rows) { return rows <= 16 ? 16 : 64; }

}  // namespace mla
