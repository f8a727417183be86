// Split-KV scheduler metadata, computed on the GPU from seqlens (no host sync, fixed-size
// outputs, so it can be captured in a CUDA graph). One CTA; see docs/design.md for the plan.
//
// Sequence b covers units [start_b, start_b + head + pages_b + tail) (its charge's head, its
// pages, its charge's tail: params.h plan_charge; all sequences end to end). end_b is the end of
// its pages, and it touches parts first_b ..= last_b, with first_b = first_unit_b / T (the unit
// of its first page, or end_b - head for an empty sequence) and last_b = (end_b - 1) / T. Both are
// monotone in b, so part q's sequences are the contiguous range of b with first_b <= q <= last_b:
// b_begin = #{b : end_b <= q T}, b_end = #{b : first_unit_b < (q + 1) T}.
//
// Up to kSmemSeqs sequences, one CTA plans with each thread's sequences in registers (one per
// thread up to kThreads, up to eight beyond) and end_b and first_unit_b in shared memory, in three
// barriers: a scan of the units, the pricing of the part size (T may go up from the equal share
// T0 when a few units more cut no sequence), a scan of the workspace slots; every part finds its
// range of sequences by binary search (v26: 0.7-2.9 µs less per call than v25's ten-barrier form
// at B = 33-512, docs/perf.md). Larger batches take the equal share T0 through global memory
// (atomics over the parts a sequence touches), slower but with no size limit. A decode call that
// plans for itself makes the same plan in one warp (mla/plan.cuh); as a metadata kernel that warp
// plan measured ~3 µs slower than the shared-memory one at B = 8 (its parts one after another,
// v22), so it lives only inside the decode call.
#include <climits>
#include <cstdint>

#include "mla/api.h"
#include "mla/plan.cuh"
#include "mla/ptx.cuh"

namespace mla {
namespace {

constexpr int kThreads = 512;
constexpr int kSmemSeqs = 4096;  // 32 KB of shared memory: end_b and first_unit_b

// Inclusive prefix sum over the CTA; `total` receives the sum of all threads' values.
__device__ int block_inclusive_scan(int v, int& total, int* warp_sums) {
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const int n = __shfl_up_sync(0xffffffffu, v, off);
    if (lane >= off) v += n;
  }
  if (lane == 31) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    int w = lane < kThreads / 32 ? warp_sums[lane] : 0;
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
      const int n = __shfl_up_sync(0xffffffffu, w, off);
      if (lane >= off) w += n;
    }
    warp_sums[lane] = w;  // inclusive prefix over warps
  }
  __syncthreads();
  if (warp > 0) v += warp_sums[warp - 1];
  total = warp_sums[kThreads / 32 - 1];
  __syncthreads();  // warp_sums is reused by the next call
  return v;
}

// Planned pages of sequence b: its pages, capped so that the batch's units fit (kMaxPlanUnits).
__device__ __forceinline__ int num_pages_of(const MetadataParams& p, int b) {
  const int cap = max(kMaxPlanUnits / max(p.batch, 1) - p.fixed_cost, 1);
  return min(pages_of(p.seqlens[b]), cap);
}

// Units per part: an equal share of the total.
__device__ __forceinline__ int units_per_part(const MetadataParams& p, int total) {
  return max((total + p.num_parts - 1) / p.num_parts, 1);
}

__device__ __forceinline__ int4 part_bounds(int q, int per_part, int total) {
  const int begin = int(min(int64_t(q) * per_part, int64_t(total)));
  const int end = int(min(int64_t(q + 1) * per_part, int64_t(total)));
  return make_int4(0, 0, begin, end);
}

// ---- The shared-memory plan: up to kSmemSeqs sequences, kSeqs of them per thread ---------------

constexpr int kWarps = kThreads / 32;

// Exclusive prefix over the CTA of the warps' totals (each warp's lane 31 inclusive scan), from
// `sums` after the barrier that follows their writes: every warp reads all kWarps sums itself, so
// no second barrier. Returns the sum of the warps before this one; `total` gets all of them.
__device__ __forceinline__ int warps_before(const int* sums, int& total) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int v = lane < kWarps ? sums[lane] : 0;
#pragma unroll
  for (int off = 1; off < kWarps; off <<= 1) {
    const int n = __shfl_up_sync(0xffffffffu, v, off);
    if (lane >= off) v += n;
  }
  total = __shfl_sync(0xffffffffu, v, kWarps - 1);
  const int before = __shfl_sync(0xffffffffu, v, max(warp - 1, 0));
  return warp > 0 ? before : 0;
}

// Number of leading keys below x, for keys[0..n) non-decreasing; two searches at once (their
// loads overlap), by binary lifting: pos moves up by halving steps while the key before it is
// low. Branch-free (the index is clamped, the test predicated): a divergent branch per step cost
// ~0.1 µs a step.
__device__ __forceinline__ int2 count_below2(const int* keys_a, int x_a, const int* keys_b,
                                             int x_b, int n) {
  int pa = 0, pb = 0;
  for (int step = n > 0 ? 1 << (31 - __clz(n)) : 0; step > 0; step >>= 1) {
    const int ka = keys_a[min(pa + step, n) - 1];
    const int kb = keys_b[min(pb + step, n) - 1];
    pa += pa + step <= n && ka < x_a ? step : 0;
    pb += pb + step <= n && kb < x_b ? step : 0;
  }
  return make_int2(pa, pb);
}

// The part-size pricing of docs/design.md (T = T0 + c, c < 16, costs T + kCutCostPages *
// ceil(cuts / parts used), ties to fewer cuts, then to the smaller T; reference.split_kv_plan)
// picks the smallest T in T0 .. T0 + kCutCostPages that cuts no sequence, else T0: a boundary
// q * T cuts at most one sequence and there are used - 1 of them, so ceil(cuts / used) is 0 or 1,
// and no T past T0 + kCutCostPages can beat T0's T0 + kCutCostPages. Only whether a candidate cuts
// is needed, then: bit c of the mask says T0 + c cuts one of the thread's sequences.
constexpr int kCutCandidates = kCutCostPages + 1;
static_assert(kCutCandidates <= 16, "the pricing looks at most 16 part sizes");

__device__ __forceinline__ unsigned cutting_candidates(int first, int end, int t0) {
  // A multiple of t lies in (first, end - 1] when first's remainder plus the sequence's span
  // (end - 1 - first) reaches t: one division per candidate.
  const unsigned span = unsigned(end - 1 - first);
  unsigned mask = 0;
#pragma unroll
  for (int c = 0; c < kCutCandidates; ++c) {
    const unsigned t = unsigned(t0 + c);
    mask |= unsigned(unsigned(first) % t + span >= t) << c;
  }
  return mask;
}

// Each thread's sequences live in registers (kSeqs at most, consecutive); their pages' ends and
// first units in shared memory for the parts' binary searches. Three barriers: the units' scan,
// the arrays and the pricing masks, the workspace slots' scan.
template <int kSeqs>
__global__ void __launch_bounds__(kThreads) metadata_smem_kernel(const MetadataParams p) {
  constexpr int kMaxSeqs = kThreads * kSeqs;
  __shared__ int unit_sums[kWarps];
  __shared__ int slot_sums[kWarps];
  __shared__ unsigned cut_masks[kWarps];
  __shared__ int end_unit[kMaxSeqs];
  __shared__ int first_unit[kMaxSeqs];
  // The decode kernel may start its prologue now; it waits for this grid before reading the plan.
  ptx::griddep_launch_dependents();
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  // Thread t holds sequences b0 .. b0 + per_thread - 1, per_thread = ceil(batch / kThreads) so
  // that every thread has a share (kSeqs is its most).
  const int per_thread = kSeqs == 1 ? 1 : (p.batch + kThreads - 1) / kThreads;
  const int b0 = threadIdx.x * per_thread;
  const auto live = [&](int i) { return (kSeqs == 1 || i < per_thread) && b0 + i < p.batch; };

  // Pass 1: every sequence's units, end to end.
  int pages[kSeqs], end[kSeqs] = {};
  int mine = 0;
#pragma unroll
  for (int i = 0; i < kSeqs; ++i) {
    pages[i] = live(i) ? num_pages_of(p, b0 + i) : 0;
    mine += live(i) ? pages[i] + p.fixed_cost : 0;
  }
  const int incl = plan_detail::warp_inclusive_scan(mine, lane);
  if (lane == 31) unit_sums[warp] = incl;
  __syncthreads();
  int total;
  int unit = warps_before(unit_sums, total) + incl - mine;  // this thread's first sequence's start
  const int t0 = units_per_part(p, total);
  const bool price = !plan_keeps_equal_share(p.batch, p.num_parts);
  unsigned cuts = 0;
#pragma unroll
  for (int i = 0; i < kSeqs; ++i) {
    if (live(i)) {
      unit += pages[i] + p.fixed_cost;
      end[i] = unit - (p.fixed_cost - p.fixed_head);  // its charge's tail follows its pages
      const int first = plan_detail::first_unit(end[i] - pages[i], end[i], p.fixed_head);
      end_unit[b0 + i] = end[i];
      first_unit[b0 + i] = first;
      if (price) cuts |= cutting_candidates(first, end[i], t0);
    }
  }
  cuts = __reduce_or_sync(0xffffffffu, cuts);
  if (lane == 0) cut_masks[warp] = cuts;
  __syncthreads();
  int per_part = t0;
  if (price) {
    unsigned all = 0;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) all |= cut_masks[w];
    const unsigned clean = ~all & ((1u << kCutCandidates) - 1);
    per_part = t0 + (clean ? __ffs(int(clean)) - 1 : 0);
  }

  // Pass 2: each sequence's parts and workspace slots (split sequences only, in batch order).
  int first_part[kSeqs], splits[kSeqs];
  int slots = 0;
#pragma unroll
  for (int i = 0; i < kSeqs; ++i) {
    first_part[i] = splits[i] = 0;
    if (live(i)) {
      const int first = plan_detail::first_unit(end[i] - pages[i], end[i], p.fixed_head);
      first_part[i] = unsigned(first) / unsigned(per_part);
      splits[i] = int(unsigned(end[i] - 1) / unsigned(per_part)) - first_part[i] + 1;
      slots += splits[i] > 1 ? splits[i] : 0;
    }
  }
  const int slot_incl = plan_detail::warp_inclusive_scan(slots, lane);
  if (lane == 31) slot_sums[warp] = slot_incl;

  // Each part's range of sequences: those whose pages end after its start and whose first unit
  // is before its end (the arrays are complete since the barrier above). Parts go to the last
  // threads, which hold no sequence in a batch of up to kThreads - num_parts: both run at once.
  for (int q = kThreads - 1 - threadIdx.x; q < p.num_parts; q += kThreads) {
    int4 pm = part_bounds(q, per_part, total);
    const int64_t begin = int64_t(q) * per_part, part_end = int64_t(q + 1) * per_part;
    // Keys stay below 2^30: clamped to int, the searches compare in 32 bits.
    const int2 r = count_below2(end_unit, int(min(begin + 1, int64_t(INT_MAX))), first_unit,
                                int(min(part_end, int64_t(INT_MAX))), p.batch);
    if (r.x < r.y) {
      pm.x = r.x;
      pm.y = r.y;
    }
    reinterpret_cast<int4*>(p.part_meta)[q] = pm;
  }
  __syncthreads();
  int all_slots;
  int slot = warps_before(slot_sums, all_slots) + slot_incl - slots;
#pragma unroll
  for (int i = 0; i < kSeqs; ++i) {
    if (live(i)) {
      reinterpret_cast<int4*>(p.batch_meta)[b0 + i] =
          make_int4(end[i] - pages[i], first_part[i], splits[i], slot);
      slot += splits[i] > 1 ? splits[i] : 0;
    }
  }
}

// The equal-share plan (T = T0, no pricing) for any batch size, through global memory.
__global__ void __launch_bounds__(kThreads) metadata_global_kernel(const MetadataParams p) {
  __shared__ int warp_sums[32];
  ptx::griddep_launch_dependents();
  int4* part_meta = reinterpret_cast<int4*>(p.part_meta);
  int4* batch_meta = reinterpret_cast<int4*>(p.batch_meta);

  // Pass 1: unit offset of every sequence's first page.
  int carry = 0;
  for (int base = 0; base < p.batch; base += kThreads) {
    const int b = base + threadIdx.x;
    const int cost = b < p.batch ? num_pages_of(p, b) + p.fixed_cost : 0;
    int chunk_total;
    const int incl = block_inclusive_scan(cost, chunk_total, warp_sums);
    if (b < p.batch) batch_meta[b].x = carry + incl - cost + p.fixed_head;
    carry += chunk_total;
  }
  const int total = carry;
  const int per_part = units_per_part(p, total);

  for (int q = threadIdx.x; q < p.num_parts; q += kThreads) {
    int4 pm = part_bounds(q, per_part, total);
    pm.x = INT_MAX;
    part_meta[q] = pm;
  }
  __syncthreads();

  // Pass 2: the parts each sequence's units fall into, and its workspace slots.
  carry = 0;
  for (int base = 0; base < p.batch; base += kThreads) {
    const int b = base + threadIdx.x;
    int first = 0, last = 0, splits = 0;
    if (b < p.batch) {
      const int pages = num_pages_of(p, b);
      const int page0 = batch_meta[b].x;
      first = (pages > 0 ? page0 : page0 - p.fixed_head) / per_part;
      last = (page0 + pages - 1) / per_part;
      last = max(first, last);
      splits = last - first + 1;
    }
    int chunk_total;
    const int slots = splits > 1 ? splits : 0;
    const int incl = block_inclusive_scan(slots, chunk_total, warp_sums);
    if (b < p.batch) {
      batch_meta[b].y = first;
      batch_meta[b].z = splits;
      batch_meta[b].w = carry + incl - slots;
      for (int q = first; q <= last; ++q) {
        atomicMin(&part_meta[q].x, b);
        atomicMax(&part_meta[q].y, b + 1);
      }
    }
    carry += chunk_total;
  }
  __syncthreads();
  for (int q = threadIdx.x; q < p.num_parts; q += kThreads) {
    if (part_meta[q].x == INT_MAX) part_meta[q].x = part_meta[q].y = 0;
  }
}

}  // namespace

cudaError_t run_metadata(const MetadataParams& params, cudaStream_t stream) {
  if (params.batch <= kThreads) {
    metadata_smem_kernel<1><<<1, kThreads, 0, stream>>>(params);
  } else if (params.batch <= kSmemSeqs) {
    metadata_smem_kernel<kSmemSeqs / kThreads><<<1, kThreads, 0, stream>>>(params);
  } else {
    metadata_global_kernel<<<1, kThreads, 0, stream>>>(params);
  }
  return cudaGetLastError();
}

}  // namespace mla
