// Host helpers shared by the sm90 decode launchers: the KV tensor map and the shared-memory opt-in.
#include "sm90/launch_utils.h"

#include <cudaTypedefs.h>

#include "sm90/page_tile.cuh"

namespace mla::sm90 {
namespace {

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

}  // namespace

cudaError_t make_kv_tensor_map(const DecodeParams& p, CUtensorMap* tmap) {
  const auto encode = encode_fn();
  if (encode == nullptr) return cudaErrorSymbolNotFound;
  const cuuint64_t dims[3] = {cuuint64_t(kDimQK), cuuint64_t(kPageSize), cuuint64_t(p.num_pages)};
  const cuuint64_t strides[2] = {cuuint64_t(p.kv_token_stride) * 2,
                                 cuuint64_t(p.kv_page_stride) * 2};
  const cuuint32_t box[3] = {kBlockDims, kPageSize, 1};
  const cuuint32_t elem_strides[3] = {1, 1, 1};
  const CUresult res =
      encode(tmap, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, const_cast<__nv_bfloat16*>(p.kv), dims,
             strides, box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
             CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return res == CUDA_SUCCESS ? cudaSuccess : cudaErrorInvalidValue;
}

cudaError_t ensure_smem_limit(const void* kernel, int bytes, bool (&done)[64]) {
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  if (device < 64 && done[device]) return cudaSuccess;
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (err == cudaSuccess && device < 64) done[device] = true;  // a racing second set is harmless
  return err;
}

}  // namespace mla::sm90
