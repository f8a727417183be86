// Online softmax of the 64-row decode kernel: a warpgroup holds whole rows of a page's scores as
// kScoreTiles n8 tiles in wgmma C layout; the bf16 probabilities stay in registers (the A operand
// of the warpgroup's own O += P V) and land in a 128-byte-swizzled [rows x 64 tokens] tile (the A
// operand of the other warpgroup's).
#pragma once

#include <cmath>
#include <cstdint>

#include "mla/ptx.cuh"

namespace mla {

// Byte offset of 16-byte chunk `chunk` of row `row` in a tile of 128-byte rows with the 128B
// swizzle (chunk ^ row % 8): the layout TMA writes and wgmma descriptors read.
__device__ __forceinline__ uint32_t sw128_offset(int row, int chunk) {
  return row * 128 + ((chunk ^ (row & 7)) << 4);
}

// The online softmax for one page comes in three steps so that a kernel can overlap them with
// the tensor cores: softmax_rowmax (needs the page's scores), softmax_exp (registers only) and
// store_p (needs the P tile free again); rescale_o applies alpha once the previous O += P V has
// completed.

// Scales the scores into the exp2 domain, masks positions a row may not see (causal limit,
// sequence end) and takes the new row max (the four lanes of a quad hold a row's columns).
// Returns per row `base` (the new max, 0 while nothing is visible so that exp2(-inf - base) is 0,
// not NaN) and `alpha` = exp2(m_old - base); updates m and l (l *= alpha).
template <int kScoreTiles>
__device__ __forceinline__ void softmax_rowmax(float (&s)[kScoreTiles][4], float (&m)[2],
                                               float (&l)[2], float (&base)[2], float (&alpha)[2],
                                               const int (&limit)[2], int page_pos,
                                               float scale_log2, int lane) {
  float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
  for (int t = 0; t < kScoreTiles; ++t) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int pos = page_pos + t * 8 + 2 * (lane & 3) + (e & 1);
      const int h = e >> 1;
      const float v = pos < limit[h] ? s[t][e] * scale_log2 : -INFINITY;
      s[t][e] = v;
      mx[h] = fmaxf(mx[h], v);
    }
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
    mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
    const float m_new = fmaxf(m[h], mx[h]);
    base[h] = m_new == -INFINITY ? 0.f : m_new;
    alpha[h] = exp2f(m[h] - base[h]);
    m[h] = m_new;
    l[h] *= alpha[h];
  }
}

// p = exp2(s - base) as bf16 pairs in registers (pk[t][h]: row h, columns 2 * (lane % 4) + 0/1
// of n8 tile t); the fp32 values go into the row sums l.
template <int kScoreTiles>
__device__ __forceinline__ void softmax_exp(const float (&s)[kScoreTiles][4], const float (&base)[2],
                                            float (&l)[2], uint32_t (&pk)[kScoreTiles][2]) {
#pragma unroll
  for (int t = 0; t < kScoreTiles; ++t) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float p0 = exp2f(s[t][2 * h] - base[h]);
      const float p1 = exp2f(s[t][2 * h + 1] - base[h]);
      l[h] += p0 + p1;
      pk[t][h] = ptx::pack_bf16x2(p0, p1);
    }
  }
}

// Writes the packed probabilities of the thread's rows `row` and `row + 8` into the swizzled
// [rows x 64 tokens] P tile at sp. The caller fences (wgmma reads P) and syncs afterwards.
template <int kScoreTiles>
__device__ __forceinline__ void store_p(const uint32_t (&pk)[kScoreTiles][2], uint8_t* sp, int row,
                                        int lane) {
#pragma unroll
  for (int t = 0; t < kScoreTiles; ++t) {
    const int col = t * 8 + 2 * (lane & 3);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      *reinterpret_cast<uint32_t*>(sp + sw128_offset(row + 8 * h, col >> 3) + (col & 7) * 2) =
          pk[t][h];
    }
  }
}

// o *= alpha per row. Once a row's max has settled alpha is exactly 1, so a warp whose rows all
// kept their max skips the multiplies (the result is the same bit for bit).
template <int kOutTiles>
__device__ __forceinline__ void rescale_o(float (&o)[kOutTiles][4], const float (&alpha)[2]) {
  if (!__any_sync(0xffffffffu, alpha[0] != 1.f || alpha[1] != 1.f)) return;
#pragma unroll
  for (int t = 0; t < kOutTiles; ++t) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      o[t][2 * h] *= alpha[h];
      o[t][2 * h + 1] *= alpha[h];
    }
  }
}

}  // namespace mla
