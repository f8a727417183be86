// Split-KV combine: merges the fp32 partial results of sequences cut across parts, weighting each
// piece by exp(lse_piece - lse_total). Arch-agnostic.
//
// One CTA per (part, query row). A split sequence is combined by the CTAs of the part where it
// starts: it is that part's last sequence, so the grid is sized by the parts, not the batch, and
// CTAs of parts that start no split sequence leave at once. A small batch over a long context
// splits each sequence into many pieces, so the pieces of one row are spread over the CTA's warps
// (warp w takes pieces w, w + 4, ...) instead of one warp walking them all.
#include <cmath>
#include <cstdint>

#include "mla/api.h"

namespace mla {
namespace {

constexpr int kWarps = 4;
constexpr int kColsPerLane = kDimV / 32;  // 16 floats: four float4 at lane*4 + 128*j

__global__ void __launch_bounds__(kWarps * 32) combine_kernel(const __grid_constant__ DecodeParams p) {
  __shared__ float partial[kWarps - 1][kDimV];
  const int part = blockIdx.x;
  const int r = blockIdx.y;
  const int4 pm = reinterpret_cast<const int4*>(p.part_meta)[part];
  if (pm.x >= pm.y) return;
  const int b = pm.y - 1;
  const int4 bm = reinterpret_cast<const int4*>(p.batch_meta)[b];
  const int num_splits = bm.z;
  if (num_splits <= 1 || bm.y != part) return;  // not split, or combined by its first part

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
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

  float4 acc[kColsPerLane / 4];
#pragma unroll
  for (int j = 0; j < kColsPerLane / 4; ++j) acc[j] = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 2
  for (int s = warp; s < num_splits; s += kWarps) {
    const float w = expf(lse_part[int64_t(s) * p.rows] - base) * inv_sum;
    const float* o = p.o_accum + (int64_t(bm.w + s) * p.rows + r) * kDimV;
#pragma unroll
    for (int j = 0; j < kColsPerLane / 4; ++j) {
      const float4 v = *reinterpret_cast<const float4*>(o + j * 128 + lane * 4);
      // w == 0 for an empty piece, whose o is 0: skip the product so no 0 * inf appears.
      if (w != 0.f) {
        acc[j].x += w * v.x;
        acc[j].y += w * v.y;
        acc[j].z += w * v.z;
        acc[j].w += w * v.w;
      }
    }
  }
  if (warp > 0) {
#pragma unroll
    for (int j = 0; j < kColsPerLane / 4; ++j) {
      *reinterpret_cast<float4*>(&partial[warp - 1][j * 128 + lane * 4]) = acc[j];
    }
  }
  __syncthreads();
  if (warp > 0) return;
#pragma unroll
  for (int j = 0; j < kColsPerLane / 4; ++j) {
#pragma unroll
    for (int w = 0; w < kWarps - 1; ++w) {
      const float4 v = *reinterpret_cast<const float4*>(&partial[w][j * 128 + lane * 4]);
      acc[j].x += v.x;
      acc[j].y += v.y;
      acc[j].z += v.z;
      acc[j].w += v.w;
    }
  }

  const int tok = r / p.h_q;
  const int head = r % p.h_q;
  __nv_bfloat16* dst = p.out + int64_t(b) * p.out_batch_stride + int64_t(tok) * p.out_token_stride +
                       int64_t(head) * p.out_head_stride;
#pragma unroll
  for (int j = 0; j < kColsPerLane / 4; ++j) {
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
  const dim3 grid(params.num_parts, params.rows);
  combine_kernel<<<grid, kWarps * 32, 0, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace mla
