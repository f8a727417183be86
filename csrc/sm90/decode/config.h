// Tile and layout constants of the decode kernel (64 query rows per CTA): numbers only.
#pragma once

#include "mla/api.h"
#include "sm90/page_tile.cuh"

namespace mla::sm90::decode {

constexpr int kRows = 64;  // one m64 wgmma tile of query rows
constexpr int kWarpGroups = 2;         // each owns half the page's tokens (S) and half of V (O)
constexpr int kThreads = kWarpGroups * 128;
constexpr int kStages = 2;             // KV pages in flight
constexpr int kQBytes = kDimBlocks * kTileBytes;      // Q tile, 72 KB
constexpr int kTokensPerWg = 64 / kWarpGroups;        // S columns per warpgroup
constexpr int kVColsPerWg = 512 / kWarpGroups;        // O columns per warpgroup

constexpr int kOffQ = 0;
constexpr int kOffKV = kOffQ + kQBytes;
constexpr int kOffP = kOffKV + kStages * kPageBytes;
constexpr int kOffRed = kOffP + kTileBytes;
constexpr int kOffBar = kOffRed + kWarpGroups * kRows * 4;
constexpr int kOffFlag = kOffBar + kStages * 8;
constexpr int kSmemBytes = kOffFlag + 16 + kSwizzleAlign;

static_assert(kSmemBytes <= 232448, "shared memory over the sm_90 limit");
static_assert(kOffKV % kSwizzleAlign == 0 && kOffP % kSwizzleAlign == 0, "atoms must stay 1024-byte aligned");

}  // namespace mla::sm90::decode
