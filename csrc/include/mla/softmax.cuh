// Online softmax of the 64-row decode kernel. A row's scores for one page are spread over kSlices
// warpgroups (or held by one), each holding kScoreTiles n8 tiles in wgmma C layout; the row max
// is exchanged through shared memory and the bf16 probabilities land in a 128-byte-swizzled
// [rows x 64 tokens] tile that serves as the A operand of O += P V.
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

struct SoftmaxSlice {
  float* red;      // [kSlices][kRows] row-max exchange
  uint8_t* sp;     // P tile, [kRows x 64] bf16, 128B-swizzled
  int row;         // tile row of the thread's first row (the second is row + 8)
  int slice;       // which slice of the page's tokens this warp holds
  int tok_base;    // first token (in the page) of the slice
  int bar_id;      // named barrier over the warps sharing these rows
  int bar_threads;
};

// The online softmax for one page comes in three steps so that a kernel can overlap them with
// the tensor cores: softmax_rowmax (needs the page's scores), softmax_exp (registers only) and
// store_p (needs the P tile free again); rescale_o applies alpha once the previous O += P V has
// completed.

// Scales the scores into the exp2 domain, masks positions a row may not see (causal limit,
// sequence end), and agrees on the new row max across the kSlices slices through shared memory
// (kSlices = 1: a warpgroup holds whole rows, no exchange).
// Returns per row `base` (the new max, 0 while nothing is visible so that exp2(-inf - base) is 0,
// not NaN) and `alpha` = exp2(m_old - base); updates m and l (l *= alpha).
template <int kRows, int kSlices, int kScoreTiles>
__device__ __forceinline__ void softmax_rowmax(float (&s)[kScoreTiles][4], float (&m)[2],
                                               float (&l)[2], float (&base)[2], float (&alpha)[2],
                                               const int (&limit)[2], int page_pos,
                                               float scale_log2, const SoftmaxSlice& sl, int lane) {
  float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
  for (int t = 0; t < kScoreTiles; ++t) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int pos = page_pos + sl.tok_base + t * 8 + 2 * (lane & 3) + (e & 1);
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
  }
  if constexpr (kSlices > 1) {
    if ((lane & 3) == 0) {
      sl.red[sl.slice * kRows + sl.row] = mx[0];
      sl.red[sl.slice * kRows + sl.row + 8] = mx[1];
    }
    ptx::named_barrier_sync(sl.bar_id, sl.bar_threads);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
#pragma unroll
      for (int c = 0; c < kSlices; ++c) mx[h] = fmaxf(mx[h], sl.red[c * kRows + sl.row + 8 * h]);
    }
  }

#pragma unroll
  for (int h = 0; h < 2; ++h) {
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

// Writes the packed probabilities into the swizzled [kRows x 64] P tile. The caller fences
// (wgmma reads P) and syncs the slices afterwards.
template <int kScoreTiles>
__device__ __forceinline__ void store_p(const uint32_t (&pk)[kScoreTiles][2],
                                        const SoftmaxSlice& sl, int lane) {
#pragma unroll
  for (int t = 0; t < kScoreTiles; ++t) {
    const int col = sl.tok_base + t * 8 + 2 * (lane & 3);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      *reinterpret_cast<uint32_t*>(sl.sp + sw128_offset(sl.row + 8 * h, col >> 3) + (col & 7) * 2) =
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
