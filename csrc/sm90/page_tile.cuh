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

// Q rows [row_begin, row_begin + kTileRows) of sequence w in the same swizzled layout (atom
// column kb at kb * kTileRows * 128); rows past the sequence's are zero. Dims 0..511 come from p.q, dims
// 512..575 from p.q_pe (the two halves of a split query, or q + 512). Asynchronous: every 16-byte
// chunk is one cp.async, all in flight at once (a plain load/store loop leaves them dependent one
// after another, ~18 memory latencies for a 64-row tile). A thread keeps one chunk column per
// half, so only the row changes between its copies. The caller completes them with
// cp_async_wait_all, then fence_proxy_async_shared (wgmma reads Q) and a barrier.
template <int kTileRows, int kThreads>
__device__ __forceinline__ void load_q_async(const DecodeParams& p, const SeqWork& w,
                                             int row_begin, uint8_t* sq, int tid) {
  constexpr int kLatentChunks = kDimV / 8;        // 64 per row
  constexpr int kRopeChunks = (kDimQK - kDimV) / 8;  // 8 per row
  static_assert(kThreads % kLatentChunks == 0 && kTileRows % (kThreads / kLatentChunks) == 0 &&
                    kTileRows % (kThreads / kRopeChunks) == 0,
                "whole rows per pass");
  const uint32_t sq_addr = ptx::smem_addr(sq);
  // Query row r is (token r / h_q, head r % h_q). r < 2^11 and h_q <= 128, so (r + 0.5) / h_q
  // lies at least 1/256 from an integer while the float product errs by under 2^-12: truncation
  // gives the exact quotient without an integer division per copy.
  const float inv_h = 1.f / static_cast<float>(p.h_q);
  auto copy = [&](const __nv_bfloat16* base, int64_t batch_stride, int64_t token_stride,
                  int64_t head_stride, int row, int chunk, int dim) {
    const int r = row_begin + row;
    const bool valid = r < w.rows;
    const __nv_bfloat16* src = base;  // a row past the problem reads nothing from a valid address
    if (valid) {
      const int token = static_cast<int>((static_cast<float>(r) + 0.5f) * inv_h);
      const int head = r - token * p.h_q;
      src += int64_t(w.batch) * batch_stride + int64_t(w.tok0 + token) * token_stride +
             int64_t(head) * head_stride + dim;
    }
    ptx::cp_async_16(
        sq_addr + (chunk / 8) * (kTileRows * 128) + row * 128 + (((chunk % 8) ^ (row & 7)) << 4),
        src, valid ? 16 : 0);
  };
  // Not unrolled: the copies are asynchronous anyway, and unrolling kept every address live at once
  // (spills in the 64-row kernel, whose O accumulators hold 128 registers).
  const int latent_chunk = tid % kLatentChunks;
#pragma unroll 1
  for (int row = tid / kLatentChunks; row < kTileRows; row += kThreads / kLatentChunks) {
    copy(p.q, p.q_batch_stride, p.q_token_stride, p.q_head_stride, row, latent_chunk,
         latent_chunk * 8);
  }
  const int rope_chunk = tid % kRopeChunks;
#pragma unroll 1
  for (int row = tid / kRopeChunks; row < kTileRows; row += kThreads / kRopeChunks) {
    copy(p.q_pe, p.q_pe_batch_stride, p.q_pe_token_stride, p.q_pe_head_stride, row,
         kLatentChunks + rope_chunk, rope_chunk * 8);
  }
}

// The Q tensor maps of a call (launch_utils: make_q_tensor_maps): q's dims 0..511 and q_pe's 64 as
// 4-D tensors [batch][token][head][dim] (varlen: one batch of num_tokens tokens), each box 64 dims
// of 64 query rows: min(h_q, 64) heads of 64 / h_q tokens, so that box row i is tile row i.
struct QTensorMaps {
  CUtensorMap q, q_pe;
};

// Issued by one thread: Q rows [row_begin, row_begin + 64) of sequence w as nine boxes on `bar`
// (73728 bytes), in the layout of load_q_async. Needs h_q dividing 64 or a multiple of 64, so that a
// tile starts at a token's first head or, from 64 heads up, at head row_begin % h_q of one token.
// Rows past the sequence's are zero where they fall outside q (TMA's out-of-bounds fill) and a
// later varlen sequence's tokens otherwise: either way confined to their own rows (S, the softmax
// and P V never mix rows), masked to P = 0 by their row limit of 0, and never stored.
// One thread and an mbarrier instead of 4608 cp.async from 256 threads: 1.019x over 36 cases, up
// to 1.05x at 64 rows (docs/perf.md v19).
__device__ __forceinline__ void load_q_tma(const QTensorMaps& maps, const DecodeParams& p,
                                           const SeqWork& w, int row_begin, uint8_t* sq,
                                           uint64_t* bar) {
  constexpr int kQBoxBytes = 64 * 128;
  ptx::mbarrier_arrive_expect_tx(bar, kDimBlocks * kQBoxBytes);
  const int token = w.tok0 + row_begin / p.h_q;
  const int head = row_begin % p.h_q;
  const int batch = p.q_start == nullptr ? w.batch : 0;
  for (int kb = 0; kb < kDimBlocks - 1; ++kb) {
    ptx::tma_load_4d(sq + kb * kQBoxBytes, &maps.q, kb * kBlockDims, head, token, batch, bar);
  }
  ptx::tma_load_4d(sq + (kDimBlocks - 1) * kQBoxBytes, &maps.q_pe, 0, head, token, batch, bar);
}

}  // namespace mla::sm90
