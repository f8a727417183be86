// Split-KV paged MLA decode for tiles of 64 query rows on Hopper tensor cores (wgmma). Pages land
// 128B-swizzled by TMA, so one shared-memory copy serves as the K operand of S = Q K^T (K-major)
// and as the V operand of O += P V (MN-major). Two warpgroups: each computes S for half the
// page's tokens, they exchange row maxima, and each accumulates O for half of the 512 V columns.
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
#include "sm90/decode/config.h"
#include "sm90/page_tile.cuh"

namespace mla::sm90::decode {

constexpr int kBarSoftmax = 1;  // named barrier over both warpgroups (id 0 is __syncthreads)

// S = Q K^T for this warpgroup's 32 tokens of the page at kv_addr: 9 atom columns x 4 k16 steps.
__device__ __forceinline__ void issue_s(float (&sacc)[kTokensPerWg / 8][4], uint32_t sq_addr,
                                        uint32_t kv_addr, int wg) {
#pragma unroll
  for (int kb = 0; kb < kDimBlocks; ++kb) {
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      const uint64_t da = desc_k_major(sq_addr + kb * kTileBytes + kk * 32);
      const uint64_t db = desc_k_major(kv_addr + kb * kTileBytes + wg * kTokensPerWg * 128 + kk * 32);
      ptx::wgmma_m64n32k16<0, 0>(reinterpret_cast<float(&)[kTokensPerWg / 2]>(sacc), da, db,
                                 kb + kk > 0);
    }
  }
}

// O += P V for this warpgroup's 256 V columns (4 atom columns), 4 k16 steps of 16 tokens.
__device__ __forceinline__ void issue_pv(float (&o)[kVColsPerWg / 8][4], uint32_t sp_addr,
                                         uint32_t kv_addr, int wg) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    const uint64_t da = desc_k_major(sp_addr + kk * 32);
    const uint64_t db = desc_mn_major(kv_addr + wg * 4 * kTileBytes + kk * 16 * 128);
    ptx::wgmma_m64n256k16<0, 1>(reinterpret_cast<float(&)[kVColsPerWg / 2]>(o), da, db, 1);
  }
}

// Per page: S = Q K^T (each warpgroup its 32 tokens), the online softmax with the row max
// exchanged between the warpgroups, then O += P V (each warpgroup its 256 V columns). The two
// warpgroups run in lockstep. Overlapping the softmax with the next page's S instead (as
// FlashAttention-3 does) needs that page resident one step earlier: with two 72 KB stages next to
// the 72 KB Q tile there is then no stage left to prefetch into, and it measured 20-27% slower
// (docs/perf.md, v5).
__global__ void __launch_bounds__(kThreads, 1)
    decode_kernel(const __grid_constant__ DecodeParams p,
                  const __grid_constant__ CUtensorMap tmap) {
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = reinterpret_cast<uint8_t*>(
      (reinterpret_cast<uintptr_t>(smem_raw) + kSwizzleAlign - 1) & ~uintptr_t(kSwizzleAlign - 1));
  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int wg = warp / 4;            // warpgroup: tokens [32 wg, +32) of S, V columns [256 wg, +256)
  const int row0 = (warp % 4) * 16 + (lane >> 2);  // first of the thread's two accumulator rows
  const int m_tile = blockIdx.x;
  const int part = blockIdx.y;

  uint8_t* sq = smem + kOffQ;
  uint8_t* skv = smem + kOffKV;
  uint8_t* sp = smem + kOffP;
  float* red = reinterpret_cast<float*>(smem + kOffRed);
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem + kOffBar);
  int* bad = reinterpret_cast<int*>(smem + kOffFlag);
  const uint32_t sq_addr = ptx::smem_addr(sq);
  const uint32_t sp_addr = ptx::smem_addr(sp);

  if (tid == 0) {
    for (int s = 0; s < kStages; ++s) ptx::mbarrier_init(&bars[s], 1);
    ptx::fence_mbarrier_init();
  }
  // Everything above overlaps the metadata kernel (programmatic dependent launch).
  ptx::griddep_wait();
  ptx::griddep_launch_dependents();
  const int4 pm = reinterpret_cast<const int4*>(p.part_meta)[part];
  if (pm.x >= pm.y) return;
  __syncthreads();

  uint32_t phase = 0;  // bit s: parity of the next completion of stage s
  int issued = 0;      // pages consumed so far by this CTA: page n uses stage n % kStages

  for (int b = pm.x; b < pm.y; ++b) {
    const SeqWork w = seq_work(p, part, pm, b);
    const int num_pages = w.page_end - w.page_begin;

    __syncthreads();  // the previous sequence is done with Q, P and the reduction buffer
    if (tid == 0) {
      *bad = 0;
      for (int j = 0; j < kStages && j < num_pages; ++j) {
        const int s = (issued + j) % kStages;
        load_page(&tmap, page_id_of(p, w, w.page_begin + j), skv + s * kPageBytes, &bars[s], bad);
      }
    }
    load_q_async<kRows, kThreads>(p, w.batch, m_tile * kRows, sq, tid);

    int limit[2];
    float m[2], l[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      limit[h] = row_limit(p, w, m_tile * kRows + row0 + 8 * h);
      m[h] = -INFINITY;
      l[h] = 0.f;
    }
    float o[kVColsPerWg / 8][4];
#pragma unroll
    for (int t = 0; t < kVColsPerWg / 8; ++t) o[t][0] = o[t][1] = o[t][2] = o[t][3] = 0.f;
    ptx::cp_async_wait_all();
    ptx::fence_proxy_async_shared();  // Q is read by wgmma (async proxy)
    __syncthreads();

    const SoftmaxSlice sl{red, sp, row0, wg, wg * kTokensPerWg, kBarSoftmax, kThreads};
    for (int j = 0; j < num_pages; ++j) {
      const int s = (issued + j) % kStages;
      uint8_t* stage = skv + s * kPageBytes;
      const uint32_t kv_addr = ptx::smem_addr(stage);
      const int page = w.page_begin + j;
      // The refill's block-table entry, read now so that its latency hides behind this page.
      const int next_id =
          tid == 0 && j + kStages < num_pages ? page_id_of(p, w, page + kStages) : -1;
      ptx::mbarrier_wait_parity(&bars[s], (phase >> s) & 1);
      phase ^= 1u << s;
      const int valid = w.seqlen - page * kPageSize;
      if (valid < kPageSize) {
        zero_tail(stage, valid, tid, kThreads);
        ptx::fence_proxy_async_shared();
        ptx::named_barrier_sync(kBarSoftmax, kThreads);
      }

      float sacc[kTokensPerWg / 8][4];
      ptx::wgmma_fence();
      issue_s(sacc, sq_addr, kv_addr, wg);
      ptx::wgmma_commit();
      ptx::wgmma_wait<0>();
      ptx::fence_regs(reinterpret_cast<float(&)[kTokensPerWg / 2]>(sacc));

      float base[2], alpha[2];
      uint32_t pk[kTokensPerWg / 8][2];
      softmax_rowmax<kRows, kWarpGroups>(sacc, m, l, base, alpha, limit, page * kPageSize,
                                         p.scale_log2, sl, lane);
      rescale_o(o, alpha);
      softmax_exp(sacc, base, l, pk);
      store_p(pk, sl, lane);
      ptx::fence_proxy_async_shared();  // P is read by wgmma
      ptx::named_barrier_sync(kBarSoftmax, kThreads);

      ptx::wgmma_fence();
      issue_pv(o, sp_addr, kv_addr, wg);
      ptx::wgmma_commit();
      ptx::wgmma_wait<0>();
      ptx::fence_regs(reinterpret_cast<float(&)[kVColsPerWg / 2]>(o));

      __syncthreads();  // both warpgroups are done with stage s and P: refill
      if (tid == 0 && j + kStages < num_pages) load_page(&tmap, next_id, stage, &bars[s], bad);
    }
    issued += num_pages;

    // Row sums across the two warpgroups, then normalise and store.
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      l[h] += __shfl_xor_sync(0xffffffffu, l[h], 1);
      l[h] += __shfl_xor_sync(0xffffffffu, l[h], 2);
    }
    if ((lane & 3) == 0) {
      red[wg * kRows + row0] = l[0];
      red[wg * kRows + row0 + 8] = l[1];
    }
    ptx::named_barrier_sync(kBarSoftmax, kThreads);
    float lsum[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) lsum[h] = red[row0 + 8 * h] + red[kRows + row0 + 8 * h];
    store_rows<kVColsPerWg / 8>(p, w, o, m, lsum, *bad != 0, m_tile * kRows + row0,
                                wg * kVColsPerWg + 2 * (lane & 3), wg == 0 && (lane & 3) == 0);
  }
}

}  // namespace mla::sm90::decode
