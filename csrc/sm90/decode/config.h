// Tile and layout constants of the decode kernel (64 query rows per CTA): numbers only.
#pragma once

#include "mla/api.h"

namespace mla::sm90::decode {

constexpr int kRows = kDecodeRowsPerCta;  // one m64 wgmma tile of query rows
constexpr int kWarpGroups = 2;         // each owns half the page's tokens (S) and half of V (O)
constexpr int kThreads = kWarpGroups * 128;
constexpr int kStages = 2;             // KV pages in flight
constexpr int kBlockDims = 64;         // dims per 128-byte swizzle atom column
constexpr int kDimBlocks = 576 / kBlockDims;          // 9 atom columns per Q row / cached token
constexpr int kTileBytes = 64 * 128;                  // 64 rows x 128 B: one atom column
constexpr int kQBytes = kDimBlocks * kTileBytes;      // Q tile, 72 KB
constexpr int kPageBytes = kDimBlocks * kTileBytes;   // one KV page, 72 KB
constexpr int kTokensPerWg = 64 / kWarpGroups;        // S columns per warpgroup
constexpr int kVColsPerWg = 512 / kWarpGroups;        // O columns per warpgroup

constexpr int kOffQ = 0;
constexpr int kOffKV = kOffQ + kQBytes;
constexpr int kOffP = kOffKV + kStages * kPageBytes;
constexpr int kOffRed = kOffP + kTileBytes;
constexpr int kOffBar = kOffRed + kWarpGroups * kRows * 4;
constexpr int kOffFlag = kOffBar + kStages * 8;
constexpr int kAlign = 1024;  // 128B-swizzle atoms (TMA and wgmma) assume 1024-byte alignment
constexpr int kSmemBytes = kOffFlag + 16 + kAlign;

static_assert(kSmemBytes <= 232448, "shared memory over the sm_90 limit");
static_assert(kOffKV % kAlign == 0 && kOffP % kAlign == 0, "atoms must stay 1024-byte aligned");

}  // namespace mla::sm90::decode
