// Split-KV paged MLA decode for tiles of 16 or 32 query rows: one CTA = one scheduler part x
// one tile of query rows.
// Pages arrive by bulk copy (TMA engine) on mbarriers, two deep; S = QK^T, the online softmax and
// O += PV run on mma.sync tensor-core tiles (see docs/design.md for the schedule).
#pragma once

#include <cmath>
#include <cstdint>

#include "mla/params.h"
#include "mla/epilogue.cuh"
#include "mla/ptx.cuh"
#include "mla/schedule.cuh"
#include "mla/softmax.cuh"
#include "sm90/decode/traits.h"

namespace mla::sm90::decode {

// Byte offset of 16-byte chunk `chunk` of Q row `row` (1152-byte rows, XOR-swizzled within each
// group of eight chunks): eight consecutive rows read at one chunk hit eight bank groups.
__device__ __forceinline__ uint32_t q_offset(int row, int chunk) {
  return row * kQRowBytes + ((chunk ^ (row & 7)) << 4);
}

// Warp 0 issues the bulk copies of one page: one copy per valid token row (1152 bytes) into a
// padded shared-memory row. Rows past the sequence end are not copied: they keep finite data
// (zeros or an earlier page), so masked probabilities of 0 never meet a NaN in P*V. A page id
// outside the cache (or a page index past the block table) is not read; `bad` makes the
// sequence's output NaN instead of silently wrong.
template <class T>
__device__ __forceinline__ void load_page(const DecodeParams& p, const SeqWork& w, int page,
                                          uint8_t* stage, uint64_t* bar, int* bad, int lane) {
  const int page_id = page_id_of(p, w, page);
  const bool valid = page_id >= 0;
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
    *reinterpret_cast<uint4*>(sq + q_offset(row, chunk)) = v;
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
    ptx::ldmatrix_x4(a, sq_base + q_offset(a_row, 2 * ks + (lane >> 4)));
#pragma unroll
    for (int np = 0; np < T::kScoreTiles / 2; ++np) {
      const int tok = tok_base + np * 16 + ((lane >> 4) << 3) + (lane & 7);
      uint32_t b[4];
      ptx::ldmatrix_x4(b, kv_base + tok * kKvRowPitch + (2 * ks + ((lane >> 3) & 1)) * 16);
      ptx::mma_bf16_16816(s[2 * np], a, b[0], b[1]);
      ptx::mma_bf16_16816(s[2 * np + 1], a, b[2], b[3]);
    }
  }

  const SoftmaxSlice sl{red, sp, rg * 16 + (lane >> 2), cs, tok_base, 1 + rg, T::kGroupThreads};
  online_softmax<T::kRows, T::kColSplit>(s, st.o, st.m, st.l, limit, page_pos, scale_log2, sl,
                                         lane);
  ptx::named_barrier_sync(1 + rg, T::kGroupThreads);

  // O += P V: A = P (16 rows x 64 tokens), B = V rows (token-major = row, so ldmatrix.trans).
  const int v_col_base = cs * T::kVColsPerWarp;
#pragma unroll
  for (int kk = 0; kk < kPageSize / 16; ++kk) {
    uint32_t a[4];
    ptx::ldmatrix_x4(a, sp_base + sw128_offset(a_row, 2 * kk + (lane >> 4)));
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

// Row sums across the row group's warps, then normalise and store (mla/epilogue.cuh).
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

  float l[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    l[h] = 0.f;
#pragma unroll
    for (int c = 0; c < T::kColSplit; ++c) l[h] += red[c * T::kRows + row0 + 8 * h];
  }
  store_rows<T::kOutTiles>(p, w, st.o, st.m, l, bad, m_tile * T::kRows + row0,
                           cs * T::kVColsPerWarp + 2 * (lane & 3), cs == 0 && (lane & 3) == 0);
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
      limit[h] = row_limit(p, w, m_tile * T::kRows + rg * 16 + (lane >> 2) + 8 * h);
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
