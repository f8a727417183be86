// Host helpers shared by the sm90 decode launchers: the KV tensor map and the shared-memory opt-in.
#include "sm90/launch_utils.h"

#include "sm90/page_tile.cuh"

namespace mla::sm90 {

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

cudaError_t make_kv_tensor_map(const DecodeParams& p, CUtensorMap* tmap) {
  const auto encode = encode_fn();
  if (encode == nullptr) return cudaErrorSymbolNotFound;
  const cuuint64_t dims[3] = {cuuint64_t(kDimQK), cuuint64_t(kPageSize), cuuint64_t(p.num_pages)};
  const cuuint64_t strides[2] = {cuuint64_t(p.kv_token_stride) * 2,
                                 cuuint64_t(p.kv_page_stride) * 2};
  const cuuint32_t box[3] = {kBlockDims, kPageSize, 1};
  const cuuint32_t elem_strides[3] = {1, 1, 1};
  // No L2 promotion: a box row is one token's 128-byte line, all a request needs. With 256-byte
  // promotion each miss also filled the next atom column's line, and the L2, near its peak at 16
  // heads, looked up 22% more sectors than it read from DRAM (ncu, docs/perf.md v14). A stream of
  // these pages with no MMA reads 4.64 TB/s without promotion and 4.15 with it (an H200), and
  // the decode at 16 heads, B = 128, L = 4k-32k is 1.07-1.08x faster (docs/perf.md v27).
  const CUresult res =
      encode(tmap, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, const_cast<__nv_bfloat16*>(p.kv), dims,
             strides, box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
             CU_TENSOR_MAP_L2_PROMOTION_NONE, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return res == CUDA_SUCCESS ? cudaSuccess : cudaErrorInvalidValue;
}

bool make_q_tensor_maps(const DecodeParams& p, QTensorMaps* maps) {
  const auto encode = encode_fn();
  const int h = p.h_q;
  if (encode == nullptr || !(h >= 64 ? h % 64 == 0 : 64 % h == 0)) return false;
  const bool varlen = p.q_start != nullptr;
  const cuuint64_t tokens = varlen ? p.num_tokens : p.s_q;
  const cuuint64_t batches = varlen ? 1 : p.batch;
  auto one = [&](CUtensorMap* map, const __nv_bfloat16* base, int dims0, int64_t batch_stride,
                 int64_t token_stride, int64_t head_stride) {
    // A dim of size 1 is never stepped over; its stride only has to be a valid one.
    const int64_t hs = h > 1 ? head_stride : 8;
    const int64_t ts = tokens > 1 ? token_stride : 8;
    const int64_t bs = batches > 1 ? batch_stride : 8;
    if (hs <= 0 || ts <= 0 || bs <= 0) return false;
    const cuuint64_t dims[4] = {cuuint64_t(dims0), cuuint64_t(h), tokens, batches};
    const cuuint64_t strides[3] = {cuuint64_t(hs) * 2, cuuint64_t(ts) * 2, cuuint64_t(bs) * 2};
    const cuuint32_t box[4] = {kBlockDims, cuuint32_t(h >= 64 ? 64 : h),
                               cuuint32_t(h >= 64 ? 1 : 64 / h), 1};
    const cuuint32_t elem_strides[4] = {1, 1, 1, 1};
    return encode(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 4, const_cast<__nv_bfloat16*>(base), dims,
                  strides, box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                  CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
                  CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
  };
  return one(&maps->q, p.q, kDimV, p.q_batch_stride, p.q_token_stride, p.q_head_stride) &&
         one(&maps->q_pe, p.q_pe, kDimQK - kDimV, p.q_pe_batch_stride, p.q_pe_token_stride,
             p.q_pe_head_stride);
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
