// Plain parameter structs shared by the torch-facing ops and the kernels (no torch here).
#pragma once

#include <cstdint>

#include <cuda_bf16.h>

namespace mla {

// Problem constants of DeepSeek-style MLA: one 576-dim latent per cached token.
constexpr int kDimQK = 576;    // 512 latent + 64 rope
constexpr int kDimV = 512;     // V is the first 512 dims of the cached latent
constexpr int kPageSize = 64;  // tokens per KV-cache page
constexpr int kMaxQTokens = 16;
constexpr int kMaxHeads = 128;
// Split-KV cost of one sequence = its pages + a charge for its prologue and epilogue (Q load,
// output rows), in page units, part of it before its pages (head) and the rest after them (tail).
// A part boundary that falls inside a charge leaves a piece on either side with fewer pages, as a
// piece does pay its own prologue and epilogue; all of it before the pages split a uniform batch
// of 16 pages per sequence 6 + 10 at 128 rows (docs/perf.md v17). By query rows per sequence
// (s_q * h_q; 0: not given, the charge before v18), measured in docs/perf.md v17-v18:
//   - a batch of one sequence: 1 before. Every part holds a piece of it anyway, a larger charge
//     would only move the part boundaries (3-6: 0.92-0.95x at 16 heads, L = 4k); one unit keeps
//     an empty sequence in a part.
//   - up to 32 rows: 2 before, 1 after (a 16- or 32-row tile's Q is 18-36 KB; 1.07-1.08x at B = 32,
//     L = 1k against 4 before).
//   - 33-64 rows, or not given: 4 before (v16: 4 against 2 is 1.044x on skewed batches).
//   - more than 64 rows (two or more 64-row tiles): 2 before, 2 after (1.04-1.09x at B = 8-32,
//     L = 1k-4k, where 4 before split a sequence 6 + 10).
// The head is at least 1: an empty sequence must own a unit before its end to be in a part.
struct PlanCharge {
  int head;  // units before a sequence's pages
  int tail;  // units after them
};
__host__ __device__ constexpr PlanCharge plan_charge(int64_t batch, int64_t rows) {
  return batch <= 1  ? PlanCharge{1, 0}
         : rows <= 0 ? PlanCharge{4, 0}
         : rows <= 32 ? PlanCharge{2, 1}
         : rows <= 64 ? PlanCharge{4, 0}
                      : PlanCharge{2, 2};
}
// What the planner charges a part boundary that cuts a sequence, in pages (second prologue and
// epilogue, partial rows, combine share; measured in docs/perf.md, v7, with fp32 partials).
constexpr int kCutCostPages = 4;
// The planner's units (pages plus fixed costs, summed over the batch in int32) stay below this:
// a batch whose lengths would add up to more (over 2^36 tokens, far past any real cache: garbage
// lengths) has each sequence's planned pages capped at kMaxPlanUnits / batch - its charge.
// Only the split changes; the part holding a sequence's end still runs to its last page.
constexpr int kMaxPlanUnits = 1 << 30;
// Block-table width the kernel reads at most: page * 64 stays in int32 (a longer table is read
// up to here; an int32 length never needs more than 2^25 pages).
constexpr int kMaxTablePages = (1 << 25) - 1;

// A decode call with plan=True plans inside its kernels (one warp plan, mla/plan.cuh: one
// sequence per lane) when that plan is the equal share of units, which the planner keeps while
// batch * 4 < num_parts (so batch <= 32 at 132 parts), with at most kWarpPlanMaxBatch sequences
// and kPlanInKernelMaxRows query rows in all (batch x s_q x h_q); other calls run the metadata
// kernel first. Against the metadata kernel, in two grid runs (docs/perf.md v22): 1.02-1.03x up
// to 2048 rows in all, 0.97-0.99x at 4096-16384 (B = 8 x 512 rows, B = 32 x 128-512 rows:
// thousands of CTAs each planning, and the combine's per-warp kernel waiting before it reads the
// plan). Pricing the part size (batch * 4 >= num_parts) in every decode CTA made the call
// 1.06-1.12x slower than the metadata kernel's plan at B = 33-64 (16-32 heads), and a second
// sequence per lane cost 1-2.5% on small calls (v25).
constexpr int kWarpPlanMaxBatch = 32;
constexpr int64_t kPlanInKernelMaxRows = 2048;

// Whether the planner keeps the equal share of units per part (T0): it prices longer parts only
// when batch * 4 >= num_parts, where a part holds a sizeable share of a sequence (docs/design.md).
// The metadata kernel and plan_in_kernel_fits (the warp plan never prices) share this rule.
__host__ __device__ constexpr bool plan_keeps_equal_share(int64_t batch, int64_t num_parts) {
  return batch * 4 < num_parts;
}

// Whether a plan=True call of `batch` sequences, `rows` query rows each, on `num_parts` parts
// plans inside its kernels (above).
__host__ __device__ constexpr bool plan_in_kernel_fits(int64_t batch, int64_t rows,
                                                       int64_t num_parts) {
  return batch <= kWarpPlanMaxBatch && plan_keeps_equal_share(batch, num_parts) &&
         batch * rows <= kPlanInKernelMaxRows;
}

// Pages of a sequence of `seqlen` tokens (0 when seqlen <= 0), without the overflow of
// (seqlen + 63) / 64 near INT_MAX.
__host__ __device__ constexpr int pages_of(int seqlen) {
  return seqlen <= 0 ? 0 : (seqlen - 1) / kPageSize + 1;
}

struct MetadataParams {
  const int* seqlens;  // [batch]
  int* part_meta;      // [num_parts, 4]: b_begin, b_end, unit_begin, unit_end
  int* batch_meta;     // [batch, 4]: page0_unit, first_part, num_splits, split_slot
  int batch;
  int num_parts;
  int fixed_cost;  // units per sequence besides its pages: plan_charge's head + tail
  int fixed_head;  // of those, the units before its pages (>= 1)
};

struct DecodeParams {
  // Inputs
  // Q's dims 0..511 (the latent part) and 512..575 (the rope part) by separate pointers and
  // strides, so that a caller holding the two halves apart (vLLM: q_nope absorbed into the
  // latent space, q_pe) needs no concatenation; for a whole [.., 576] q, q_pe = q + 512.
  const __nv_bfloat16* q;  // [batch, s_q, h_q, >= 512], last dim contiguous
  int64_t q_batch_stride, q_token_stride, q_head_stride;
  const __nv_bfloat16* q_pe;  // [batch, s_q, h_q, 64], last dim contiguous
  int64_t q_pe_batch_stride, q_pe_token_stride, q_pe_head_stride;
  const __nv_bfloat16* kv;  // [num_pages, 64, 576] (or [num_pages, 64, 1, 576]), last dim contiguous
  int64_t kv_page_stride, kv_token_stride;
  int num_pages;
  const int* block_table;  // [batch, max_pages]
  int64_t block_table_stride;
  int max_pages;
  const int* seqlens;     // [batch]
  // Varlen queries, or null when every sequence has s_q query tokens: sequence b's are tokens
  // q_start[b] .. q_start[b + 1] - 1 of the token dim (of q, q_pe, out and lse, whose batch
  // strides are 0 then), s_q their most; tokens of a sequence past s_q are not computed.
  const int* q_start;     // [batch + 1]
  int num_tokens;         // varlen: tokens of q/out; offsets outside [0, num_tokens] are clamped
  // The plan: from the metadata kernel, or, with plan_in_kernel (see kPlanInKernelMaxRows),
  // computed by the decode kernel, which writes it here for a later call, and by the combine
  // kernel for itself (mla/plan.cuh), with plan_charge(batch, rows) as the charge.
  int* part_meta;   // [num_parts, 4]
  int* batch_meta;  // [batch, 4]
  bool plan_in_kernel;
  int plan_fixed_cost, plan_fixed_head;  // plan_in_kernel: the charge's head + tail, and head

  // Outputs
  __nv_bfloat16* out;  // [batch, s_q, h_q, 512], last dim contiguous
  int64_t out_batch_stride, out_token_stride, out_head_stride;
  float* lse;  // [batch, s_q, h_q]
  int64_t lse_batch_stride, lse_token_stride, lse_head_stride;
  __nv_bfloat16* o_accum;  // [2 * num_parts, rows, 512], normalised partials of split sequences
  float* lse_accum;  // [2 * num_parts, rows]

  // Sizes
  int batch, s_q, h_q;
  int rows;  // s_q * h_q: query rows per sequence, row r = token * h_q + head
  int num_parts;
  int num_m_tiles;  // ceil(rows / rows per CTA)

  float scale_log2;  // softmax_scale * log2(e): scores live in the exp2 domain
  bool causal;
  // Set by the sm90 launcher: Q tiles come by TMA through its tensor maps (h_q dividing 64 or a
  // multiple of 64), else by cp.async (docs/perf.md v19).
  bool q_tma;
  unsigned long long* trace;  // per-CTA event clocks of a trace build (decode/trace.cuh), or null
};

}  // namespace mla
