// Host helpers shared by the sm90 decode launchers.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include "mla/params.h"

namespace mla::sm90 {

// The cache as a 3-D tensor [num_pages][64 tokens][576 dims] with its own strides; one box is a
// 64-dim atom column of a whole page, written 128B-swizzled.
cudaError_t make_kv_tensor_map(const DecodeParams& p, CUtensorMap* tmap);

// Raises `kernel`'s dynamic shared-memory limit to `bytes`, once per device.
cudaError_t ensure_smem_limit(const void* kernel, int bytes, bool (&done)[64]);

}  // namespace mla::sm90
