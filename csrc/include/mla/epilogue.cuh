// Epilogue of the decode kernel: normalise a thread's two accumulator rows and store them in bf16,
// to `out` for an unsplit sequence and to the workspace slot for a split one, in 16-byte pieces
// that fill whole sectors.
#pragma once

#include <cmath>
#include <cstdint>

#include "mla/ptx.cuh"
#include "mla/schedule.cuh"

namespace mla {

constexpr float kLn2 = 0.69314718055994530942f;

// Index i (0..3) of a, by selects: a runtime index into a register array would go to local memory.
__device__ __forceinline__ uint32_t select4(const uint32_t (&a)[4], int i) {
  const uint32_t lo = (i & 1) ? a[1] : a[0];
  const uint32_t hi = (i & 1) ? a[3] : a[2];
  return (i & 2) ? hi : lo;
}

// o: the thread's kTiles n8 accumulator tiles in wgmma C layout (rows r0 and r0 + 8, r0 = the
// warp's first row + lane / 4; columns col_base + 8 * t + 2 * (lane % 4) and the next one).
// m: the rows' exponent shift (the running max up to kMaxSlack, exp2 domain); l: full row
// sums. The thread with write_lse stores the rows' LSE.
// Destination: `out` for an unsplit sequence; for a split one its workspace slot (o_accum, bf16
// like FlashInfer's split-KV partials; the combine merges them in fp32: docs/perf.md v10).
//
// In each n8 tile a quad holds 16 bytes of a row, half a sector: stored as they are, each warp
// store made 8 partial-sector writes (~7 us for a 64-row tile at the end of a sequence, v10). So
// each block of four tiles is transposed across the quad first (three shuffles): lane q gets all
// 16 bytes of tile 4k + q, and one warp store covers 64 contiguous bytes (two full sectors) of
// each of its 8 rows.
template <int kTiles>
__device__ __forceinline__ void store_rows(const DecodeParams& p, const SeqWork& w,
                                           const float (&o)[kTiles][4], const float (&m)[2],
                                           const float (&l)[2], bool bad, int r0, int col_base,
                                           bool write_lse, int lane) {
  static_assert(kTiles % 4 == 0, "tiles go in blocks of four");
  const int q = lane & 3;
  const bool split = w.num_splits > 1;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    // A row that saw no key: out = 0, lse = -inf. An unreadable page poisons the sequence.
    float inv = l[h] > 0.f ? 1.f / l[h] : 0.f;
    float lse = l[h] > 0.f ? (m[h] + log2f(l[h])) * kLn2 : -INFINITY;
    if (bad) inv = lse = NAN;

    const int r = r0 + 8 * h;
    const bool row_ok = r < w.rows;
    const int64_t slot_row = int64_t(w.slot) * p.rows + r;
    __nv_bfloat16* dst = (split ? p.o_accum + slot_row * kDimV
                                : p.out + int64_t(w.batch) * p.out_batch_stride +
                                      int64_t(w.tok0 + r / p.h_q) * p.out_token_stride +
                                      int64_t(r % p.h_q) * p.out_head_stride) +
                         col_base;
#pragma unroll
    for (int k = 0; k < kTiles / 4; ++k) {
      uint32_t a[4], got[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        a[j] = ptx::pack_bf16x2(o[4 * k + j][2 * h] * inv, o[4 * k + j][2 * h + 1] * inv);
      }
      // got[x]: from lane q ^ x, its 4 bytes of tile 4k + q (column pair q ^ x).
      got[0] = select4(a, q);
#pragma unroll
      for (int x = 1; x < 4; ++x) got[x] = __shfl_xor_sync(0xffffffffu, select4(a, q ^ x), x);
      const uint4 v = make_uint4(select4(got, q), select4(got, q ^ 1), select4(got, q ^ 2),
                                 select4(got, q ^ 3));
      if (row_ok) *reinterpret_cast<uint4*>(dst + (4 * k + q) * 8) = v;
    }
    if (write_lse && row_ok) {
      if (split) {
        p.lse_accum[slot_row] = lse;
      } else {
        p.lse[int64_t(w.batch) * p.lse_batch_stride +
              int64_t(w.tok0 + r / p.h_q) * p.lse_token_stride +
              int64_t(r % p.h_q) * p.lse_head_stride] = lse;
      }
    }
  }
}

}  // namespace mla
