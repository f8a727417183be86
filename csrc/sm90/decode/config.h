// Tile and layout constants of the decode kernel (64 query rows per CTA): numbers only.
#pragma once

#include "mla/api.h"
#include "sm90/page_tile.cuh"

namespace mla::sm90::decode {

constexpr int kRows = kDecodeRowsPerCta;  // one m64 wgmma tile of query rows
static_assert(kRows == 64, "the kernel is written for m64 wgmma tiles");
constexpr int kWarpGroups = 2;
constexpr int kThreads = kWarpGroups * 128;
constexpr int kWgS = 0;  // computes S and the softmax for the whole page, owns O[:, 0:256]
constexpr int kWgV = 1;  // owns O[:, 256:512], issues the refills
constexpr int kStages = 2;                          // KV pages in flight
constexpr int kQBytes = kDimBlocks * kTileBytes;    // Q tile, 72 KB
constexpr int kVColsPerWg = kDimV / kWarpGroups;    // O columns per warpgroup
constexpr int kScoreTiles = kPageSize / 8;          // n8 tiles of a row's page scores

// Named barriers (0 is __syncthreads), all over both warpgroups: they hand pages over between
// them, one side arrives (bar.arrive) and the other waits (bar.sync), except kBarFree, where both
// wait. Warpgroup S syncs alone on an mbarrier instead (tail zeroing): compute-sanitizer's
// racecheck misreads a named barrier of 128 of the 256 threads followed by a cross-warpgroup
// hand-off as a race (reproduced with a 40-line probe, docs/perf.md v7); an mbarrier it models.
// (Id 1 is unused since.)
constexpr int kBarReady = 2;  // S -> V: P(j) and alpha(j) are in shared memory
constexpr int kBarSDone = 3;  // S -> V: S is done with page j (O[:, 0:256] += P(j) V_j finished)
constexpr int kBarFree = 4;   // V and S: V is done with P(j) and page j (both wait)
constexpr int kBarEnd = 5;    // S -> V: the sequence's row max and row sums are in shared memory

constexpr int kOffQ = 0;
constexpr int kOffKV = kOffQ + kQBytes;
constexpr int kOffP = kOffKV + kStages * kPageBytes;  // P: [64 rows x 64 tokens] bf16, swizzled
constexpr int kOffScale = kOffP + kTileBytes;         // alpha per row, [64] fp32
constexpr int kOffML = kOffScale + kRows * 4;  // row max, row sum [2][64] fp32, poison flag
constexpr int kOffBar = kOffML + 2 * kRows * 4 + 16;
constexpr int kBarQ = kStages + 1;  // mbarrier index of the Q tile (TMA)
constexpr int kOffFlag = kOffBar + (kStages + 2) * 8;  // stage mbarriers, S's own, then Q's
// A self-planning call (DecodeParams::plan_in_kernel): the part's row of part_meta, then the
// batch_meta rows of its first and last sequence (those between them are neither split nor cut).
constexpr int kOffPlan = kOffFlag + 16;
constexpr int kSmemBytes = kOffPlan + 3 * 16 + kSwizzleAlign;

static_assert(kSmemBytes <= 232448, "shared memory over the sm_90 limit");
static_assert(kOffKV % kSwizzleAlign == 0 && kOffP % kSwizzleAlign == 0, "atoms must stay 1024-byte aligned");

}  // namespace mla::sm90::decode
