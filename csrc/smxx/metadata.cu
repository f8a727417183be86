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
// Up to kSmemSeqs sequences, end_b and the unit of b's first page live in shared memory and every
// part finds its range by binary search: one read of seqlens, two block scans, one write of each
// output; T may be priced up from the equal share (choose_units_per_part). Larger batches take
// the equal share T0 through global memory (atomics over the parts a sequence touches), slower
// but with no size limit. A decode call that plans for itself makes the same plan in one warp
// (mla/plan.cuh); as a metadata kernel that warp plan measured ~3 µs slower than this one at
// B = 8 (its parts one after another, v22), so it lives only inside the decode call.
#include <climits>
#include <cstdint>

#include "mla/api.h"
#include "mla/plan.cuh"
#include "mla/ptx.cuh"

namespace mla {
namespace {

constexpr int kThreads = 512;
constexpr int kSmemSeqs = 4096;  // 32 KB of shared memory: end_b and page0_b

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

// First unit of sequence b: its first page's, or its start when it has no page.
__device__ __forceinline__ int first_unit_of(int page0, int end, int fixed) {
  return end > page0 ? page0 : page0 - fixed;
}

// Number of leading sequences with key(b) < x, for a key non-decreasing in b: end_b, or the first
// unit when kFirst.
template <bool kFirst>
__device__ __forceinline__ int count_below(const int* end_unit, const int* page0, int n,
                                           int64_t x, int fixed) {
  int lo = 0, hi = n;
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    const int key = kFirst ? first_unit_of(page0[mid], end_unit[mid], fixed) : end_unit[mid];
    if (key < x) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// floor(x / t) for t >= 1: a float estimate, then exact integer correction (one step each way for
// x < 2^24; more, but still exact, beyond).
__device__ __forceinline__ unsigned div_floor(unsigned x, unsigned t, float rcp_t) {
  unsigned q = __float2uint_rz(__uint2float_rz(x) * rcp_t);
  while (q > 0 && q * t > x) --q;
  while ((q + 1) * t <= x) ++q;
  return q;
}

// T = T0 + c for c < kPlanCandidates are priced unless plan_keeps_equal_share (params.h):
// one candidate per warp of the kernel's 512 threads.
constexpr int kPlanCandidates = 16;

// The cheapest part size of kPlanCandidates, in every lane of the warp: lane c (< kPlanCandidates)
// brings the cuts of T = t0 + c, priced as T + kCutCostPages * ceil(cuts / parts used), ties to
// fewer cuts, then to the smaller T.
__device__ __forceinline__ int cheapest_units_per_part(int t0, int lane_cuts, int total) {
  const int lane = threadIdx.x % 32;
  int t = t0 + lane;
  int cuts = lane < kPlanCandidates ? lane_cuts : INT_MAX;
  const int used = (total + t - 1) / t;
  int64_t cost = lane < kPlanCandidates
                     ? t + int64_t(kCutCostPages) * ((int64_t(cuts) + used - 1) / used)
                     : INT64_MAX;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const int64_t c2 = __shfl_xor_sync(0xffffffffu, cost, off);
    const int k2 = __shfl_xor_sync(0xffffffffu, cuts, off);
    const int t2 = __shfl_xor_sync(0xffffffffu, t, off);
    if (c2 < cost || (c2 == cost && (k2 < cuts || (k2 == cuts && t2 < t)))) {
      cost = c2;
      cuts = k2;
      t = t2;
    }
  }
  return t;
}

// A part boundary inside a sequence costs a second prologue and epilogue, a partial result in
// fp32 and its share of the combine; when the batch gives every part a sizeable share of a
// sequence, slightly longer parts may cut none (a uniform batch of B <= num_parts sequences: one
// whole sequence per part instead of every sequence cut in two). Warp w counts the cuts of
// T = T0 + w; lane i of warp 0 prices T0 + i as T + kCutCostPages * ceil(cuts / parts used) and the
// cheapest wins, ties to fewer cuts, then to the smaller T.
__device__ int choose_units_per_part(const MetadataParams& p, int total, const int* end_unit,
                                     const int* page0_unit, int* scratch) {
  constexpr int kCandidates = kThreads / 32;
  static_assert(kCandidates == kPlanCandidates, "one candidate per warp");
  const int t0 = units_per_part(p, total);
  if (plan_keeps_equal_share(p.batch, p.num_parts)) return t0;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  {
    const unsigned t = unsigned(t0 + warp);
    const float rcp = 1.f / float(t);
    int cuts = 0;
    for (int b = lane; b < p.batch; b += 32) {
      const unsigned first = unsigned(first_unit_of(page0_unit[b], end_unit[b], p.fixed_head));
      cuts += int(div_floor(unsigned(end_unit[b]) - 1u, t, rcp) - div_floor(first, t, rcp));
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) cuts += __shfl_xor_sync(0xffffffffu, cuts, off);
    if (lane == 0) scratch[warp] = cuts;
  }
  __syncthreads();
  if (warp == 0) {
    const int t = cheapest_units_per_part(t0, lane < kCandidates ? scratch[lane] : INT_MAX, total);
    __syncwarp();
    if (lane == 0) scratch[0] = t;
  }
  __syncthreads();
  const int best = scratch[0];
  __syncthreads();  // scratch is reused
  return best;
}

__global__ void __launch_bounds__(kThreads) metadata_smem_kernel(const MetadataParams p) {
  __shared__ int warp_sums[32];
  __shared__ int end_unit[kSmemSeqs];
  __shared__ int page0_unit[kSmemSeqs];
  // The decode kernel may start its prologue now; it waits for this grid before reading the plan.
  ptx::griddep_launch_dependents();
  int4* part_meta = reinterpret_cast<int4*>(p.part_meta);
  int4* batch_meta = reinterpret_cast<int4*>(p.batch_meta);

  // Pass 1: unit range of every sequence.
  int carry = 0;
  for (int base = 0; base < p.batch; base += kThreads) {
    const int b = base + threadIdx.x;
    const int pages = b < p.batch ? num_pages_of(p, b) : 0;
    const int cost = b < p.batch ? pages + p.fixed_cost : 0;
    int chunk_total;
    const int end = carry + block_inclusive_scan(cost, chunk_total, warp_sums);
    if (b < p.batch) {  // the end of its pages: its charge's tail follows them
      end_unit[b] = end - (p.fixed_cost - p.fixed_head);
      page0_unit[b] = end_unit[b] - pages;
    }
    carry += chunk_total;
  }
  const int total = carry;
  __syncthreads();
  const int per_part = choose_units_per_part(p, total, end_unit, page0_unit, warp_sums);

  // Pass 2: each sequence's parts and workspace slots.
  carry = 0;
  for (int base = 0; base < p.batch; base += kThreads) {
    const int b = base + threadIdx.x;
    int first = 0, splits = 0;
    if (b < p.batch) {
      first = first_unit_of(page0_unit[b], end_unit[b], p.fixed_head) / per_part;
      splits = (end_unit[b] - 1) / per_part - first + 1;
    }
    int chunk_total;
    const int slots = splits > 1 ? splits : 0;
    const int incl = block_inclusive_scan(slots, chunk_total, warp_sums);
    if (b < p.batch) batch_meta[b] = make_int4(page0_unit[b], first, splits, carry + incl - slots);
    carry += chunk_total;
  }

  // Each part's range of sequences.
  for (int q = threadIdx.x; q < p.num_parts; q += kThreads) {
    int4 pm = part_bounds(q, per_part, total);
    const int64_t begin = int64_t(q) * per_part, end = int64_t(q + 1) * per_part;
    const int b_begin = count_below<false>(end_unit, page0_unit, p.batch, begin + 1, p.fixed_head);
    const int b_end = count_below<true>(end_unit, page0_unit, p.batch, end, p.fixed_head);
    if (b_begin < b_end) {
      pm.x = b_begin;
      pm.y = b_end;
    }
    part_meta[q] = pm;
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
  if (params.batch <= kSmemSeqs) {
    metadata_smem_kernel<<<1, kThreads, 0, stream>>>(params);
  } else {
    metadata_global_kernel<<<1, kThreads, 0, stream>>>(params);
  }
  return cudaGetLastError();
}

}  // namespace mla
