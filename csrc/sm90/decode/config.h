// Tile sizes of the mma.sync decode kernel (tiles of 16 or 32 query rows): numbers only.
#pragma once

namespace mla::sm90::decode {

constexpr int kStages = 2;             // KV pages in flight per CTA
constexpr int kKvRowBytes = 576 * 2;   // one cached token, bf16
constexpr int kKvRowPitch = 1152 + 16; // shared-memory pitch: +16 B rotates banks row to row
constexpr int kQRowBytes = 576 * 2;    // Q rows are XOR-swizzled instead of padded
constexpr int kSmemLimit = 232448;     // sm_90 opt-in shared memory per block

// Warps per 16-row group: each takes a quarter of the page's tokens for S = QK^T and a quarter
// of the V columns for O += PV, so even a 16-row tile keeps four warps issuing MMAs.
constexpr int kColSplit = 4;

}  // namespace mla::sm90::decode
