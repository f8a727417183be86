// Split-KV scheduler metadata, computed on the GPU from seqlens (no host sync, fixed-size
// outputs, so it can be captured in a CUDA graph). One CTA; see docs/design.md for the plan.
#include <climits>
#include <cstdint>

#include "mla/api.h"
#include "mla/ptx.cuh"

namespace mla {
namespace {

constexpr int kThreads = 512;

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

__device__ __forceinline__ int num_pages_of(const int* seqlens, int b) {
  return (max(seqlens[b], 0) + kPageSize - 1) / kPageSize;
}

__global__ void __launch_bounds__(kThreads) metadata_kernel(const MetadataParams p) {
  __shared__ int warp_sums[32];
  // The decode kernel may start its prologue now; it waits for this grid before reading the plan.
  ptx::griddep_launch_dependents();
  int4* part_meta = reinterpret_cast<int4*>(p.part_meta);
  int4* batch_meta = reinterpret_cast<int4*>(p.batch_meta);

  // Pass 1: unit offset of every sequence (pages + a fixed cost each, laid end to end).
  int carry = 0;
  for (int base = 0; base < p.batch; base += kThreads) {
    const int b = base + threadIdx.x;
    const int cost = b < p.batch ? num_pages_of(p.seqlens, b) + kFixedCostPages : 0;
    int chunk_total;
    const int incl = block_inclusive_scan(cost, chunk_total, warp_sums);
    if (b < p.batch) batch_meta[b].x = carry + incl - cost + kFixedCostPages;  // first page's unit
    carry += chunk_total;
  }
  const int total = carry;
  const int per_part = (total + p.num_parts - 1) / p.num_parts;

  for (int q = threadIdx.x; q < p.num_parts; q += kThreads) {
    const int begin = int(min(int64_t(q) * per_part, int64_t(total)));
    const int end = int(min(int64_t(q + 1) * per_part, int64_t(total)));
    part_meta[q] = make_int4(INT_MAX, 0, begin, end);
  }
  __syncthreads();

  // Pass 2: the parts each sequence's pages fall into, its workspace slots, and each part's
  // range of sequences. A part holds at most two split pieces (its first and last sequence),
  // so the slots never exceed 2 * num_parts.
  carry = 0;
  for (int base = 0; base < p.batch; base += kThreads) {
    const int b = base + threadIdx.x;
    int first = 0, last = 0, splits = 0;
    if (b < p.batch) {
      const int pages = num_pages_of(p.seqlens, b);
      const int page0 = batch_meta[b].x;
      const int start = pages > 0 ? page0 : page0 - kFixedCostPages;
      first = start / per_part;
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
  metadata_kernel<<<1, kThreads, 0, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace mla
