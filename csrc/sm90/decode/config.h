// Tile sizes of the sm90 decode kernel: numbers only.
#pragma once

namespace mla::sm90::decode {

constexpr int kStages = 2;             // KV pages in flight per CTA
constexpr int kKvRowBytes = 576 * 2;   // one cached token, bf16
constexpr int kKvRowPitch = 1152 + 16; // shared-memory pitch: +16 B rotates banks row to row
constexpr int kQRowBytes = 576 * 2;    // Q rows are XOR-swizzled instead of padded
constexpr int kSmemLimit = 232448;     // sm_90 opt-in shared memory per block

// Warps per 16-row group: each splits the page's tokens for S = QK^T and the V columns for
// O += PV. Fewer rows per CTA -> more warps per row group, so small head counts still keep
// four warps issuing MMAs.
template <int kRows>
constexpr int col_split() { return kRows == 64 ? 2 : 4; }

}  // namespace mla::sm90::decode
