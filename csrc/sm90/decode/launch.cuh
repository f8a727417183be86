// run_decode_main<kRows>: grid, shared-memory attribute and launch of the main decode kernel.
#pragma once

#include <cuda_runtime.h>

#include "mla/api.h"
#include "sm90/decode/kernel.cuh"

namespace mla {

constexpr int kMaxDevices = 64;

template <int kRows>
cudaError_t run_decode_main(const DecodeParams& params, cudaStream_t stream) {
  using T = sm90::decode::Traits<kRows>;
  auto kernel = sm90::decode::decode_main_kernel<T>;
  // The shared-memory opt-in is per function and device: set it once per device, off the hot
  // path (a racing second set is harmless).
  static bool smem_set[kMaxDevices] = {};
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  if (device >= kMaxDevices || !smem_set[device]) {
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, T::kSmemBytes);
    if (err != cudaSuccess) return err;
    if (device < kMaxDevices) smem_set[device] = true;
  }
  const dim3 grid(params.num_m_tiles, params.num_parts);
  kernel<<<grid, T::kThreads, T::kSmemBytes, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace mla
