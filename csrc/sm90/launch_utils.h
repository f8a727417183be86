// Host helpers shared by the sm90 decode launchers.
#pragma once

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include "mla/params.h"
#include "sm90/page_tile.cuh"

namespace mla::sm90 {

// cuTensorMapEncodeTiled through the runtime's driver entry point: no link against libcuda, so
// the extension still loads on machines without a GPU driver. Null when the driver has none.
PFN_cuTensorMapEncodeTiled_v12000 encode_fn();

// The cache as a 3-D tensor [num_pages][64 tokens][576 dims] with its own strides; one box is a
// 64-dim atom column of a whole page, written 128B-swizzled.
cudaError_t make_kv_tensor_map(const DecodeParams& p, CUtensorMap* tmap);

// q and q_pe as the tensors of QTensorMaps (page_tile.cuh); false where the Q tile cannot be
// loaded as boxes (h_q neither dividing 64 nor a multiple of it, a zero stride, or an encoding the
// driver refuses): the kernel then copies Q with cp.async.
bool make_q_tensor_maps(const DecodeParams& p, QTensorMaps* maps);

// Raises `kernel`'s dynamic shared-memory limit to `bytes`, once per device.
cudaError_t ensure_smem_limit(const void* kernel, int bytes, bool (&done)[64]);

}  // namespace mla::sm90
