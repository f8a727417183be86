// A KV page in shared memory as the sm90 decode kernel holds it: nine 128B-swizzled atom columns
// of [64 tokens x 64 dims], written by TMA. The same tile is the K operand of S = Q K^T
// (K-major) and the V operand of O += P V (MN-major).
#pragma once

#include <cuda.h>

#include <cstdint>

#include "mla/params.h"
#include "mla/ptx.cuh"
#include "mla/schedule.cuh"
#include "mla/wgmma.cuh"

namespace mla::sm90 {

constexpr int kBlockDims = 64;                      // dims per 128-byte swizzle atom column
constexpr int kDimBlocks = kDimQK / kBlockDims;     // 9 atom columns per cached token
constexpr int kTileBytes = kPageSize * 128;         // one atom column of a page
constexpr int kPageBytes = kDimBlocks * kTileBytes; // 72 KB
constexpr int kSwizzleAlign = 1024;                 // 128B-swizzle atoms start 1024-aligned

// K-major operand: rows of 128 B, 8-row atoms 1024 B apart; k16 steps advance 32 B.
__device__ __forceinline__ uint64_t desc_k_major(uint32_t addr) {
  return ptx::gmma_desc_sw128(addr, 16, 1024);
}
// MN-major operand: 64-element atom columns kTileBytes apart, 8-row groups 1024 B apart.
__device__ __forceinline__ uint64_t desc_mn_major(uint32_t addr) {
  return ptx::gmma_desc_sw128(addr, kTileBytes, 1024);
}

// Issued by one thread: a page's nine boxes on `bar`, marked evict-first in L2. page_id comes
// from page_id_of, loaded ahead of time so that the block-table read is off the critical path; -1
// (unreadable) reads nothing and poisons the sequence's output through `bad` instead.
__device__ __forceinline__ void load_page(const CUtensorMap* tmap, int page_id, uint8_t* stage,
                                          uint64_t* bar, int* bad) {
  if (page_id < 0) {
    *bad = 1;
    ptx::mbarrier_arrive_expect_tx(bar, 0);
    return;
  }
  ptx::mbarrier_arrive_expect_tx(bar, kPageBytes);
  // Evict first: each page is read once per CTA (v11: 1.018x geomean over 30 cases, docs/perf.md).
  const uint64_t policy = ptx::l2_policy_evict_first();
  for (int kb = 0; kb < kDimBlocks; ++kb) {
    ptx::tma_load_3d(stage + kb * kTileBytes, tmap, kb * kBlockDims, 0, page_id, bar, policy);
  }
}

// Tokens past the sequence end in a partial last page hold whatever the cache has there (NaN in
// the tests): zero them so that P = 0 times V stays 0. The caller fences and syncs afterwards.
__device__ __forceinline__ void zero_tail(uint8_t* stage, int valid, int tid, int threads) {
  const int n = (kPageSize - valid) * kDimBlocks * 8;  // 16-byte chunks to clear
  for (int i = tid; i < n; i += threads) {
    const int row = valid + i / (kDimBlocks * 8);
    const int rest = i % (kDimBlocks * 8);
    *reinterpret_cast<uint4*>(stage + (rest / 8) * kTileBytes + row * 128 + (rest % 8) * 16) =
        make_uint4(0, 0, 0, 0);
  }
}

// Q rows [row_begin, row_begin + kTileRows) of sequence b in the same swizzled layout (atom
// column kb at kb * kTileRows * 128); rows past s_q * h_q are zero. Asynchronous: every 16-byte
// chunk is one cp.async, all in flight at once (a plain load/store loop leaves them dependent
// one after another, ~18 memory latencies for a 64-row tile). The caller completes them with
// cp_async_wait_all, then fence_proxy_async_shared (wgmma reads Q) and a barrier.
template <int kTileRows, int kThreads>
__device__ __forceinline__ void load_q_async(const DecodeParams& p, int b, int row_begin,
                                             uint8_t* sq, int tid) {
  constexpr int kChunks = kDimQK / 8;
  constexpr int kTotal = kTileRows * kChunks;
  const uint32_t sq_addr = ptx::smem_addr(sq);
  // Not unrolled: the copies are asynchronous anyway, and unrolling kept every address live at once
  // (spills in the 64-row kernel, whose O accumulators hold 128 registers).
#pragma unroll 1
  for (int i = 0; i < (kTotal + kThreads - 1) / kThreads; ++i) {
    const int idx = tid + i * kThreads;
    if (kTotal % kThreads != 0 && idx >= kTotal) break;
    const int row = idx / kChunks;
    const int chunk = idx % kChunks;
    const int r = row_begin + row;
    const bool valid = r < p.rows;
    // A row past the problem reads nothing (size 0) from a valid address. Chunks 0..63 are the
    // latent dims (p.q), 64..71 the rope dims (p.q_pe).
    const bool pe = chunk >= kDimV / 8;
    const __nv_bfloat16* src = pe ? p.q_pe : p.q;
    if (valid) {
      const int token = r / p.h_q, head = r % p.h_q;
      src += pe ? int64_t(b) * p.q_pe_batch_stride + int64_t(token) * p.q_pe_token_stride +
                      int64_t(head) * p.q_pe_head_stride + (chunk - kDimV / 8) * 8
                : int64_t(b) * p.q_batch_stride + int64_t(token) * p.q_token_stride +
                      int64_t(head) * p.q_head_stride + chunk * 8;
    }
    ptx::cp_async_16(sq_addr + (chunk / 8) * (kTileRows * 128) + row * 128 +
                         (((chunk % 8) ^ (row & 7)) << 4),
                     src, valid ? 16 : 0);
  }
}

}  // namespace mla::sm90
