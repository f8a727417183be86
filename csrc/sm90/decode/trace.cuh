// Per-CTA event clocks of the decode kernel, to see where a call's time goes (docs/perf.md v10,
// benchmarks/trace_decode.py). Only a trace build records them (MLA_TRACE=1 when building defines
// MLA_TRACE_BUILD); in a normal build every call below compiles to nothing.
//
// A CTA's row holds kTraceSlots 64-bit values: the global timer (ns) at entry and exit, clock64
// at entry, after griddepcontrol.wait and at exit, the number of sequences of its part, per
// sequence k < kTraceSeqs the clock64 of its events (TraceSeqEvent) and its page count, and the
// clock64 ticks each warpgroup's first thread spent waiting for pages to land, over the call.
#pragma once

#include "mla/params.h"

namespace mla::sm90::decode {

#ifdef MLA_TRACE_BUILD
constexpr bool kTraceBuild = true;
#else
constexpr bool kTraceBuild = false;
#endif

constexpr int kTraceSlots = 64;
enum TraceSlot : int {
  kTrGlobalIn = 0,
  kTrClockIn = 1,
  kTrMetaReady = 2,
  kTrNumSeqs = 3,
  kTrSeq0 = 4,
  kTrWaitS = 60,  // warpgroup S: ticks in its page waits, all sequences
  kTrWaitV = 61,  // warpgroup V: the same
  kTrClockOut = 62,
  kTrGlobalOut = 63,
};
enum TraceSeqEvent : int {
  kTrSeqStart = 0,  // after the barrier that opens the sequence
  kTrQReady,        // Q resident (after its barrier)
  kTrFirstS,        // S of the first page issued (its page had landed)
  kTrLastPage,      // warpgroup S past its last page (V done with the last P)
  kTrEpilogueS,     // warpgroup S's rows stored
  kTrPages,         // the sequence's page count in this part (a count, not a clock)
  kTrEpilogueV,     // warpgroup V's rows stored
  kTrSeqStride,
};
constexpr int kTraceSeqs = (kTrWaitS - kTrSeq0) / kTrSeqStride;

__device__ __forceinline__ unsigned long long global_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// Slot of event `e` of the part's k-th sequence; -1 (not recorded) past kTraceSeqs.
__device__ __forceinline__ int trace_seq_slot(int k, int e) {
  return k < kTraceSeqs ? kTrSeq0 + kTrSeqStride * k + e : -1;
}

__device__ __forceinline__ void trace_put(const DecodeParams& p, int slot, unsigned long long v) {
  if constexpr (kTraceBuild) {
    if (p.trace != nullptr && slot >= 0) {
      p.trace[(size_t(blockIdx.y) * gridDim.x + blockIdx.x) * kTraceSlots + slot] = v;
    }
  }
}

__device__ __forceinline__ void trace_clock(const DecodeParams& p, int slot) {
  if constexpr (kTraceBuild) trace_put(p, slot, clock64());
}

// Ticks spent in a wait: `start = trace_now()` before it, `trace_add_since(total, start)` after
// (both nothing in a normal build).
__device__ __forceinline__ unsigned long long trace_now() {
  if constexpr (kTraceBuild) return clock64();
  return 0;
}
__device__ __forceinline__ void trace_add_since(unsigned long long& total,
                                                unsigned long long start) {
  if constexpr (kTraceBuild) total += clock64() - start;
}

}  // namespace mla::sm90::decode
