// Split-KV combine: merges the fp32 partial results of sequences cut across parts, weighting each
// piece by exp(lse_piece - lse_total). Arch-agnostic.
//
// A split sequence is combined by the CTAs of the part where it starts: it is that part's last
// sequence, so the grid is (parts x row blocks), not the batch, and CTAs of parts that start no
// split sequence leave at once. Each CTA has four warps over kRowsPerCta rows: a small batch over
// a long context cuts each sequence into many pieces, so there one row's pieces are spread over
// the four warps (warp w takes pieces w, w + 4, ...); a large batch has few pieces per sequence,
// so there each warp takes a whole row and the grid holds a quarter as many (mostly empty) CTAs.
// Launched with PDL: the CTAs start while the decode kernel finishes.
#include <cmath>
#include <cstdint>

#include "mla/api.h"
#include "mla/launch.h"
#include "mla/ptx.cuh"

namespace mla {
namespace {

constexpr int kWarps = 4;
constexpr int kColsPerLane = kDimV / 32;  // 16 floats: four float4 at lane*4 + 128*j

template <int kRowsPerCta>
__global__ void __launch_bounds__(kWarps * 32) combine_kernel(const __grid_constant__ DecodeParams p) {
  constexpr int kWarpsPerRow = kWarps / kRowsPerCta;
  __shared__ float partial[kWarps][kDimV];
  ptx::griddep_wait();
  const int part = blockIdx.x;
  const int4 pm = reinterpret_cast<const int4*>(p.part_meta)[part];
  if (pm.x >= pm.y) return;
  const int b = pm.y - 1;
  const int4 bm = reinterpret_cast<const int4*>(p.batch_meta)[b];
  const int num_splits = bm.z;
  if (num_splits <= 1 || bm.y != part) return;  // not split, or combined by its first part

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int r = blockIdx.y * kRowsPerCta + warp / kWarpsPerRow;
  const int sub = warp % kWarpsPerRow;  // this warp's share of the row's pieces
  const bool active = r < p.rows;

  float m = -INFINITY, sum = 0.f;
  float4 acc[kColsPerLane / 4];
#pragma unroll
  for (int j = 0; j < kColsPerLane / 4; ++j) acc[j] = make_float4(0.f, 0.f, 0.f, 0.f);
  if (active) {
    const float* lse_part = p.lse_accum + int64_t(bm.w) * p.rows + r;
    for (int s = lane; s < num_splits; s += 32) m = fmaxf(m, lse_part[int64_t(s) * p.rows]);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
    // Every piece empty: the row saw no key.
    const float base = m == -INFINITY ? 0.f : m;
    for (int s = lane; s < num_splits; s += 32) sum += expf(lse_part[int64_t(s) * p.rows] - base);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    const float inv_sum = sum > 0.f ? 1.f / sum : 0.f;

    // Unrolled so that several pieces' loads are in flight at once.
#pragma unroll 4
    for (int s = sub; s < num_splits; s += kWarpsPerRow) {
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
  }
  if constexpr (kWarpsPerRow > 1) {
    if (sub > 0) {
#pragma unroll
      for (int j = 0; j < kColsPerLane / 4; ++j) {
        *reinterpret_cast<float4*>(&partial[warp][j * 128 + lane * 4]) = acc[j];
      }
    }
    __syncthreads();
    if (sub > 0) return;
#pragma unroll
    for (int j = 0; j < kColsPerLane / 4; ++j) {
#pragma unroll
      for (int w = 1; w < kWarpsPerRow; ++w) {
        const float4 v = *reinterpret_cast<const float4*>(&partial[warp + w][j * 128 + lane * 4]);
        acc[j].x += v.x;
        acc[j].y += v.y;
        acc[j].z += v.z;
        acc[j].w += v.w;
      }
    }
  }
  if (!active) return;

  const int tok = r / p.h_q;
  const int head = r % p.h_q;
  __nv_bfloat16* dst = p.out + int64_t(b) * p.out_batch_stride + int64_t(tok) * p.out_token_stride +
                       int64_t(head) * p.out_head_stride;
#pragma unroll
  for (int j = 0; j < kColsPerLane / 4; ++j) {
    uint2 packed;
    packed.x = ptx::pack_bf16x2(acc[j].x, acc[j].y);
    packed.y = ptx::pack_bf16x2(acc[j].z, acc[j].w);
    *reinterpret_cast<uint2*>(dst + j * 128 + lane * 4) = packed;
  }
  if (lane == 0) {
    p.lse[int64_t(b) * p.lse_batch_stride + int64_t(tok) * p.lse_token_stride +
          int64_t(head) * p.lse_head_stride] = m == -INFINITY ? -INFINITY : m + logf(sum);
  }
}

}  // namespace

cudaError_t run_combine(const DecodeParams& params, cudaStream_t stream) {
  // Pieces per split sequence are about num_parts / batch + 1: spread them over warps when many.
  const bool many_pieces = params.num_parts >= 8 * params.batch;
  if (many_pieces) {
    return launch_pdl(combine_kernel<1>, dim3(params.num_parts, params.rows), dim3(kWarps * 32), 0,
                      stream, params);
  }
  const int row_blocks = (params.rows + kWarps - 1) / kWarps;
  return launch_pdl(combine_kernel<kWarps>, dim3(params.num_parts, row_blocks), dim3(kWarps * 32),
                    0, stream, params);
}

}  // namespace mla
