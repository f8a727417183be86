// Split-KV paged MLA decode for up to kN = 16 query rows (16 heads at s_q = 1): "swap AB". The
// page's 64 tokens sit on the wgmma M dimension and the query rows on N, so no MMA work is spent
// on padding rows: S^T = K Q^T (m64 x kN) and O^T += V^T P^T (eight m64 x kN tiles over the 512 V
// dims, V read MN-major from the same TMA page tile). Two warpgroups take alternate pages of the
// part's range, each with its own stage, and merge their softmax states at the end.
#pragma once

#include <cuda.h>

#include <cmath>
#include <cstdint>

#include "mla/epilogue.cuh"
#include "mla/params.h"
#include "mla/ptx.cuh"
#include "mla/schedule.cuh"
#include "mla/softmax.cuh"
#include "mla/wgmma.cuh"
#include "sm90/page_tile.cuh"

namespace mla::sm90::decode_swapab {

constexpr int kWarpGroups = 2;  // warpgroup g processes pages g, g + 2, ... of a range
constexpr int kThreads = kWarpGroups * 128;
constexpr int kVTiles = kDimV / 64;  // m64 tiles of O^T
// Named-barrier syncs per page: tail zeroing, column max (column_reduce), P^T ready, stage free.
constexpr int kBarriersPerPage = 4;

template <int kN>
struct Layout {
  static constexpr int kQAtomBytes = kN * 128;  // one atom column of the Q tile (kN rows)
  static constexpr int kPBytes = kN * 128;      // P^T: kN rows x 64 tokens, bf16
  static constexpr int kOffQ = 0;
  static constexpr int kOffKV = kOffQ + kDimBlocks * kQAtomBytes;  // stage g = warpgroup g's
  static constexpr int kOffP = kOffKV + kWarpGroups * kPageBytes;
  static constexpr int kOffRed = kOffP + kWarpGroups * kPBytes;
  static constexpr int kOffBar = kOffRed + kWarpGroups * 4 * kN * 4;
  static constexpr int kOffFlag = kOffBar + kWarpGroups * 8;
  static constexpr int kSmemBytes = kOffFlag + 16 + kSwizzleAlign;
  // Output staging rows of fp32, padded by 4 floats so the 4 column groups of a warp's stores
  // hit different banks.
  static constexpr int kYPitch = kDimV + 4;

  static_assert(kN % 8 == 0 && kN <= 32, "swap-AB tiles: N = query rows, a multiple of 8");
  static_assert(kOffKV % kSwizzleAlign == 0 && kOffP % kSwizzleAlign == 0, "atom alignment");
  static_assert(kN * kYPitch * 4 <= kPageBytes, "output staging must fit in a stage");
  static_assert((kVTiles * kN / 2 + kN / 2) * 128 * 4 <= kPageBytes,
                "warpgroup merge buffer must fit in a stage");
  static_assert(kSmemBytes <= 232448, "shared memory over the sm_90 limit");
};

// The thread's columns (query rows) are 8 * jn + 2 * (lane % 4) + c for jn < kN / 8, c < 2; its
// accumulator rows (tokens of S^T, dims of O^T) are t0 and t0 + 8, t0 = 16 * warp + lane / 4.
template <int kN>
struct State {
  float m[kN / 8][2];  // running column max, exp2 domain
  float l[kN / 8][2];  // this thread's partial column sums
  float o[kVTiles][kN / 8][4];
};

template <int kN>
__device__ __forceinline__ void wgmma_n(float (&d)[kN / 8][4], uint64_t a, uint64_t b, int acc);
template <>
__device__ __forceinline__ void wgmma_n<16>(float (&d)[2][4], uint64_t a, uint64_t b, int acc) {
  ptx::wgmma_m64n16k16<0, 0>(reinterpret_cast<float(&)[8]>(d), a, b, acc);
}
template <int kN>
__device__ __forceinline__ void wgmma_n_trans_a(float (&d)[kN / 8][4], uint64_t a, uint64_t b);
template <>
__device__ __forceinline__ void wgmma_n_trans_a<16>(float (&d)[2][4], uint64_t a, uint64_t b) {
  ptx::wgmma_m64n16k16<1, 0>(reinterpret_cast<float(&)[8]>(d), a, b, 1);
}

// Reduce a per-thread column value over the warpgroup's 64 rows: lanes sharing lane % 4, then the
// four warps through `red` ([4][kN]). Every thread gets the totals of its columns.
template <int kN, bool kMax>
__device__ __forceinline__ void column_reduce(float (&v)[kN / 8][2], float* red, int warp, int lane,
                                              int bar_id) {
#pragma unroll
  for (int jn = 0; jn < kN / 8; ++jn) {
#pragma unroll
    for (int c = 0; c < 2; ++c) {
#pragma unroll
      for (int off = 4; off < 32; off <<= 1) {
        const float o = __shfl_xor_sync(0xffffffffu, v[jn][c], off);
        v[jn][c] = kMax ? fmaxf(v[jn][c], o) : v[jn][c] + o;
      }
      if (lane < 4) red[warp * kN + 8 * jn + 2 * lane + c] = v[jn][c];
    }
  }
  ptx::named_barrier_sync(bar_id, 128);
#pragma unroll
  for (int jn = 0; jn < kN / 8; ++jn) {
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      const int col = 8 * jn + 2 * (lane & 3) + c;
      float t = red[col];
#pragma unroll
      for (int w = 1; w < 4; ++w) t = kMax ? fmaxf(t, red[w * kN + col]) : t + red[w * kN + col];
      v[jn][c] = t;
    }
  }
}

// One page for one warpgroup: S^T = K Q^T, online softmax along the tokens (M), then
// O^T += V^T P^T.
template <int kN>
__device__ __forceinline__ void process_page(const DecodeParams& p, const SeqWork& w,
                                             uint32_t kv_addr, uint32_t q_addr, uint8_t* sp,
                                             float* red, State<kN>& st, int row_begin,
                                             int page_pos, int warp, int lane, int bar_id) {
  using L = Layout<kN>;
  float s[kN / 8][4];
  ptx::wgmma_fence();
#pragma unroll
  for (int kb = 0; kb < kDimBlocks; ++kb) {
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      wgmma_n<kN>(s, desc_k_major(kv_addr + kb * kTileBytes + kk * 32),
                  desc_k_major(q_addr + kb * L::kQAtomBytes + kk * 32), kb + kk > 0);
    }
  }
  ptx::wgmma_commit();
  ptx::wgmma_wait<0>();
  ptx::fence_regs(reinterpret_cast<float(&)[kN / 2]>(s));

  const int t0 = 16 * warp + (lane >> 2);
  float mx[kN / 8][2];
#pragma unroll
  for (int jn = 0; jn < kN / 8; ++jn) {
#pragma unroll
    for (int c = 0; c < 2; ++c) mx[jn][c] = -INFINITY;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int c = e & 1;
      const int pos = page_pos + t0 + 8 * (e >> 1);
      const int limit = row_limit(p, w, row_begin + 8 * jn + 2 * (lane & 3) + c);
      const float v = pos < limit ? s[jn][e] * p.scale_log2 : -INFINITY;
      s[jn][e] = v;
      mx[jn][c] = fmaxf(mx[jn][c], v);
    }
  }
  column_reduce<kN, true>(mx, red, warp, lane, bar_id);

#pragma unroll
  for (int jn = 0; jn < kN / 8; ++jn) {
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      const float m_new = fmaxf(st.m[jn][c], mx[jn][c]);
      // A column with nothing visible yet keeps base 0 so that exp2(-inf - base) is 0, not NaN.
      const float base = m_new == -INFINITY ? 0.f : m_new;
      const float alpha = exp2f(st.m[jn][c] - base);
      st.m[jn][c] = m_new;
      st.l[jn][c] *= alpha;
#pragma unroll
      for (int i = 0; i < kVTiles; ++i) {
        st.o[i][jn][c] *= alpha;
        st.o[i][jn][c + 2] *= alpha;
      }
      const int col = 8 * jn + 2 * (lane & 3) + c;
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const float pv = exp2f(s[jn][c + 2 * hh] - base);
        st.l[jn][c] += pv;
        const int t = t0 + 8 * hh;
        *reinterpret_cast<__nv_bfloat16*>(sp + sw128_offset(col, t >> 3) + (t & 7) * 2) =
            __float2bfloat16_rn(pv);
      }
    }
  }
  ptx::fence_proxy_async_shared();  // P^T is read by wgmma
  ptx::named_barrier_sync(bar_id, 128);

  ptx::wgmma_fence();
  const uint32_t p_addr = ptx::smem_addr(sp);
#pragma unroll
  for (int i = 0; i < kVTiles; ++i) {
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      wgmma_n_trans_a<kN>(st.o[i], desc_mn_major(kv_addr + i * kTileBytes + kk * 16 * 128),
                          desc_k_major(p_addr + kk * 32));
    }
  }
  ptx::wgmma_commit();
  ptx::wgmma_wait<0>();
  ptx::fence_regs(reinterpret_cast<float(&)[kVTiles * kN / 2]>(st.o));
}

template <int kN>
__global__ void __launch_bounds__(kThreads, 1)
    decode_swapab_kernel(const __grid_constant__ DecodeParams p,
                         const __grid_constant__ CUtensorMap tmap) {
  using L = Layout<kN>;
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = reinterpret_cast<uint8_t*>(
      (reinterpret_cast<uintptr_t>(smem_raw) + kSwizzleAlign - 1) & ~uintptr_t(kSwizzleAlign - 1));
  const int tid = threadIdx.x;
  const int wg = tid / 128;
  const int wtid = tid % 128;  // thread index inside the warpgroup
  const int warp = wtid / 32;  // warp inside the warpgroup
  const int lane = tid % 32;
  const int bar_id = 1 + wg;   // named barrier of this warpgroup
  const int m_tile = blockIdx.x;
  const int part = blockIdx.y;

  uint8_t* sq = smem + L::kOffQ;
  uint8_t* stage = smem + L::kOffKV + wg * kPageBytes;
  uint8_t* sp = smem + L::kOffP + wg * L::kPBytes;
  float* red = reinterpret_cast<float*>(smem + L::kOffRed) + wg * 4 * kN;
  uint64_t* bar = reinterpret_cast<uint64_t*>(smem + L::kOffBar) + wg;
  int* bad = reinterpret_cast<int*>(smem + L::kOffFlag);
  const uint32_t q_addr = ptx::smem_addr(sq);
  const uint32_t kv_addr = ptx::smem_addr(stage);
  // After the page loop, stage 1 carries warpgroup 1's state to warpgroup 0 and stage 0 stages
  // the normalised output rows.
  float* xfer = reinterpret_cast<float*>(smem + L::kOffKV + kPageBytes);
  float* ystage = reinterpret_cast<float*>(smem + L::kOffKV);

  if (wtid == 0) {
    ptx::mbarrier_init(bar, 1);
    ptx::fence_mbarrier_init();
  }
  // Everything above overlaps the metadata kernel (programmatic dependent launch).
  ptx::griddep_wait();
  ptx::griddep_launch_dependents();
  const int4 pm = reinterpret_cast<const int4*>(p.part_meta)[part];
  if (pm.x >= pm.y) return;
  if (tid == 0) *bad = 0;
  __syncthreads();

  uint32_t phase = 0;
  const int row_begin = m_tile * kN;
  for (int b = pm.x; b < pm.y; ++b) {
    const SeqWork w = seq_work(p, part, pm, b);
    const int num_pages = w.page_end - w.page_begin;

    __syncthreads();  // the previous sequence is done with Q, the stages and the flag
    if (wtid == 0 && wg < num_pages) {
      load_page(&tmap, page_id_of(p, w, w.page_begin + wg), stage, bar, bad);
    }
    load_q_async<kN, kThreads>(p, w.batch, row_begin, sq, tid);

    State<kN> st;
#pragma unroll
    for (int jn = 0; jn < kN / 8; ++jn) {
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        st.m[jn][c] = -INFINITY;
        st.l[jn][c] = 0.f;
      }
    }
#pragma unroll
    for (int i = 0; i < kVTiles; ++i) {
#pragma unroll
      for (int jn = 0; jn < kN / 8; ++jn) st.o[i][jn][0] = st.o[i][jn][1] = st.o[i][jn][2] = st.o[i][jn][3] = 0.f;
    }
    ptx::cp_async_wait_all();
    ptx::fence_proxy_async_shared();  // Q is read by wgmma (async proxy)
    __syncthreads();  // Q is in shared memory

    // Both warpgroups run the same number of rounds and so the same sequence of named-barrier
    // syncs; a warpgroup without a page in the last round only takes the barriers. (Uneven
    // counts are legal, since each warpgroup has its own barrier id, but compute-sanitizer's
    // racecheck then reported hazards across the __syncthreads below.)
    const int rounds = (num_pages + kWarpGroups - 1) / kWarpGroups;
    for (int it = 0; it < rounds; ++it) {
      const int j = it * kWarpGroups + wg;
      if (j >= num_pages) {
        for (int k = 0; k < kBarriersPerPage; ++k) ptx::named_barrier_sync(bar_id, 128);
        continue;
      }
      const int page = w.page_begin + j;
      // The refill's block-table entry, read now so that its latency hides behind this page.
      const int next_id =
          wtid == 0 && j + kWarpGroups < num_pages ? page_id_of(p, w, page + kWarpGroups) : -1;
      ptx::mbarrier_wait_parity(bar, phase);
      phase ^= 1;
      const int valid = w.seqlen - page * kPageSize;
      if (valid < kPageSize) zero_tail(stage, valid, wtid, 128);
      ptx::fence_proxy_async_shared();
      ptx::named_barrier_sync(bar_id, 128);  // the tail is zero before wgmma reads the page
      process_page<kN>(p, w, kv_addr, q_addr, sp, red, st, row_begin, page * kPageSize, warp,
                       lane, bar_id);
      ptx::named_barrier_sync(bar_id, 128);  // the warpgroup is done with its stage and P^T
      if (wtid == 0 && j + kWarpGroups < num_pages) {
        load_page(&tmap, next_id, stage, bar, bad);
      }
    }

    // Column sums over each warpgroup, then warpgroup 1 hands (m, l, O) to warpgroup 0 through
    // stage 1: [register][thread] so both sides index it the same way.
    column_reduce<kN, false>(st.l, red, warp, lane, bar_id);
    constexpr int kORegs = kVTiles * kN / 2;
    float* of = reinterpret_cast<float*>(st.o);
    float* mf = reinterpret_cast<float*>(st.m);
    float* lf = reinterpret_cast<float*>(st.l);
    if (wg == 1) {
#pragma unroll
      for (int r = 0; r < kORegs; ++r) xfer[r * 128 + wtid] = of[r];
#pragma unroll
      for (int r = 0; r < kN / 4; ++r) {
        xfer[(kORegs + r) * 128 + wtid] = mf[r];
        xfer[(kORegs + kN / 4 + r) * 128 + wtid] = lf[r];
      }
    }
    __syncthreads();
    if (wg == 0) {
      const bool poisoned = *bad != 0;
      const int t0 = 16 * warp + (lane >> 2);
#pragma unroll
      for (int r = 0; r < kN / 4; ++r) {
        const float m1 = xfer[(kORegs + r) * 128 + wtid];
        const float l1 = xfer[(kORegs + kN / 4 + r) * 128 + wtid];
        const float m = fmaxf(mf[r], m1);
        const float base = m == -INFINITY ? 0.f : m;
        const float a0 = exp2f(mf[r] - base);
        const float a1 = exp2f(m1 - base);
        const float l = lf[r] * a0 + l1 * a1;
        // Column r = (jn, c): registers o[i][jn][c] and o[i][jn][c + 2] of every tile i.
        const int jn = r / 2, c = r % 2;
        float inv = l > 0.f ? 1.f / l : 0.f;
        float lse = l > 0.f ? (m + log2f(l)) * kLn2 : -INFINITY;
        if (poisoned) inv = lse = NAN;
        const int col = 8 * jn + 2 * (lane & 3) + c;
#pragma unroll
        for (int i = 0; i < kVTiles; ++i) {
#pragma unroll
          for (int hh = 0; hh < 2; ++hh) {
            const int reg = (i * (kN / 8) + jn) * 4 + c + 2 * hh;
            const float v = (of[reg] * a0 + xfer[reg * 128 + wtid] * a1) * inv;
            ystage[col * L::kYPitch + 64 * i + t0 + 8 * hh] = v;
          }
        }
        const int rr = row_begin + col;
        if (warp == 0 && lane < 4 && rr < p.rows) {  // these threads hold every column once
          if (w.num_splits <= 1) {
            p.lse[int64_t(w.batch) * p.lse_batch_stride + int64_t(rr / p.h_q) * p.lse_token_stride +
                  int64_t(rr % p.h_q) * p.lse_head_stride] = lse;
          } else {
            p.lse_accum[int64_t(w.slot) * p.rows + rr] = lse;
          }
        }
      }
    }
    __syncthreads();

    // Coalesced copy-out of the staged rows: bf16 to `out`, or fp32 to the workspace slot.
    for (int idx = tid; idx < kN * (kDimV / 8); idx += kThreads) {
      const int row = idx / (kDimV / 8);
      const int c8 = idx % (kDimV / 8);
      const int rr = row_begin + row;
      if (rr >= p.rows) continue;
      const float* y = ystage + row * L::kYPitch + c8 * 8;
      const float4 y0 = *reinterpret_cast<const float4*>(y);
      const float4 y1 = *reinterpret_cast<const float4*>(y + 4);
      if (w.num_splits <= 1) {
        uint4 packed;
        packed.x = ptx::pack_bf16x2(y0.x, y0.y);
        packed.y = ptx::pack_bf16x2(y0.z, y0.w);
        packed.z = ptx::pack_bf16x2(y1.x, y1.y);
        packed.w = ptx::pack_bf16x2(y1.z, y1.w);
        __nv_bfloat16* dst = p.out + int64_t(w.batch) * p.out_batch_stride +
                             int64_t(rr / p.h_q) * p.out_token_stride +
                             int64_t(rr % p.h_q) * p.out_head_stride;
        *reinterpret_cast<uint4*>(dst + c8 * 8) = packed;
      } else {
        float* dst = p.o_accum + (int64_t(w.slot) * p.rows + rr) * kDimV + c8 * 8;
        *reinterpret_cast<float4*>(dst) = y0;
        *reinterpret_cast<float4*>(dst + 4) = y1;
      }
    }
    if (tid == 0) *bad = 0;
    ptx::fence_proxy_async_shared();  // the stages were written generically; TMA writes next
  }
}

}  // namespace mla::sm90::decode_swapab
