// Types and shared-memory layout derived from config.h for one CTA tile of kRows query rows.
#pragma once

#include "mla/params.h"
#include "sm90/decode/config.h"

namespace mla::sm90::decode {

template <int kRows_>
struct Traits {
  static constexpr int kRows = kRows_;
  static constexpr int kRowGroups = kRows / 16;  // one m16 MMA tile of rows per group
  static constexpr int kColSplit = decode::kColSplit;
  static constexpr int kWarps = kRowGroups * kColSplit;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kGroupThreads = kColSplit * 32;

  static constexpr int kTokensPerWarp = kPageSize / kColSplit;  // S columns per warp
  static constexpr int kScoreTiles = kTokensPerWarp / 8;        // n8 tiles of S per warp
  static constexpr int kVColsPerWarp = kDimV / kColSplit;       // O columns per warp
  static constexpr int kOutTiles = kVColsPerWarp / 8;           // n8 tiles of O per warp
  static constexpr int kKSteps = kDimQK / 16;                   // k16 steps of QK^T

  // Shared memory, in bytes from the (128-byte aligned) dynamic base.
  static constexpr int kQBytes = kRows * kQRowBytes;
  static constexpr int kStageBytes = kPageSize * kKvRowPitch;
  static constexpr int kPBytes = kRows * kPageSize * 2;  // bf16 probabilities, swizzled
  static constexpr int kRedBytes = kColSplit * kRows * 4;
  static constexpr int kOffQ = 0;
  static constexpr int kOffKV = kOffQ + kQBytes;
  static constexpr int kOffP = kOffKV + kStages * kStageBytes;
  static constexpr int kOffRed = kOffP + kPBytes;
  static constexpr int kOffBar = kOffRed + kRedBytes;
  static constexpr int kOffFlag = kOffBar + kStages * 8;
  static constexpr int kSmemBytes = kOffFlag + 16;

  static_assert(kRows == 16 || kRows == 32, "rows per CTA: 16 or 32 (64 runs the wgmma kernel)");
  static_assert(kScoreTiles % 2 == 0 && kOutTiles % 2 == 0, "x4 ldmatrix covers two n8 tiles");
  static_assert(kRowGroups < 16, "one named barrier per row group, ids 1..15");
  static_assert(kOffBar % 8 == 0, "mbarriers need 8-byte alignment");
  static_assert(kKvRowPitch % 16 == 0 && kOffKV % 16 == 0, "bulk copies need 16-byte alignment");
  static_assert(kSmemBytes <= kSmemLimit, "shared memory over the sm_90 limit");
};

}  // namespace mla::sm90::decode
