// Split-KV paged MLA decode for tiles of 64 query rows on Hopper tensor cores (wgmma). Pages land
// 128B-swizzled by TMA, so one shared-memory copy serves as the K operand of S = Q K^T (K-major)
// and as the V operand of O += P V (MN-major).
//
// The two warpgroups have different jobs. Warpgroup S computes S = Q K^T for the whole page
// (m64n64, so Q and K are each read once per k-step), the softmax (whole rows: no exchange), and
// O[:, 0:256] += P V with P from its registers. Warpgroup V only accumulates O[:, 256:512] += P V
// with P from shared memory and rescales its half by the row factors S leaves there. Both halves
// of P(j) V_j run together; S waits for its own half to complete and says so before it waits for
// page j+1 and issues S(j+1), and V refills page j's stage as soon as both halves are done. How
// long a stage is held from its landing to its refill bounds the loop with two stages, memory-
// and compute-bound alike: "S done" used to follow the wait for page j+1 and the issue of S(j+1),
// which held page j as long as page j+1 took to land (docs/perf.md v16).
#pragma once

#include <cuda.h>

#include <cmath>
#include <cstdint>

#include "mla/epilogue.cuh"
#include "mla/params.h"
#include "mla/plan.cuh"
#include "mla/ptx.cuh"
#include "mla/schedule.cuh"
#include "mla/softmax.cuh"
#include "mla/wgmma.cuh"
#include "sm90/decode/config.h"
#include "sm90/decode/trace.cuh"
#include "sm90/page_tile.cuh"

namespace mla::sm90::decode {

using OAcc = float[kVColsPerWg / 8][4];  // a warpgroup's half of O: 128 fp32 per thread
using SAcc = float[kScoreTiles][4];      // a page's scores: 32 fp32 per thread
using PFrag = uint32_t[kScoreTiles][2];  // bf16 P in registers: the A fragments of 4 k16 steps

// S = Q K^T for the 64 tokens of the page at kv_addr: 9 atom columns x 4 k16 steps.
__device__ __forceinline__ void issue_s(SAcc& sacc, uint32_t sq_addr, uint32_t kv_addr) {
#pragma unroll
  for (int kb = 0; kb < kDimBlocks; ++kb) {
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      ptx::wgmma_m64n64k16<0, 0>(reinterpret_cast<float(&)[4 * kScoreTiles]>(sacc),
                                 desc_k_major(sq_addr + kb * kTileBytes + kk * 32),
                                 desc_k_major(kv_addr + kb * kTileBytes + kk * 32), kb + kk > 0);
    }
  }
}

// O[:, 0:256] += P V with P in registers. The accumulator layout of S (n8 tile t: row r, columns
// 8t + 2 (lane % 4) + {0, 1}, and row r + 8) is the register A layout of a k16 step made of tiles
// 2kk and 2kk + 1, so the bf16 pairs of tiles 2kk, 2kk + 1 are that step's four registers.
__device__ __forceinline__ void issue_pv_regs(OAcc& o, const PFrag& pk, uint32_t kv_addr) {
  const auto& a = reinterpret_cast<const uint32_t(&)[4][4]>(pk);
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    ptx::wgmma_m64n256k16_rs<1>(reinterpret_cast<float(&)[kVColsPerWg / 2]>(o), a[kk],
                                desc_mn_major(kv_addr + kk * 16 * 128));
  }
}

// O[:, 256:512] += P V with P from shared memory.
__device__ __forceinline__ void issue_pv_smem(OAcc& o, uint32_t sp_addr, uint32_t kv_addr) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    ptx::wgmma_m64n256k16<0, 1>(reinterpret_cast<float(&)[kVColsPerWg / 2]>(o),
                                desc_k_major(sp_addr + kk * 32),
                                desc_mn_major(kv_addr + 4 * kTileBytes + kk * 16 * 128), 1);
  }
}

// Warpgroup S's softmax of one page: new row max, alpha for both halves of O, P in registers.
__device__ __forceinline__ void page_softmax(SAcc& sacc, float (&m)[2], float (&l)[2],
                                             float (&alpha)[2], PFrag& pk, const int (&limit)[2],
                                             int page_pos, float scale_log2, int lane) {
  float base[2];
  softmax_rowmax(sacc, m, l, base, alpha, limit, page_pos, scale_log2, lane);
  softmax_exp(sacc, base, scale_log2, l, pk);
}

// Hands P and the row factors of a page to warpgroup V (sp, scale: shared addresses; row: the
// thread's first row, lane / 4 into its warp's 16).
__device__ __forceinline__ void publish_p(const PFrag& pk, const float (&alpha)[2], uint32_t sp,
                                          uint32_t scale, int row, int lane) {
  store_p(pk, sp, row - (lane >> 2), lane);
  if ((lane & 3) == 0) {
    ptx::st_shared_f32(scale + 4 * row, alpha[0]);
    ptx::st_shared_f32(scale + 4 * (row + 8), alpha[1]);
  }
  ptx::fence_proxy_async_shared();  // P is read by wgmma
  ptx::named_barrier_arrive(kBarReady, kThreads);
}

__device__ __forceinline__ void wait_full(uint64_t* bars, uint32_t& phase, int s) {
  ptx::mbarrier_wait_parity(&bars[s], (phase >> s) & 1);
  phase ^= 1u << s;
}

// kPlan: the call plans for itself (DecodeParams::plan_in_kernel). A template parameter, so that
// the kernel of a call given its plan (vLLM's layers share one per step) carries none of the
// self-planning code: 1.023x on that path in process at B = 1-8, up to 1.05x (docs/perf.md v23).
template <bool kPlan>
__global__ void __launch_bounds__(kThreads, 1)
    decode_kernel(const __grid_constant__ DecodeParams p,
                  const __grid_constant__ CUtensorMap tmap,
                  const __grid_constant__ QTensorMaps qmaps) {
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = reinterpret_cast<uint8_t*>(
      (reinterpret_cast<uintptr_t>(smem_raw) + kSwizzleAlign - 1) & ~uintptr_t(kSwizzleAlign - 1));
  const int tid = threadIdx.x;
  const int wtid = tid % 128;
  const int warp = tid / 32;
  const int lane = tid % 32;
  // Warp-uniform by construction (a shuffle from lane 0), so that ptxas sees each role branch as
  // warpgroup-uniform and keeps the wgmma pipeline (C7520 otherwise).
  const int wg = __shfl_sync(0xffffffffu, warp / 4, 0);
  const int row0 = (warp % 4) * 16 + (lane >> 2);  // first of the thread's two accumulator rows
  const int m_tile = blockIdx.x;
  const int part = blockIdx.y;
  if (tid == 0) {
    trace_put(p, kTrGlobalIn, global_ns());
    trace_clock(p, kTrClockIn);
  }

  uint8_t* sq = smem + kOffQ;
  uint8_t* skv = smem + kOffKV;
  float* ml = reinterpret_cast<float*>(smem + kOffML);
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem + kOffBar);
  int* bad = reinterpret_cast<int*>(smem + kOffFlag);
  const uint32_t sq_addr = ptx::smem_addr(sq);
  const uint32_t sp_addr = ptx::smem_addr(smem + kOffP);
  const uint32_t scale_addr = ptx::smem_addr(smem + kOffScale);  // alpha per row, fp32
  auto kv_addr = [&](int s) { return ptx::smem_addr(skv + s * kPageBytes); };

  if (tid == 0) {
    for (int s = 0; s < kStages; ++s) ptx::mbarrier_init(&bars[s], 1);
    ptx::mbarrier_init(&bars[kStages], 128);  // warpgroup S's barrier
    ptx::mbarrier_init(&bars[kBarQ], 1);        // the Q tile by TMA
    ptx::fence_mbarrier_init();
  }
  // Everything above overlaps the metadata kernel (programmatic dependent launch).
  ptx::griddep_wait();
  ptx::griddep_launch_dependents();
  // A self-planning call: every warp computes the plan from seqlens (the same, in registers;
  // warp 0 alone would leave ptxas a divergent path before the wgmmas, C7520), thread 0 puts this
  // part's row of part_meta and the batch_meta rows of its first and last sequence into shared
  // memory, and the CTAs of row tile 0 write the plan out (each part its part_meta row and the
  // batch_meta rows of the sequences that start in it).
  int4* plan_rows = reinterpret_cast<int4*>(smem + kOffPlan);
  if constexpr (kPlan) {
    const WarpPlan plan = warp_plan(p.seqlens, p.batch, p.num_parts, p.plan_fixed_cost,
                                    p.plan_fixed_head);
    const int4 pmq = warp_plan_part(plan, part, p.batch, p.plan_fixed_head);
    const int4 bm_first = warp_plan_seq(plan, pmq.x);
    const int4 bm_last = warp_plan_seq(plan, max(pmq.y - 1, 0));
    if (tid == 0) {
      plan_rows[0] = pmq;
      plan_rows[1] = bm_first;
      plan_rows[2] = bm_last;
      if (m_tile == 0) reinterpret_cast<int4*>(p.part_meta)[part] = pmq;
    }
    if (warp == 0 && m_tile == 0 && lane < p.batch && plan.first == part) {
      reinterpret_cast<int4*>(p.batch_meta)[lane] =
          make_int4(plan.page0, plan.first, plan.splits, plan.slot);
    }
    __syncthreads();
  }
  if (tid == 0) trace_clock(p, kTrMetaReady);
  // Rows read from shared memory go through a shuffle so that ptxas sees them warp-uniform, as it
  // does the global loads, and keeps the loop's wgmma pipeline (C7520 otherwise).
  auto uniform = [](int4 v) {
    return make_int4(__shfl_sync(0xffffffffu, v.x, 0), __shfl_sync(0xffffffffu, v.y, 0),
                     __shfl_sync(0xffffffffu, v.z, 0), __shfl_sync(0xffffffffu, v.w, 0));
  };
  int4 pm;
  if constexpr (kPlan) {
    pm = uniform(plan_rows[0]);
  } else {
    pm = reinterpret_cast<const int4*>(p.part_meta)[part];
  }
  if (tid == 0) trace_put(p, kTrNumSeqs, pm.y - pm.x);
  if (pm.x >= pm.y) {
    if (tid == 0) trace_put(p, kTrGlobalOut, global_ns());
    return;
  }
  __syncthreads();

  // Sequence b's batch_meta row. Self-planned, a sequence strictly inside the part's range lies
  // whole in it (its first unit is past the previous sequence's end, its end before the next
  // one's start), so one piece from page 0 to its end: no page0 or slot needed.
  auto batch_row = [&](int b) -> int4 {
    if constexpr (kPlan) {
      return b == pm.x       ? uniform(plan_rows[1])
             : b == pm.y - 1 ? uniform(plan_rows[2])
                             : make_int4(0, part, 1, 0);
    } else {
      return reinterpret_cast<const int4*>(p.batch_meta)[b];
    }
  };

  unsigned long long wait_ticks = 0;  // trace builds: this thread's time in page waits
  uint32_t phase = 0;  // bit s: parity of the next completion of stage s (each warpgroup its own)
  uint32_t tail_phase = 0;  // parity of the next completion of warpgroup S's barrier
  uint32_t q_phase = 0;     // parity of the next completion of the Q barrier
  const bool q_tma = p.q_tma;
  int issued = 0;      // pages consumed so far by this CTA: page n uses stage n % kStages

  for (int b = pm.x; b < pm.y; ++b) {
    const SeqWork w = seq_work(p, part, pm, b, batch_row(b));
    // A varlen sequence with fewer query rows than this row tile's first: nothing to compute
    // (the combine skips those rows too). Uniform for the CTA, so no barrier is left waiting.
    if (m_tile * kRows >= w.rows) continue;
    const int num_pages = w.page_end - w.page_begin;
    auto stage_of = [&](int j) { return (issued + j) % kStages; };

    __syncthreads();  // the previous sequence is done with Q, P and every stage
    if (tid == 0) {
      trace_clock(p, trace_seq_slot(b - pm.x, kTrSeqStart));
      trace_put(p, trace_seq_slot(b - pm.x, kTrPages), num_pages);
    }
    if (tid == 0) {
      *bad = 0;
      if (q_tma) load_q_tma(qmaps, p, w, m_tile * kRows, sq, &bars[kBarQ]);
      for (int j = 0; j < kStages && j < num_pages; ++j) {
        load_page(&tmap, page_id_of(p, w, w.page_begin + j), skv + stage_of(j) * kPageBytes,
                  &bars[stage_of(j)], bad);
      }
    }
    if (!q_tma) load_q_async<kRows, kThreads>(p, w, m_tile * kRows, sq, tid);
    float o[kVColsPerWg / 8][4];
#pragma unroll
    for (int t = 0; t < kVColsPerWg / 8; ++t) o[t][0] = o[t][1] = o[t][2] = o[t][3] = 0.f;
    if (q_tma) {
      ptx::mbarrier_wait_parity(&bars[kBarQ], q_phase);
      q_phase ^= 1;
    } else {
      ptx::cp_async_wait_all();
      ptx::fence_proxy_async_shared();  // Q is read by wgmma (async proxy)
    }
    // Needed by the cp.async path only. With TMA every thread has waited on Q's mbarrier, but
    // without this second barrier per sequence compute-sanitizer's racecheck reported V's read of
    // the row max and sums (kBarEnd) against S's write of them a sequence later (one run in four,
    // 42 sequences at 16 heads; ordered by the loop's first __syncthreads). It costs nothing
    // measurable (0.9987x without it, control 0.9988x): docs/perf.md v19.
    __syncthreads();
    if (tid == 0) trace_clock(p, trace_seq_slot(b - pm.x, kTrQReady));

    // The rows' max and sums for the epilogue, which both warpgroups run after their branches:
    // one copy of its code rather than one per role (the kernel's code size matters, v10).
    float m_end[2], l_end[2];
    bool bad_end;
    if (wg == kWgS) {  // else kWgV
      int limit[2];
      float m[2], l[2], alpha[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        limit[h] = row_limit(p, w, m_tile * kRows + row0 + 8 * h);
        m[h] = -INFINITY;
        l[h] = 0.f;
      }
      SAcc sacc;
      PFrag pk;
      // Waits for page j and zeroes the tail of a partial last page (P = 0 times a NaN in the
      // cache would still be NaN), then issues S(j).
      auto start_s = [&](int j) {
        const int s = stage_of(j);
        const unsigned long long wait_start = trace_now();
        wait_full(bars, phase, s);
        trace_add_since(wait_ticks, wait_start);
        const int valid = w.seqlen - (w.page_begin + j) * kPageSize;
        if (valid < kPageSize) {
          zero_tail(skv + s * kPageBytes, valid, wtid, 128);
          ptx::fence_proxy_async_shared();
          ptx::mbarrier_arrive(&bars[kStages]);
          ptx::mbarrier_wait_parity(&bars[kStages], tail_phase);
          tail_phase ^= 1;
        }
        issue_s(sacc, sq_addr, kv_addr(s));
        ptx::wgmma_commit();
      };

      if (num_pages > 0) {
        ptx::wgmma_fence();
        start_s(0);
        if (tid == 0) trace_clock(p, trace_seq_slot(b - pm.x, kTrFirstS));
        ptx::wgmma_wait<0>();
        ptx::fence_regs(reinterpret_cast<float(&)[4 * kScoreTiles]>(sacc));
        page_softmax(sacc, m, l, alpha, pk, limit, w.page_begin * kPageSize, p.scale_log2, lane);
        publish_p(pk, alpha, sp_addr, scale_addr, row0, lane);
      }
      for (int j = 0; j < num_pages; ++j) {
        ptx::wgmma_fence();
        issue_pv_regs(o, pk, kv_addr(stage_of(j)));
        ptx::wgmma_commit();
        // O += P(j) V_j is done: page j is V's alone now. Said before the wait for page j+1, so
        // that page j's refill does not wait for page j+1 to land, and before S(j+1) is issued,
        // so that V's half of P(j) V_j shares the tensor cores with S's half only.
        ptx::wgmma_wait<0>();
        ptx::fence_regs(reinterpret_cast<float(&)[kVColsPerWg / 2]>(o));
        ptx::named_barrier_arrive(kBarSDone, kThreads);
        if (j + 1 == num_pages) break;
        start_s(j + 1);
        ptx::wgmma_wait<0>();
        ptx::fence_regs(reinterpret_cast<float(&)[4 * kScoreTiles]>(sacc));
        page_softmax(sacc, m, l, alpha, pk, limit, (w.page_begin + j + 1) * kPageSize,
                     p.scale_log2, lane);
        rescale_o(o, alpha);
        ptx::named_barrier_sync(kBarFree, kThreads);  // V is done with P(j)
        publish_p(pk, alpha, sp_addr, scale_addr, row0, lane);
      }

      // Full row sums; hand max and sums to V once it is done with the last P.
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        l[h] += __shfl_xor_sync(0xffffffffu, l[h], 1);
        l[h] += __shfl_xor_sync(0xffffffffu, l[h], 2);
      }
      if (num_pages > 0) ptx::named_barrier_sync(kBarFree, kThreads);
      if (tid == 0) trace_clock(p, trace_seq_slot(b - pm.x, kTrLastPage));
      // The poison flag travels with them: V's refills (before the last Free) may have set it,
      // and V reads it here rather than from `bad`, which thread 0 resets for the next sequence.
      const bool poisoned = *bad != 0;
      if ((lane & 3) == 0) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          ml[row0 + 8 * h] = m[h];
          ml[kRows + row0 + 8 * h] = l[h];
        }
      }
      if (wtid == 0) ml[2 * kRows] = poisoned ? 1.f : 0.f;
      ptx::named_barrier_arrive(kBarEnd, kThreads);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        m_end[h] = m[h];
        l_end[h] = l[h];
      }
      bad_end = poisoned;
    } else {
      for (int j = 0; j < num_pages; ++j) {
        const int s = stage_of(j);
        // The refill's block-table entry, read now so that its latency hides behind this page.
        const int next_id = wtid == 0 && j + kStages < num_pages
                                ? page_id_of(p, w, w.page_begin + j + kStages)
                                : -1;
        const unsigned long long wait_start = trace_now();
        wait_full(bars, phase, s);
        trace_add_since(wait_ticks, wait_start);
        ptx::named_barrier_sync(kBarReady, kThreads);
        const float alpha[2] = {ptx::ld_shared_f32(scale_addr + 4 * row0),
                                ptx::ld_shared_f32(scale_addr + 4 * (row0 + 8))};
        rescale_o(o, alpha);
        ptx::wgmma_fence();
        issue_pv_smem(o, sp_addr, kv_addr(s));
        ptx::wgmma_commit();
        ptx::wgmma_wait<0>();
        ptx::fence_regs(reinterpret_cast<float(&)[kVColsPerWg / 2]>(o));
        ptx::named_barrier_sync(kBarSDone, kThreads);  // S is done with page j too: refill it
        if (wtid == 0 && j + kStages < num_pages) {
          load_page(&tmap, next_id, skv + s * kPageBytes, &bars[s], bad);
        }
        // A full sync, not an arrive: V has nothing else to do until S publishes the next P,
        // and compute-sanitizer's racecheck does not take an arrive as ordering V's read of the
        // row factors before S's next write of them.
        ptx::named_barrier_sync(kBarFree, kThreads);
      }
      ptx::named_barrier_sync(kBarEnd, kThreads);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        m_end[h] = ml[row0 + 8 * h];
        l_end[h] = ml[kRows + row0 + 8 * h];
      }
      bad_end = ml[2 * kRows] != 0.f;
    }
    store_rows<kVColsPerWg / 8>(p, w, o, m_end, l_end, bad_end, m_tile * kRows + row0,
                                wg == kWgS ? 0 : kVColsPerWg, wg == kWgS && (lane & 3) == 0, lane);
    if (wtid == 0) {
      trace_clock(p, trace_seq_slot(b - pm.x, wg == kWgS ? kTrEpilogueS : kTrEpilogueV));
    }
    issued += num_pages;
  }
  if (wtid == 0) trace_put(p, wg == kWgS ? kTrWaitS : kTrWaitV, wait_ticks);
  if (tid == 0) {
    trace_clock(p, kTrClockOut);
    trace_put(p, kTrGlobalOut, global_ns());
  }
}

}  // namespace mla::sm90::decode
