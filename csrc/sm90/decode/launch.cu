// run_decode_main: builds the KV cache's tensor map
// (a kernel parameter, so CUDA graphs capture it by value), sets the shared-memory opt-in once per
// device and launches.
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include "mla/api.h"
#include "sm90/decode/kernel.cuh"

namespace mla {
namespace {

constexpr int kMaxDevices = 64;

// cuTensorMapEncodeTiled through the runtime's driver entry point: no link against libcuda, so
// the extension still loads on machines without a GPU driver.
PFN_cuTensorMapEncodeTiled_v12000 encode_fn() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult status;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000, cudaEnableDefault,
                                         &status) != cudaSuccess ||
        status != cudaDriverEntryPointSuccess) {
      ptr = nullptr;
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(ptr);
  }();
  return fn;
}

// The cache as a 3-D tensor [num_pages][64 tokens][576 dims] with its own strides; a box is one
// 64-dim atom column of a whole page, written 128B-swizzled.
cudaError_t make_kv_tensor_map(const DecodeParams& p, CUtensorMap* tmap) {
  const auto encode = encode_fn();
  if (encode == nullptr) return cudaErrorSymbolNotFound;
  using namespace sm90::decode;
  const cuuint64_t dims[3] = {cuuint64_t(kDimQK), cuuint64_t(kPageSize), cuuint64_t(p.num_pages)};
  const cuuint64_t strides[2] = {cuuint64_t(p.kv_token_stride) * 2, cuuint64_t(p.kv_page_stride) * 2};
  const cuuint32_t box[3] = {kBlockDims, kPageSize, 1};
  const cuuint32_t elem_strides[3] = {1, 1, 1};
  const CUresult res = encode(tmap, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, const_cast<__nv_bfloat16*>(p.kv),
                              dims, strides, box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                              CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                              CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return res == CUDA_SUCCESS ? cudaSuccess : cudaErrorInvalidValue;
}

}  // namespace

cudaError_t run_decode_main(const DecodeParams& params, cudaStream_t stream) {
  using namespace sm90::decode;
  CUtensorMap tmap;
  cudaError_t err = make_kv_tensor_map(params, &tmap);
  if (err != cudaSuccess) return err;
  static bool smem_set[kMaxDevices] = {};
  int device = 0;
  err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  if (device >= kMaxDevices || !smem_set[device]) {
    err = cudaFuncSetAttribute(decode_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               kSmemBytes);
    if (err != cudaSuccess) return err;
    if (device < kMaxDevices) smem_set[device] = true;
  }
  const dim3 grid(params.num_m_tiles, params.num_parts);
  decode_kernel<<<grid, kThreads, kSmemBytes, stream>>>(params, tmap);
  return cudaGetLastError();
}

}  // namespace mla
