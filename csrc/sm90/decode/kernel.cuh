// Split-KV paged MLA decode, main kernel: one CTA = one scheduler part x one tile of query rows.
// Pages arrive by bulk copy (TMA engine) on mbarriers, two deep; S = QK^T, the online softmax and
// O += PV run on mma.sync tensor-core tiles (see docs/design.md for the schedule).
#pragma once

#include <cmath>
#include <cstdint>

#include "mla/params.h"
#include "mla/ptx.cuh"
#include "sm90/decode/traits.h"

namespace mla::sm90::decode {

constexpr float kLn2 = 0.69314718055994530942f;

// Byte offset of 16-byte chunk `chunk` of row `row` in an XOR-swizzled tile of `row_bytes` rows:
// eight consecutive rows read at the same chunk land in eight different bank groups.
__device__ __forceinline__ uint32_t swizzled(int row, int chunk, int row_bytes) {
  return row * row_bytes + ((chunk ^ (row & 7)) << 4);
}

// Per-sequence range of pages this part processes, and where its result goes.
struct SeqWork {
  int batch;
  int seqlen;
  int page_begin, page_end;  // [begin, end) in the sequence's pages
  int num_splits;
  int slot;  // workspace slot of this part's piece when num_splits > 1
};

__device__ __forceinline__ SeqWork seq_work(const DecodeParams& p, int part, int4 pm, int b) {
  const int4 bm = reinterpret_cast<const int4*>(p.batch_meta)[b];
  SeqWork w;
  w.batch = b;
  w.seqlen = max(p.seqlens[b], 0);
  const int num_pages = (w.seqlen + kPageSize - 1) / kPageSize;
  const int first = bm.y;
  w.num_splits = bm.z;
  const int last = first + w.num_splits - 1;
  // Parts strictly inside a sequence's range cover whole units; the first and last part of a
  // sequence own its start and end (docs/design.md).
  const int lo = part == first ? 0 : pm.z - bm.x;
  const int hi = part == last ? num_pages : pm.w - bm.x;
  w.page_begin = min(max(lo, 0), num_pages);
  w.page_end = min(max(hi, w.page_begin), num_pages);
  w.slot = bm.w + (part - first);
  return w;
}

// Warp 0 issues the bulk copies of one page: one copy per valid token row (1152 bytes) into a
// padded shared-memory row. Rows past the sequence end are not copied: they keep finite data
// (zeros or an earlier page), so masked probabilities of 0 never meet a NaN in P*V. A page id
// outside the cache (or a page index past the block table) is not read; `bad` makes the
// sequence's output NaN instead of silently wrong.
template <class T>
__device__ __forceinline__ void load_page(const DecodeParams& p, const SeqWork& w, int page,
                                          uint8_t* stage, uint64_t* bar, int* bad, int lane) {
  int page_id = -1;
  if (page < p.max_pages) {
    page_id = p.block_table[int64_t(w.batch) * p.block_table_stride + page];
  }
  const bool valid = page_id >= 0 && page_id < p.num_pages;
  const int rows = valid ? min(kPageSize, w.seqlen - page * kPageSize) : 0;
  if (lane == 0) {
    if (!valid) *bad = 1;
    ptx::mbarrier_arrive_expect_tx(bar, rows * kKvRowBytes);
  }
  __syncwarp();
  const __nv_bfloat16* src = p.kv + int64_t(page_id) * p.kv_page_stride;
  for (int r = lane; r < rows; r += 32) {
    ptx::bulk_copy_g2s(stage + r * kKvRowPitch, src + int64_t(r) * p.kv_token_stride, kKvRowBytes,
                       bar);
  }
}

// Q rows of this tile into swizzled shared memory; rows past s_q * h_q are zero.
template <class T>
__device__ __forceinline__ void load_q(const DecodeParams& p, int b, int m_tile, uint8_t* sq,
                                       int tid) {
  constexpr int kChunks = kQRowBytes / 16;
  for (int idx = tid; idx < T::kRows * kChunks; idx += T::kThreads) {
    const int row = idx / kChunks;
    const int chunk = idx % kChunks;
    const int r = m_tile * T::kRows + row;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (r < p.rows) {
      const int tok = r / p.h_q;
      const int head = r % p.h_q;
      const __nv_bfloat16* src = p.q + int64_t(b) * p.q_batch_stride +
                                 int64_t(tok) * p.q_token_stride + int64_t(head) * p.q_head_stride;
      v = *reinterpret_cast<const uint4*>(src + chunk * 8);
    }
    *reinterpret_cast<uint4*>(sq + swizzled(row, chunk, kQRowBytes)) = v;
  }
}

// Online-softmax state of the two query rows (lane/4 and lane/4 + 8) a thread holds.
template <class T>
struct RowState {
  float m[2];  // running max, exp2 domain
  float l[2];  // this thread's partial row sum (its S columns only)
  float o[T::kOutTiles][4];
};

// One page: S = Q K^T for this warp's tokens, softmax update shared across the row group, then
// O += P V for this warp's V columns.
template <class T>
__device__ __forceinline__ void process_page(const uint8_t* sq, const uint8_t* kv, uint8_t* sp,
                                             float* red, RowState<T>& st, const int (&limit)[2],
                                             int page_pos, float scale_log2, int rg, int cs,
                                             int lane) {
  const int tok_base = cs * T::kTokensPerWarp;
  const uint32_t sq_base = ptx::smem_addr(sq);
  const uint32_t kv_base = ptx::smem_addr(kv);
  const uint32_t sp_base = ptx::smem_addr(sp);

  // S = Q K^T: A = 16 Q rows (ldmatrix), B = K rows of this warp's tokens (token-major = col).
  float s[T::kScoreTiles][4];
#pragma unroll
  for (int t = 0; t < T::kScoreTiles; ++t) s[t][0] = s[t][1] = s[t][2] = s[t][3] = 0.f;
  const int a_row = rg * 16 + (lane & 15);
#pragma unroll 4
  for (int ks = 0; ks < T::kKSteps; ++ks) {
    uint32_t a[4];
    ptx::ldmatrix_x4(a, sq_base + swizzled(a_row, 2 * ks + (lane >> 4), kQRowBytes));
#pragma unroll
    for (int np = 0; np < T::kScoreTiles / 2; ++np) {
      const int tok = tok_base + np * 16 + ((lane >> 4) << 3) + (lane & 7);
      uint32_t b[4];
      ptx::ldmatrix_x4(b, kv_base + tok * kKvRowPitch + (2 * ks + ((lane >> 3) & 1)) * 16);
      ptx::mma_bf16_16816(s[2 * np], a, b[0], b[1]);
      ptx::mma_bf16_16816(s[2 * np + 1], a, b[2], b[3]);
    }
  }

  // Scale into the exp2 domain and mask positions a row may not see (past its causal limit or
  // the sequence end).
  float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
  for (int t = 0; t < T::kScoreTiles; ++t) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int pos = page_pos + tok_base + t * 8 + 2 * (lane & 3) + (e & 1);
      const int h = e >> 1;
      const float v = pos < limit[h] ? s[t][e] * scale_log2 : -INFINITY;
      s[t][e] = v;
      mx[h] = fmaxf(mx[h], v);
    }
  }
  // Row max: within the quad, then across the row group's warps through shared memory.
  const int row0 = rg * 16 + (lane >> 2);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
    mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
  }
  if ((lane & 3) == 0) {
    red[cs * T::kRows + row0] = mx[0];
    red[cs * T::kRows + row0 + 8] = mx[1];
  }
  ptx::named_barrier_sync(1 + rg, T::kGroupThreads);
  float base[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float m_new = st.m[h];
#pragma unroll
    for (int c = 0; c < T::kColSplit; ++c) m_new = fmaxf(m_new, red[c * T::kRows + row0 + 8 * h]);
    // A row with nothing visible yet keeps base 0 so that exp2(-inf - base) is 0, not NaN.
    base[h] = m_new == -INFINITY ? 0.f : m_new;
    const float alpha = exp2f(st.m[h] - base[h]);
    st.m[h] = m_new;
    st.l[h] *= alpha;
#pragma unroll
    for (int t = 0; t < T::kOutTiles; ++t) {
      st.o[t][2 * h] *= alpha;
      st.o[t][2 * h + 1] *= alpha;
    }
  }

  // P = exp2(S - max) as bf16 into the row group's shared tile, which every warp of the group
  // reads whole as the A operand of P V.
#pragma unroll
  for (int t = 0; t < T::kScoreTiles; ++t) {
    const int col = tok_base + t * 8 + 2 * (lane & 3);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float p0 = exp2f(s[t][2 * h] - base[h]);
      const float p1 = exp2f(s[t][2 * h + 1] - base[h]);
      st.l[h] += p0 + p1;
      const int row = row0 + 8 * h;
      *reinterpret_cast<uint32_t*>(sp + swizzled(row, col >> 3, kPageSize * 2) + (col & 7) * 2) =
          ptx::pack_bf16x2(p0, p1);
    }
  }
  ptx::named_barrier_sync(1 + rg, T::kGroupThreads);

  // O += P V: A = P (16 rows x 64 tokens), B = V rows (token-major = row, so ldmatrix.trans).
  const int v_col_base = cs * T::kVColsPerWarp;
#pragma unroll
  for (int kk = 0; kk < kPageSize / 16; ++kk) {
    uint32_t a[4];
    ptx::ldmatrix_x4(a, sp_base + swizzled(a_row, 2 * kk + (lane >> 4), kPageSize * 2));
    const int v_row = kk * 16 + (((lane >> 3) & 1) << 3) + (lane & 7);
#pragma unroll
    for (int np = 0; np < T::kOutTiles / 2; ++np) {
      const int col = v_col_base + np * 16 + ((lane >> 4) << 3);
      uint32_t b[4];
      ptx::ldmatrix_x4_trans(b, kv_base + v_row * kKvRowPitch + col * 2);
      ptx::mma_bf16_16816(st.o[2 * np], a, b[0], b[1]);
      ptx::mma_bf16_16816(st.o[2 * np + 1], a, b[2], b[3]);
    }
  }
}

// Normalise and store: bf16 to `out` when the sequence is not split, fp32 to the workspace
// slot otherwise.
template <class T>
__device__ __forceinline__ void write_result(const DecodeParams& p, const SeqWork& w,
                                             RowState<T>& st, float* red, bool bad, int m_tile,
                                             int rg, int cs, int lane) {
  const int row0 = rg * 16 + (lane >> 2);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    st.l[h] += __shfl_xor_sync(0xffffffffu, st.l[h], 1);
    st.l[h] += __shfl_xor_sync(0xffffffffu, st.l[h], 2);
  }
  if ((lane & 3) == 0) {
    red[cs * T::kRows + row0] = st.l[0];
    red[cs * T::kRows + row0 + 8] = st.l[1];
  }
  ptx::named_barrier_sync(1 + rg, T::kGroupThreads);

#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float l = 0.f;
#pragma unroll
    for (int c = 0; c < T::kColSplit; ++c) l += red[c * T::kRows + row0 + 8 * h];
    // A row that saw no key: out = 0, lse = -inf.
    float inv = l > 0.f ? 1.f / l : 0.f;
    float lse = l > 0.f ? (st.m[h] + log2f(l)) * kLn2 : -INFINITY;
    if (bad) inv = lse = NAN;

    const int r = m_tile * T::kRows + row0 + 8 * h;
    if (r >= p.rows) continue;
    const int tok = r / p.h_q;
    const int head = r % p.h_q;
    const int col0 = cs * T::kVColsPerWarp + 2 * (lane & 3);
    if (w.num_splits <= 1) {
      __nv_bfloat16* dst = p.out + int64_t(w.batch) * p.out_batch_stride +
                           int64_t(tok) * p.out_token_stride + int64_t(head) * p.out_head_stride;
#pragma unroll
      for (int t = 0; t < T::kOutTiles; ++t) {
        *reinterpret_cast<uint32_t*>(dst + col0 + t * 8) =
            ptx::pack_bf16x2(st.o[t][2 * h] * inv, st.o[t][2 * h + 1] * inv);
      }
      if (cs == 0 && (lane & 3) == 0) {
        p.lse[int64_t(w.batch) * p.lse_batch_stride + int64_t(tok) * p.lse_token_stride +
              int64_t(head) * p.lse_head_stride] = lse;
      }
    } else {
      const int64_t slot_row = int64_t(w.slot) * p.rows + r;
      float* dst = p.o_accum + slot_row * kDimV;
#pragma unroll
      for (int t = 0; t < T::kOutTiles; ++t) {
        *reinterpret_cast<float2*>(dst + col0 + t * 8) =
            make_float2(st.o[t][2 * h] * inv, st.o[t][2 * h + 1] * inv);
      }
      if (cs == 0 && (lane & 3) == 0) p.lse_accum[slot_row] = lse;
    }
  }
}

template <class T>
__global__ void __launch_bounds__(T::kThreads, 1) decode_main_kernel(const __grid_constant__ DecodeParams p) {
  extern __shared__ __align__(128) uint8_t smem[];
  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int rg = warp / T::kColSplit;  // row group: 16 query rows
  const int cs = warp % T::kColSplit;  // which tokens (for S) and V columns (for O) this warp owns
  const int m_tile = blockIdx.x;       // row tiles fastest: CTAs sharing KV pages run together
  const int part = blockIdx.y;

  const int4 pm = reinterpret_cast<const int4*>(p.part_meta)[part];
  if (pm.x >= pm.y) return;  // part without work (the whole CTA leaves together)

  uint8_t* sq = smem + T::kOffQ;
  uint8_t* skv = smem + T::kOffKV;
  uint8_t* sp = smem + T::kOffP;
  float* red = reinterpret_cast<float*>(smem + T::kOffRed);
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem + T::kOffBar);
  int* bad = reinterpret_cast<int*>(smem + T::kOffFlag);

  // KV rows that are never copied must hold finite values (see load_page): zero them once.
  for (int i = tid; i < kStages * T::kStageBytes / 16; i += T::kThreads) {
    reinterpret_cast<uint4*>(skv)[i] = make_uint4(0, 0, 0, 0);
  }
  if (tid == 0) {
    for (int s = 0; s < kStages; ++s) ptx::mbarrier_init(&bars[s], 1);
  }
  ptx::fence_proxy_async_shared();
  __syncthreads();

  uint32_t phase = 0;  // bit s: parity of the next completion of stage s
  int issued = 0;      // pages issued so far by this CTA: page n uses stage n % kStages

  for (int b = pm.x; b < pm.y; ++b) {
    const SeqWork w = seq_work(p, part, pm, b);
    const int num_pages = w.page_end - w.page_begin;

    __syncthreads();  // the previous sequence is done with Q, P and the reduction buffer
    if (warp == 0) {
      if (lane == 0) *bad = 0;
      __syncwarp();
      for (int j = 0; j < kStages && j < num_pages; ++j) {
        const int s = (issued + j) % kStages;
        load_page<T>(p, w, w.page_begin + j, skv + s * T::kStageBytes, &bars[s], bad, lane);
      }
    }
    load_q<T>(p, w.batch, m_tile, sq, tid);

    // Visible range of the two rows this thread holds (causal: token i sees < L - s_q + i + 1).
    int limit[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = m_tile * T::kRows + rg * 16 + (lane >> 2) + 8 * h;
      const int tok = r / p.h_q;
      limit[h] = r >= p.rows ? 0 : (p.causal ? w.seqlen - p.s_q + tok + 1 : w.seqlen);
    }
    RowState<T> st;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      st.m[h] = -INFINITY;
      st.l[h] = 0.f;
    }
#pragma unroll
    for (int t = 0; t < T::kOutTiles; ++t) st.o[t][0] = st.o[t][1] = st.o[t][2] = st.o[t][3] = 0.f;
    __syncthreads();  // Q is in shared memory

    for (int j = 0; j < num_pages; ++j) {
      const int s = (issued + j) % kStages;
      ptx::mbarrier_wait_parity(&bars[s], (phase >> s) & 1);
      phase ^= 1u << s;
      process_page<T>(sq, skv + s * T::kStageBytes, sp, red, st, limit,
                      (w.page_begin + j) * kPageSize, p.scale_log2, rg, cs, lane);
      __syncthreads();  // every warp is done with stage s: refill it
      if (warp == 0 && j + kStages < num_pages) {
        load_page<T>(p, w, w.page_begin + j + kStages, skv + s * T::kStageBytes, &bars[s], bad,
                     lane);
      }
    }
    issued += num_pages;

    write_result<T>(p, w, st, red, *bad != 0, m_tile, rg, cs, lane);
  }
}

}  // namespace mla::sm90::decode
