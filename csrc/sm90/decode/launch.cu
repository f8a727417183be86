// run_decode_main: the 64-row-tile kernel. The KV tensor map is a kernel parameter, so CUDA graphs
// capture it by value; the launch overlaps the metadata kernel (PDL).
#include <cuda_runtime.h>

#include "mla/api.h"
#include "mla/launch.h"
#include "sm90/decode/kernel.cuh"
#include "sm90/launch_utils.h"

namespace mla {

cudaError_t run_decode_main(const DecodeParams& params, cudaStream_t stream) {
  using namespace sm90::decode;
  CUtensorMap tmap;
  cudaError_t err = sm90::make_kv_tensor_map(params, &tmap);
  if (err != cudaSuccess) return err;
  static bool smem_set[64] = {};
  err = sm90::ensure_smem_limit(reinterpret_cast<const void*>(decode_kernel), kSmemBytes, smem_set);
  if (err != cudaSuccess) return err;
  const dim3 grid(params.num_m_tiles, params.num_parts);
  return launch_pdl(decode_kernel, grid, dim3(kThreads), kSmemBytes, stream, params, tmap);
}

}  // namespace mla
