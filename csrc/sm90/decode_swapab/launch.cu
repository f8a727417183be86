// run_decode_swapab: launches the swap-AB kernel for problems of at most 16 query rows.
#include <cuda_runtime.h>

#include "mla/api.h"
#include "mla/launch.h"
#include "sm90/decode_swapab/kernel.cuh"
#include "sm90/launch_utils.h"

namespace mla {

cudaError_t run_decode_swapab(const DecodeParams& params, cudaStream_t stream) {
  using namespace sm90::decode_swapab;
  constexpr int kN = 16;
  CUtensorMap tmap;
  cudaError_t err = sm90::make_kv_tensor_map(params, &tmap);
  if (err != cudaSuccess) return err;
  static bool smem_set[64] = {};
  const auto kernel = decode_swapab_kernel<kN>;
  err = sm90::ensure_smem_limit(reinterpret_cast<const void*>(kernel), Layout<kN>::kSmemBytes,
                                smem_set);
  if (err != cudaSuccess) return err;
  const dim3 grid(params.num_m_tiles, params.num_parts);
  return launch_pdl(kernel, grid, dim3(kThreads), Layout<kN>::kSmemBytes, stream, params, tmap);
}

}  // namespace mla
