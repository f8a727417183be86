// Epilogue of the decode kernel: normalise a thread's two accumulator rows and store them,
// bf16 to `out` for an unsplit sequence, fp32 to the workspace slot for a split one.
#pragma once

#include <cmath>
#include <cstdint>

#include "mla/ptx.cuh"
#include "mla/schedule.cuh"

namespace mla {

constexpr float kLn2 = 0.69314718055994530942f;

// o: the thread's kTiles n8 accumulator tiles in mma/wgmma C layout (rows r0 and r0 + 8; columns
// col0 + 8 * t and the next one). m: running max (exp2 domain); l: full row sums. The thread
// with write_lse stores the rows' LSE.
template <int kTiles>
__device__ __forceinline__ void store_rows(const DecodeParams& p, const SeqWork& w,
                                           const float (&o)[kTiles][4], const float (&m)[2],
                                           const float (&l)[2], bool bad, int r0, int col0,
                                           bool write_lse) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    // A row that saw no key: out = 0, lse = -inf. An unreadable page poisons the sequence.
    float inv = l[h] > 0.f ? 1.f / l[h] : 0.f;
    float lse = l[h] > 0.f ? (m[h] + log2f(l[h])) * kLn2 : -INFINITY;
    if (bad) inv = lse = NAN;

    const int r = r0 + 8 * h;
    if (r >= p.rows) continue;
    const int tok = r / p.h_q;
    const int head = r % p.h_q;
    if (w.num_splits <= 1) {
      __nv_bfloat16* dst = p.out + int64_t(w.batch) * p.out_batch_stride +
                           int64_t(tok) * p.out_token_stride + int64_t(head) * p.out_head_stride;
#pragma unroll
      for (int t = 0; t < kTiles; ++t) {
        *reinterpret_cast<uint32_t*>(dst + col0 + t * 8) =
            ptx::pack_bf16x2(o[t][2 * h] * inv, o[t][2 * h + 1] * inv);
      }
      if (write_lse) {
        p.lse[int64_t(w.batch) * p.lse_batch_stride + int64_t(tok) * p.lse_token_stride +
              int64_t(head) * p.lse_head_stride] = lse;
      }
    } else {
      const int64_t slot_row = int64_t(w.slot) * p.rows + r;
      float* dst = p.o_accum + slot_row * kDimV;
#pragma unroll
      for (int t = 0; t < kTiles; ++t) {
        *reinterpret_cast<float2*>(dst + col0 + t * 8) =
            make_float2(o[t][2 * h] * inv, o[t][2 * h + 1] * inv);
      }
      if (write_lse) p.lse_accum[slot_row] = lse;
    }
  }
}

}  // namespace mla
