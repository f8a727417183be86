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

// 2^x by one MUFU.EX2 (results below 2^-126 flush to 0). exp2f wraps the same instruction in a
// range fix-up of about three more per call, a third of the softmax's instructions (v11).
__device__ __forceinline__ float ex2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// A row's running max is raised only when a page's max exceeds it by more than this (log2
// units). The max is only the shift of the exponentials, so any value works as long as P, l and
// O all use the same one: P stays at most 2^8 (bf16 keeps its relative precision at any
// magnitude; l and O are fp32), and alpha is exactly 1 unless a page raises the max by more than
// that, which after a row's first pages is rare, so the O rescales are mostly skipped.
constexpr float kMaxSlack = 8.f;

// Masks positions a row may not see (causal limit, sequence end; only on a page that crosses a
// limit of one of the warp's rows, a warp-uniform test) and updates the row max (the four lanes
// of a quad hold a row's columns). The scores stay unscaled: the max of the raw scores times
// scale_log2 is the max in the exp2 domain because the op checks softmax_scale > 0, and
// softmax_exp applies the scale in its FFMA. Returns per row `base` (the max in the exp2 domain,
// 0 while nothing is visible so that exp2(-inf - base) is 0, not NaN) and `alpha` = exp2(m_old -
// base), exactly 1 when the max is kept; updates m and l (l *= alpha).
template <int kScoreTiles>
__device__ __forceinline__ void softmax_rowmax(float (&s)[kScoreTiles][4], float (&m)[2],
                                               float (&l)[2], float (&base)[2], float (&alpha)[2],
                                               const int (&limit)[2], int page_pos,
                                               float scale_log2, int lane) {
  float mx[2] = {-INFINITY, -INFINITY};
  const bool open = __all_sync(0xffffffffu, page_pos + kScoreTiles * 8 <= min(limit[0], limit[1]));
  if (open) {
#pragma unroll
    for (int t = 0; t < kScoreTiles; ++t) {
#pragma unroll
      for (int e = 0; e < 4; ++e) mx[e >> 1] = fmaxf(mx[e >> 1], s[t][e]);
    }
  } else {
#pragma unroll
    for (int t = 0; t < kScoreTiles; ++t) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int pos = page_pos + t * 8 + 2 * (lane & 3) + (e & 1);
        const int h = e >> 1;
        const float v = pos < limit[h] ? s[t][e] : -INFINITY;
        s[t][e] = v;
        mx[h] = fmaxf(mx[h], v);
      }
    }
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
    mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
    const float page_max = mx[h] * scale_log2;
    const float m_new = page_max > m[h] + kMaxSlack ? page_max : m[h];
    base[h] = m_new == -INFINITY ? 0.f : m_new;
    alpha[h] = m_new == m[h] ? 1.f : ex2_approx(m[h] - base[h]);
    m[h] = m_new;
    l[h] *= alpha[h];
  }
}

// p = exp2(s * scale_log2 - base) as bf16 pairs in registers (pk[t][h]: row h, columns
// 2 * (lane % 4) + 0/1 of n8 tile t); the fp32 values go into the row sums l.
template <int kScoreTiles>
__device__ __forceinline__ void softmax_exp(const float (&s)[kScoreTiles][4], const float (&base)[2],
                                            float scale_log2, float (&l)[2],
                                            uint32_t (&pk)[kScoreTiles][2]) {
#pragma unroll
  for (int t = 0; t < kScoreTiles; ++t) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float p0 = ex2_approx(fmaf(s[t][2 * h], scale_log2, -base[h]));
      const float p1 = ex2_approx(fmaf(s[t][2 * h + 1], scale_log2, -base[h]));
      l[h] += p0 + p1;
      pk[t][h] = ptx::pack_bf16x2(p0, p1);
    }
  }
}

// Writes the warp's packed probabilities (rows row_base .. row_base + 15) into the swizzled
// [rows x 64 tokens] P tile at shared address sp by stmatrix: n8 tile t of rows 8h .. 8h + 7 is
// one 8x8 matrix (register pk[t][h] of every lane) and one 16-byte chunk per row, four per
// instruction, 8 instructions for a page instead of 32 scattered 4-byte stores (v12). The
// caller fences (wgmma reads P) and syncs afterwards.
template <int kScoreTiles>
__device__ __forceinline__ void store_p(const uint32_t (&pk)[kScoreTiles][2], uint32_t sp,
                                        int row_base, int lane) {
  static_assert(kScoreTiles % 2 == 0, "an x4 stmatrix stores two n8 tiles");
  const int k = lane >> 3;  // the matrix whose row this lane addresses
  const int row = row_base + 8 * (k & 1) + (lane & 7);
#pragma unroll
  for (int i = 0; i < kScoreTiles / 2; ++i) {
    ptx::stmatrix_x4(sp + sw128_offset(row, 2 * i + (k >> 1)), pk[2 * i][0], pk[2 * i][1],
                     pk[2 * i + 1][0], pk[2 * i + 1][1]);
  }
}

// o *= alpha per row. alpha is exactly 1 while a row keeps its max (kMaxSlack), so a warp whose
// rows all kept theirs skips the multiplies (the result is the same bit for bit).
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
