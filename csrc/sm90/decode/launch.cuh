// run_decode_main<kRows>: grid, shared-memory attribute and launch of the main decode kernel.
#pragma once

#include <cuda_runtime.h>

#include "mla/api.h"
#include "sm90/decode/kernel.cuh"

namespace mla {

template <int kRows>
cudaError_t run_decode_main(const DecodeParams& params, cudaStream_t stream) {
  using T = sm90::decode::Traits<kRows>;
  auto kernel = sm90::decode::decode_main_kernel<T>;
  // The attribute is per function and device; setting it every call costs about a microsecond
  // of host time and is captured by nothing, so it stays simple.
  cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, T::kSmemBytes);
  if (err != cudaSuccess) return err;
  const dim3 grid(params.num_m_tiles, params.num_parts);
  kernel<<<grid, T::kThreads, T::kSmemBytes, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace mla
