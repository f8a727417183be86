// Split-KV combine: merges the partial results of sequences cut across parts (bf16, each
// normalised by its own row sums), weighting each piece by exp(lse_piece - lse_total) in fp32.
// Arch-agnostic. Two shapes of the same merge, launched with PDL (the CTAs start while the
// decode kernel drains and wait for it before reading its pieces). The plan (part_meta,
// batch_meta) is read before that wait: the metadata kernel that wrote it completed before the
// decode kernel passed its own wait, and this grid launches only after every decode CTA has
// passed it, so the plan's round trip overlaps the decode kernel's tail (docs/perf.md v15). A
// call that plans for itself (plan_in_kernel, small batches) has no metadata kernel: on a small
// grid each warp computes the plan from seqlens (mla/plan.cuh) before the wait, as the decode
// kernel did; a larger grid reads the plan the decode kernel wrote, after the wait.
//
// - Few pieces per sequence (a large batch): one warp per row, four rows per CTA. A split
//   sequence is the last sequence of the part where it starts, so the grid is (parts x row
//   blocks), not the batch, and CTAs of parts that start no split sequence leave at once.
// - Many pieces per sequence (a small batch over long contexts: up to ~num_parts pieces): one CTA
//   per (sequence, row), kGroups x 128 threads (1, 2 or 4 groups by the expected piece count),
//   each thread one float4 of the 512 columns and every kGroups-th piece. Its first kUnroll
//   pieces are loaded before the row's LSE is reduced, so the merge costs about one round of
//   memory latency after the decode kernel, not one per piece group. On a small grid it runs the
//   merge once more before the wait, on unfinished pieces and for nothing but its instruction
//   cache (kWarm).
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "mla/api.h"
#include "mla/launch.h"
#include "mla/plan.cuh"
#include "mla/ptx.cuh"
#include "mla/schedule.cuh"

namespace mla {
namespace {

__device__ __forceinline__ void axpy(float4& acc, float w, const float4& v) {
  acc.x += w * v.x;
  acc.y += w * v.y;
  acc.z += w * v.z;
  acc.w += w * v.w;
}

// A load of the workspace, through L2 only with kL2Only: the warm pass of combine_seq_kernel
// reads it before the decode kernel has finished, and must leave no stale line in L1 for the
// pass that counts.
template <bool kL2Only, typename T>
__device__ __forceinline__ T load_piece(const T* ptr) {
  if constexpr (kL2Only) {
    return __ldcg(ptr);
  } else {
    return *ptr;
  }
}

// Four bf16 partial values (8 bytes) as fp32.
template <bool kL2Only = false>
__device__ __forceinline__ float4 load_bf16x4(const __nv_bfloat16* ptr) {
  const uint2 u = load_piece<kL2Only>(reinterpret_cast<const uint2*>(ptr));
  const float2 lo = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.x));
  const float2 hi = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.y));
  return make_float4(lo.x, lo.y, hi.x, hi.y);
}

__device__ __forceinline__ uint2 pack_bf16x4(const float4& v) {
  uint2 packed;
  packed.x = ptx::pack_bf16x2(v.x, v.y);
  packed.y = ptx::pack_bf16x2(v.z, v.w);
  return packed;
}

// Row r of sequence b (its first query token tok0) in out and lse.
__device__ __forceinline__ __nv_bfloat16* out_row(const DecodeParams& p, int b, int tok0, int r) {
  return p.out + int64_t(b) * p.out_batch_stride + int64_t(tok0 + r / p.h_q) * p.out_token_stride +
         int64_t(r % p.h_q) * p.out_head_stride;
}

__device__ __forceinline__ float* lse_out(const DecodeParams& p, int b, int tok0, int r) {
  return p.lse + int64_t(b) * p.lse_batch_stride + int64_t(tok0 + r / p.h_q) * p.lse_token_stride +
         int64_t(r % p.h_q) * p.lse_head_stride;
}

// Running (max, sum of exp(x - max)) of LSE values. An empty piece has lse = -inf and adds
// nothing; a poisoned one (NaN) makes the sum NaN, which the output then carries.
struct LseSum {
  float m = -INFINITY, s = 0.f;

  __device__ __forceinline__ void add(float x) {
    if (x > m) {
      s = s * expf(m - x) + 1.f;
      m = x;
    } else if (x != -INFINITY) {
      s += expf(x - m);
    }
  }
  __device__ __forceinline__ void merge(float m2, float s2) {
    const float mm = fmaxf(m, m2);
    if (mm == -INFINITY) {
      s += s2;
      return;
    }
    s = s * expf(m - mm) + s2 * expf(m2 - mm);
    m = mm;
  }
  __device__ __forceinline__ void warp_reduce() {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      merge(__shfl_xor_sync(0xffffffffu, m, off), __shfl_xor_sync(0xffffffffu, s, off));
    }
  }
  __device__ __forceinline__ float base() const { return m == -INFINITY ? 0.f : m; }
  __device__ __forceinline__ float inv_sum() const { return s > 0.f ? 1.f / s : 0.f; }
  // Natural-log LSE of the whole row: -inf when every piece is empty, NaN when one is poisoned.
  __device__ __forceinline__ float lse() const { return s == 0.f ? -INFINITY : m + logf(s); }
};

constexpr int kColsPerLane = kDimV / 32;  // warp-per-row kernel: four groups of 4 at lane*4 + 128*j
constexpr int kRowWarps = 4;

// kExitEarly: a warp with nothing to merge leaves before the wait rather than after it. Early
// exits end the grid's empty CTAs while the decode kernel drains, which wins when few CTAs have
// work (about one piece per sequence); with a few pieces per sequence, the CTAs that launch in
// their place crowd the working ones onto the SMs that freed first, and leaving after the wait
// (which spreads them as before) wins (v15: 16 heads B = 32 L = 1k 0.94x early, 1.02x late).
template <bool kExitEarly>
__global__ void __launch_bounds__(kRowWarps * 32)
    combine_rows_kernel(const __grid_constant__ DecodeParams p) {
  const int part = blockIdx.x;
  // A self-planned call: the decode kernel wrote the plan (a warp plan in each of this grid's
  // warps would cost more than the wait; v22).
  if (p.plan_in_kernel) ptx::griddep_wait();
  const int4 pm = reinterpret_cast<const int4*>(p.part_meta)[part];
  const int b = max(pm.y - 1, 0);  // the part's last sequence (batch >= 1 here)
  const int4 bm = reinterpret_cast<const int4*>(p.batch_meta)[b];
  const int num_splits = bm.z;
  const int lane = threadIdx.x % 32;
  const int r = blockIdx.y * kRowWarps + threadIdx.x / 32;
  const QuerySpan qs = query_span(p, b);
  // No sequence, or not split, or combined by its first part, or past the sequence's rows
  // (varlen: no piece holds them).
  const bool idle = pm.x >= pm.y || num_splits <= 1 || bm.y != part || r >= qs.rows;
  if (kExitEarly && idle) return;
  ptx::griddep_wait();
  if (idle) return;

  const float* lse_part = p.lse_accum + int64_t(bm.w) * p.rows + r;
  LseSum t;
  for (int s = lane; s < num_splits; s += 32) t.add(lse_part[int64_t(s) * p.rows]);
  t.warp_reduce();
  const float base = t.base(), inv_sum = t.inv_sum();

  float4 acc[kColsPerLane / 4];
#pragma unroll
  for (int j = 0; j < kColsPerLane / 4; ++j) acc[j] = make_float4(0.f, 0.f, 0.f, 0.f);
  // Unrolled so that several pieces' loads are in flight at once.
#pragma unroll 4
  for (int s = 0; s < num_splits; ++s) {
    const float w = expf(lse_part[int64_t(s) * p.rows] - base) * inv_sum;
    const __nv_bfloat16* o = p.o_accum + (int64_t(bm.w + s) * p.rows + r) * kDimV;
#pragma unroll
    for (int j = 0; j < kColsPerLane / 4; ++j) {
      const float4 v = load_bf16x4(o + j * 128 + lane * 4);
      // w == 0 for an empty piece, whose o is 0: skip the product so no 0 * inf appears.
      if (w != 0.f) axpy(acc[j], w, v);
    }
  }
  __nv_bfloat16* dst = out_row(p, b, qs.tok0, r);
#pragma unroll
  for (int j = 0; j < kColsPerLane / 4; ++j) {
    *reinterpret_cast<uint2*>(dst + j * 128 + lane * 4) = pack_bf16x4(acc[j]);
  }
  if (lane == 0) *lse_out(p, b, qs.tok0, r) = t.lse();
}

constexpr int kUnroll = 8;  // pieces per thread loaded before the LSE reduction

// kWarm: the merge runs twice, the first time before the PDL wait on whatever the workspace
// holds then (nothing stored; the loads are in bounds, the plan having been written before the
// decode kernel started), so that the pass after the wait runs from a warm instruction cache.
// It is one loop, not two copies of the code. On a small grid this took 1.01-1.12x off the
// step, on a larger one it cost up to 0.93x (launch_seq; docs/perf.md v21).
template <int kGroups, bool kWarm>
__global__ void __launch_bounds__(kGroups * kDimV / 4)
    combine_seq_kernel(const __grid_constant__ DecodeParams p) {
  constexpr int kThreads = kGroups * kDimV / 4;
  __shared__ float4 partial[kGroups > 1 ? kGroups - 1 : 1][kDimV / 4];
  __shared__ float2 red[kThreads / 32];
  const int b = blockIdx.x;
  const int r = blockIdx.y;
  // A self-planned call: on a small grid each warp plans for itself before the wait, on a larger
  // one the grid waits for the plan the decode kernel wrote (thousands of warp plans cost more
  // than the wait, v22).
  int4 bm;
  if (p.plan_in_kernel && kWarm) {
    const WarpPlan plan =
        warp_plan(p.seqlens, p.batch, p.num_parts, p.plan_fixed_cost, p.plan_fixed_head);
    bm = warp_plan_seq(plan, b);
  } else {
    if (p.plan_in_kernel) ptx::griddep_wait();
    bm = reinterpret_cast<const int4*>(p.batch_meta)[b];
  }
  const int num_splits = bm.z;
  const QuerySpan qs = query_span(p, b);
  if (num_splits <= 1 || r >= qs.rows) return;  // whole CTA: no barrier is left waiting

  const int tid = threadIdx.x;
  const int c4 = tid % (kDimV / 4);  // this thread's 4 columns of the row
  const int g = tid / (kDimV / 4);   // pieces g, g + kGroups, ...
  const float* lse_part = p.lse_accum + int64_t(bm.w) * p.rows + r;
  const __nv_bfloat16* o_part = p.o_accum + (int64_t(bm.w) * p.rows + r) * kDimV + c4 * 4;
  const int64_t piece_stride = int64_t(p.rows) * kDimV;

#pragma unroll 1
  for (int pass = kWarm ? 0 : 1; pass < 2; ++pass) {
    if (pass == 1) ptx::griddep_wait();
    float4 v[kUnroll];
    float lv[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int s = g + u * kGroups;
      v[u] = s < num_splits ? load_bf16x4<kWarm>(o_part + s * piece_stride)
                            : make_float4(0.f, 0.f, 0.f, 0.f);
      lv[u] = s < num_splits ? load_piece<kWarm>(lse_part + int64_t(s) * p.rows) : -INFINITY;
    }

    LseSum t;
    for (int s = tid; s < num_splits; s += kThreads) {
      t.add(load_piece<kWarm>(lse_part + int64_t(s) * p.rows));
    }
    t.warp_reduce();
    if (tid % 32 == 0) red[tid / 32] = make_float2(t.m, t.s);
    __syncthreads();
    t = LseSum();
#pragma unroll
    for (int i = 0; i < kThreads / 32; ++i) t.merge(red[i].x, red[i].y);  // same order everywhere
    const float base = t.base(), inv_sum = t.inv_sum();

    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const float w = expf(lv[u] - base) * inv_sum;
      if (w != 0.f) axpy(acc, w, v[u]);  // w == 0: empty piece or none (no 0 * inf)
    }
#pragma unroll 4
    for (int s = g + kUnroll * kGroups; s < num_splits; s += kGroups) {
      const float w = expf(load_piece<kWarm>(lse_part + int64_t(s) * p.rows) - base) * inv_sum;
      const float4 x = load_bf16x4<kWarm>(o_part + s * piece_stride);
      if (w != 0.f) axpy(acc, w, x);
    }

    if constexpr (kGroups > 1) {
      if (g > 0) partial[g - 1][c4] = acc;
      __syncthreads();
      if (g == 0) {
#pragma unroll
        for (int i = 0; i < kGroups - 1; ++i) {
          const float4 x = partial[i][c4];
          acc.x += x.x;
          acc.y += x.y;
          acc.z += x.z;
          acc.w += x.w;
        }
      }
    }
    if (pass == 1) {
      if (g == 0) {
        *reinterpret_cast<uint2*>(out_row(p, b, qs.tok0, r) + c4 * 4) = pack_bf16x4(acc);
        if (tid == 0) *lse_out(p, b, qs.tok0, r) = t.lse();
      }
    } else {
      // The first pass's result is dropped; this keeps its loads and arithmetic in the code.
      const float lse = t.lse();
      asm volatile("" ::"f"(acc.x), "f"(acc.y), "f"(acc.z), "f"(acc.w), "f"(lse));
      __syncthreads();  // red and partial are written again by the second pass
    }
  }
}

// Pieces per split sequence, estimated on the host (the lengths are on the device): the plan of a
// batch whose every sequence fills the block table (max_pages pages plus the planner's charge).
// That is num_parts / batch for a table wider than the sequences (vLLM's, max_model_len wide),
// and close to the real count for a table cut to the batch's longest sequence, where
// num_parts / batch overestimates short contexts: 32 heads, B = 8, L = 1k, 132 parts is 16
// by the part count and 9 by the plan (docs/perf.md v20).
int expected_pieces(const DecodeParams& params) {
  const int by_parts = params.num_parts / params.batch;
  const PlanCharge charge = plan_charge(params.batch, params.rows);
  const int64_t units = int64_t(params.max_pages) + charge.head + charge.tail;
  const int64_t per_part = (params.batch * units + params.num_parts - 1) / params.num_parts;
  return static_cast<int>(std::min<int64_t>(by_parts, units / std::max<int64_t>(per_part, 1)));
}

// The per-(sequence, row) kernel with kGroups piece groups, with its first pass before the wait
// while the grid has at most kWarmMaxGroups groups of 128 threads in all (batch x rows x
// kGroups): measured 1.01-1.12x up to 256 and 0.93-0.99x at 512 (docs/perf.md v21).
constexpr int64_t kWarmMaxGroups = 256;

template <int kGroups>
cudaError_t launch_seq(dim3 grid, cudaStream_t stream, const DecodeParams& params) {
  constexpr int kThreads = kGroups * kDimV / 4;
  if (int64_t(params.batch) * params.rows * kGroups <= kWarmMaxGroups) {
    return launch_pdl(combine_seq_kernel<kGroups, true>, grid, dim3(kThreads), 0, stream, params);
  }
  return launch_pdl(combine_seq_kernel<kGroups, false>, grid, dim3(kThreads), 0, stream, params);
}

}  // namespace

cudaError_t run_combine(const DecodeParams& params, cudaStream_t stream) {
  // Many pieces per sequence by the part count: a CTA per (sequence, row), with as many piece
  // groups as the expected pieces call for and keep the grid resident beside the decode
  // kernel's tail (measured, docs/perf.md v7; thresholds v20). The choice between the two
  // shapes stays with the part count: at 128 rows, B = 8, the warp per row that the estimate
  // (7 pieces) would pick measured level at L = 1k and 0.975x at L = 4k in separate processes
  // (v21). Few: a warp per row, leaving before the wait when there is about one piece per
  // sequence (the early exit was measured against that count, v15).
  if (params.num_parts / params.batch >= 8) {
    const int pieces = expected_pieces(params);
    const dim3 grid(params.batch, params.rows);
    if (pieces >= 64) return launch_seq<4>(grid, stream, params);
    if (pieces >= 12) return launch_seq<2>(grid, stream, params);
    return launch_seq<1>(grid, stream, params);
  }
  const int row_blocks = (params.rows + kRowWarps - 1) / kRowWarps;
  const dim3 grid(params.num_parts, row_blocks);
  if (params.num_parts / params.batch <= 1) {
    return launch_pdl(combine_rows_kernel<true>, grid, dim3(kRowWarps * 32), 0, stream, params);
  }
  return launch_pdl(combine_rows_kernel<false>, grid, dim3(kRowWarps * 32), 0, stream, params);
}

}  // namespace mla
