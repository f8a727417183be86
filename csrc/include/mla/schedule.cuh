// Device side of the split-KV schedule: which pages of which sequence a part processes, and
// where its result goes (docs/design.md).
#pragma once

#include "mla/params.h"

namespace mla {

// A sequence's query tokens: tok0 is the token index of its first (0 unless varlen), q_len
// their count (s_q unless varlen; the causal limit counts them all), rows its query rows,
// min(q_len, s_q) * h_q (row r = token * h_q + head).
struct QuerySpan {
  int tok0, q_len, rows;
};

__device__ __forceinline__ QuerySpan query_span(const DecodeParams& p, int b) {
  if (p.q_start == nullptr) return {0, p.s_q, p.rows};
  // Clamped into [0, num_tokens] and non-decreasing: offsets from a bad q_start (device data,
  // not checked on the host) cost the sequence its rows, never an access outside q or out.
  const int tok0 = min(max(p.q_start[b], 0), p.num_tokens);
  const int end = min(max(p.q_start[b + 1], tok0), p.num_tokens);
  const int q_len = end - tok0;
  return {tok0, q_len, min(q_len, p.s_q) * p.h_q};
}

struct SeqWork {
  int batch;
  int seqlen;
  int tok0, q_len, rows;  // the sequence's QuerySpan

  int page_begin, page_end;  // [begin, end) in the sequence's pages
  int num_splits;
  int slot;  // workspace slot of this part's piece when num_splits > 1
};

// bm: sequence b's row of batch_meta.
__device__ __forceinline__ SeqWork seq_work(const DecodeParams& p, int part, int4 pm, int b,
                                            int4 bm) {
  SeqWork w;
  w.batch = b;
  w.seqlen = max(p.seqlens[b], 0);
  const QuerySpan qs = query_span(p, b);
  w.tok0 = qs.tok0;
  w.q_len = qs.q_len;
  w.rows = qs.rows;
  // Pages past the block table are unreadable (the sequence comes out NaN): the first of them is
  // enough to say so, however long the length claims the sequence is.
  const int num_pages = min(pages_of(w.seqlen), p.max_pages + 1);
  const int first = bm.y;
  w.num_splits = bm.z;
  const int last = first + w.num_splits - 1;
  // Parts strictly inside a sequence's range cover whole units; the first and last part of a
  // sequence own its start and end.
  const int lo = part == first ? 0 : pm.z - bm.x;
  const int hi = part == last ? num_pages : pm.w - bm.x;
  w.page_begin = min(max(lo, 0), num_pages);
  w.page_end = min(max(hi, w.page_begin), num_pages);
  w.slot = bm.w + (part - first);
  return w;
}

// Page id of page `page` of the sequence, or -1 when the block table has no such entry or the
// id lies outside the cache (the caller then reads nothing and poisons the sequence's output).
__device__ __forceinline__ int page_id_of(const DecodeParams& p, const SeqWork& w, int page) {
  if (page >= p.max_pages) return -1;
  const int id = p.block_table[int64_t(w.batch) * p.block_table_stride + page];
  return id >= 0 && id < p.num_pages ? id : -1;
}

// Last visible cache position + 1 for query row r (causal: token i of the sequence's q_len sees
// < L - q_len + i + 1).
__device__ __forceinline__ int row_limit(const DecodeParams& p, const SeqWork& w, int r) {
  if (r >= w.rows) return 0;
  return p.causal ? w.seqlen - w.q_len + r / p.h_q + 1 : w.seqlen;
}

}  // namespace mla
