// Launchers the torch-facing ops call; each returns the launch's cudaError_t.
#pragma once

#include <cuda_runtime.h>

#include "mla/params.h"

namespace mla {

cudaError_t run_metadata(const MetadataParams& params, cudaStream_t stream);

// Main split-KV kernel for CTAs of kRows query rows: 16 and 32 run the mma.sync kernel
// (sm90/decode), 64 the wgmma kernel (sm90/decode_wgmma).
template <int kRows>
cudaError_t run_decode_main(const DecodeParams& params, cudaStream_t stream);

// Merges the partial results of sequences split across parts; no-op for unsplit ones.
cudaError_t run_combine(const DecodeParams& params, cudaStream_t stream);

// Query rows per CTA for a problem with `rows` query rows per sequence.
inline int decode_rows_per_cta(int rows) { return rows <= 16 ? 16 : (rows <= 32 ? 32 : 64); }

}  // namespace mla
