// Split-KV combine: merges the fp32 partial results of sequences cut across parts, weighting each
// piece by exp(lse_piece - lse_total). Arch-agnostic; one warp per query row.
#include <cmath>
#include <cstdint>

#include "mla/api.h"

namespace mla {
namespace {

constexpr int kCombineWarps = 4;

__global__ void __launch_bounds__(kCombineWarps * 32) combine_kernel(const __grid_constant__ DecodeParams p) {
  const int b = blockIdx.x;
  const int4 bm = reinterpret_cast<const int4*>(p.batch_meta)[b];
  const int num_splits = bm.z;
  if (num_splits <= 1) return;  // written directly by the main kernel
  const int lane = threadIdx.x % 32;
  const int r = blockIdx.y * kCombineWarps + threadIdx.x / 32;
  if (r >= p.rows) return;

  const float* lse_part = p.lse_accum + int64_t(bm.w) * p.rows + r;
  float m = -INFINITY;
  for (int s = lane; s < num_splits; s += 32) m = fmaxf(m, lse_part[int64_t(s) * p.rows]);
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
  // Every piece empty: the row saw no key.
  const float base = m == -INFINITY ? 0.f : m;
  float sum = 0.f;
  for (int s = lane; s < num_splits; s += 32) sum += expf(lse_part[int64_t(s) * p.rows] - base);
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  const float inv_sum = sum > 0.f ? 1.f / sum : 0.f;

  // Lane owns columns lane*4 + 128*j: each float4 load is coalesced across the warp.
  float4 acc[kDimV / 128];
#pragma unroll
  for (int j = 0; j < kDimV / 128; ++j) acc[j] = make_float4(0.f, 0.f, 0.f, 0.f);
  for (int s = 0; s < num_splits; ++s) {
    const float w = expf(lse_part[int64_t(s) * p.rows] - base) * inv_sum;
    if (w == 0.f) continue;  // also skips empty pieces, whose o is 0 anyway
    const float* o = p.o_accum + (int64_t(bm.w + s) * p.rows + r) * kDimV;
#pragma unroll
    for (int j = 0; j < kDimV / 128; ++j) {
      const float4 v = *reinterpret_cast<const float4*>(o + j * 128 + lane * 4);
      acc[j].x += w * v.x;
      acc[j].y += w * v.y;
      acc[j].z += w * v.z;
      acc[j].w += w * v.w;
    }
  }

  const int tok = r / p.h_q;
  const int head = r % p.h_q;
  __nv_bfloat16* dst = p.out + int64_t(b) * p.out_batch_stride + int64_t(tok) * p.out_token_stride +
                       int64_t(head) * p.out_head_stride;
#pragma unroll
  for (int j = 0; j < kDimV / 128; ++j) {
    __nv_bfloat162 lo = __floats2bfloat162_rn(acc[j].x, acc[j].y);
    __nv_bfloat162 hi = __floats2bfloat162_rn(acc[j].z, acc[j].w);
    uint2 packed;
    packed.x = *reinterpret_cast<uint32_t*>(&lo);
    packed.y = *reinterpret_cast<uint32_t*>(&hi);
    *reinterpret_cast<uint2*>(dst + j * 128 + lane * 4) = packed;
  }
  if (lane == 0) {
    p.lse[int64_t(b) * p.lse_batch_stride + int64_t(tok) * p.lse_token_stride +
          int64_t(head) * p.lse_head_stride] = m == -INFINITY ? -INFINITY : m + logf(sum);
  }
}

}  // namespace

cudaError_t run_combine(const DecodeParams& params, cudaStream_t stream) {
  const dim3 grid(params.batch, (params.rows + kCombineWarps - 1) / kCombineWarps);
  combine_kernel<<<grid, kCombineWarps * 32, 0, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace mla
