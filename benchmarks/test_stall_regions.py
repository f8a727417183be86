"""CPU self-test of stall_regions.py: a synthetic ncu source page summarised by region."""

from __future__ import annotations

import gzip
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import stall_regions as sr  # noqa: E402

HEADER = ["Address", "Source", sr.SAMPLES, "stall_barrier", "stall_wait", "stall_long_sb",
          "stall_wait (Not Issued)"]  # fmt: skip

# (SASS, samples, barrier, wait, long_sb): V's loop first (SS wgmma, not counted), then S's.
LINES = [
    ("HGMMA.64x256x16.F32.BF16 R24, gdesc[UR8].tnspB, R24", 50, 0, 50, 0),
    ("BAR.SYNC.DEFER_BLOCKING 0x4, 0x100", 400, 400, 0, 0),
    ("HGMMA.64x256x16.F32.BF16 R24, R184, gdesc[UR4].tnspB, R24", 10, 0, 10, 0),
    ("NOP", 10, 0, 10, 0),
    ("WARPGROUP.DEPBAR.LE gsb0, 0x0", 12, 0, 12, 0),
    ("BAR.ARV 0x3, 0x100", 3, 0, 3, 0),
    ("SYNCS.PHASECHK.TRANS64.TRYWAIT P0, [UR9+0x38310], R152", 30, 0, 0, 30),
    ("@!P0 BRA 0x7ff4277d00f0", 10, 0, 0, 10),
    ("HGMMA.64x64x16.F32.BF16 R152, gdesc[UR8], RZ, !UPT", 40, 0, 40, 0),
    ("NOP", 5, 0, 5, 0),
    ("WARPGROUP.DEPBAR.LE gsb0, 0x0", 10, 0, 10, 0),
    ("MUFU.EX2 R187, R190", 20, 0, 20, 0),
    ("BAR.SYNC.DEFER_BLOCKING 0x4, 0x100", 4, 4, 0, 0),
    ("FENCE.VIEW.ASYNC.S", 6, 0, 0, 6),
    ("BAR.ARV 0x2, 0x100", 0, 0, 0, 0),
    ("EXIT", 100, 0, 0, 0),
]


def _page(lines=LINES) -> str:
    rows = ['"Kernel Name","decode_kernel",', ",".join(f'"{h}"' for h in HEADER)]
    for k, (src, n, bar, wait, lsb) in enumerate(lines):
        vals = [f"0x{k:04x}", src, n, bar, wait, lsb, 0]
        rows.append(",".join(f'"{v}"' for v in vals))
    return "\n".join(rows) + "\n"


def test_regions_split_the_loop():
    s = sr.summarize(_page())
    assert s["samples"] == 710
    assert s["loop_samples"] == 160
    want = {"issue P V": 20, "wait P V": 15, "page wait": 40, "issue S": 45, "wait S": 10,
            "softmax": 20, "publish": 10}  # fmt: skip
    assert s["regions"] == pytest.approx({k: v / 160 for k, v in want.items()})
    assert s["loop_reasons"] == pytest.approx({"barrier": 4 / 160, "wait": 110 / 160,
                                               "long_sb": 46 / 160})  # fmt: skip
    text = sr.format_summary("case", s)
    assert "22.5% of them" in text and "wait P V" in text


def test_report_reads_gzip(tmp_path, capsys):
    path = tmp_path / "h128.csv.gz"
    path.write_bytes(gzip.compress(_page().encode()))
    assert sr.main(["report", str(path)]) == 0
    assert "warpgroup S's loop" in capsys.readouterr().out


def test_missing_marker_is_named():
    lines = [line for line in LINES if not line[0].startswith("BAR.ARV 0x2")]
    with pytest.raises(ValueError, match="BAR.ARV 0x2"):
        sr.summarize(_page(lines))
    with pytest.raises(ValueError, match="register A"):
        sr.summarize(_page(LINES[:2]))
    with pytest.raises(ValueError, match="not an ncu source page"):
        sr.summarize("hello\n")
