// The split-KV plan of a small batch (at most kWarpPlanMaxBatch = 32 sequences) computed by one
// warp, in registers, with no shared memory and no barrier: lane b holds sequence b. The same
// plan as the metadata kernel's shared-memory version (docs/design.md) for the calls it serves,
// those whose plan is the equal share of units (plan_keeps_equal_share, plan_in_kernel_fits):
// each sequence's units end to end (its charge's head, its pages, its charge's tail), the part
// ranges by count. Used by the decode and combine kernels of a call that plans for itself
// (DecodeParams::plan_in_kernel), which then need no metadata kernel.
#pragma once

#include <cstdint>

#include "mla/params.h"

namespace mla {

struct WarpPlan {
  int total;     // units of the batch
  int per_part;  // units per part, T
  // This lane's sequence b = lane: the unit after its last page, its first page's unit, and its
  // first part, pieces and first workspace slot (batch_meta).
  int end, page0, first, splits, slot;
};

namespace plan_detail {

__device__ __forceinline__ int warp_inclusive_scan(int v, int lane) {
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const int n = __shfl_up_sync(0xffffffffu, v, off);
    if (lane >= off) v += n;
  }
  return v;
}

// First unit of a sequence: its first page's, or its start when it has no page.
__device__ __forceinline__ int first_unit(int page0, int end, int head) {
  return end > page0 ? page0 : page0 - head;
}

}  // namespace plan_detail

// Every lane of the warp must call it (all 32 lanes active); batch <= kWarpPlanMaxBatch and
// plan_keeps_equal_share(batch, num_parts) (params.h: the metadata kernel prices no longer part).
__device__ __forceinline__ WarpPlan warp_plan(const int* seqlens, int batch, int num_parts,
                                              int fixed_cost, int fixed_head) {
  using namespace plan_detail;
  const int lane = threadIdx.x % 32;
  const bool live = lane < batch;
  const int cap = max(kMaxPlanUnits / max(batch, 1) - fixed_cost, 1);
  WarpPlan w;
  const int pages = live ? min(pages_of(seqlens[lane]), cap) : 0;
  const int incl = warp_inclusive_scan(live ? pages + fixed_cost : 0, lane);
  w.total = __shfl_sync(0xffffffffu, incl, 31);
  w.end = incl - (fixed_cost - fixed_head);
  w.page0 = w.end - pages;
  const int t = max((w.total + num_parts - 1) / num_parts, 1);
  w.per_part = t;
  // This sequence's parts and workspace slots (split sequences only, in batch order).
  w.first = first_unit(w.page0, w.end, fixed_head) / t;
  w.splits = live ? (w.end - 1) / t - w.first + 1 : 0;
  const int slots = w.splits > 1 ? w.splits : 0;
  w.slot = warp_inclusive_scan(slots, lane) - slots;
  return w;
}

// batch_meta row of sequence b (page0_unit, first_part, num_splits, split_slot); every lane calls
// it with the same b.
__device__ __forceinline__ int4 warp_plan_seq(const WarpPlan& w, int b) {
  return make_int4(__shfl_sync(0xffffffffu, w.page0, b), __shfl_sync(0xffffffffu, w.first, b),
                   __shfl_sync(0xffffffffu, w.splits, b), __shfl_sync(0xffffffffu, w.slot, b));
}

// part_meta row of part q (b_begin, b_end, unit_begin, unit_end; b_begin = b_end = 0 for a part
// with no sequence); every lane calls it with the same q. Its sequences are those whose pages end
// after the part's start and whose first unit is before its end: counted by ballot.
__device__ __forceinline__ int4 warp_plan_part(const WarpPlan& w, int q, int batch, int fixed_head) {
  using namespace plan_detail;
  const int lane = threadIdx.x % 32;
  const int64_t begin = int64_t(q) * w.per_part, end = int64_t(q + 1) * w.per_part;
  const bool live = lane < batch;
  const int b_begin = __popc(__ballot_sync(0xffffffffu, live && w.end <= begin));
  const int b_end =
      __popc(__ballot_sync(0xffffffffu, live && first_unit(w.page0, w.end, fixed_head) < end));
  int4 pm = make_int4(0, 0, int(min(begin, int64_t(w.total))), int(min(end, int64_t(w.total))));
  if (b_begin < b_end) {
    pm.x = b_begin;
    pm.y = b_end;
  }
  return pm;
}

}  // namespace mla
