"""CPU self-test of report.py: table and geomean rebuilt from CSVs, later rows winning."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_utils as bu  # noqa: E402
import report  # noqa: E402


def _row(impl: str, mode: str, us: float, heads: int = 16, context: int = 4096) -> dict:
    return {
        "copy_gbps": 4200.0, "gemm_tflops": 680.0, "heads": heads, "s_q": 1, "batch": 8,
        "context": context, "dist": "uniform", "total_len": 8 * context, "max_len": context,
        "impl": impl, "mode": mode, "status": "ok", "us": us,
    }  # fmt: skip


def test_report_merges_csvs_and_summarises(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "write_plots", lambda *a: [])
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    bu.write_csv(str(first), [
        _row("ours", "whole", 20.0), _row("ours", "kernel", 18.0), _row("fa3", "whole", 10.0),
        _row("ours", "whole", 50.0, context=16384), _row("fa3", "whole", 100.0, context=16384),
    ])  # fmt: skip
    # A rerun of the first case: its rows replace the first CSV's.
    bu.write_csv(str(second), [_row("ours", "whole", 10.0), _row("ours", "kernel", 9.0)])

    assert report.main([str(tmp_path / "out"), str(first), str(second)]) == 0
    text = (tmp_path / "out" / "table.txt").read_text()
    lines = text.splitlines()
    assert lines[0] == bu.TABLE_HEADER
    assert " 16  1   8  4096 unif |     10.0      9.0 |" in lines[1]
    assert lines[1].rstrip().endswith("1.00x fa3")
    assert lines[2].rstrip().endswith("2.00x fa3")
    # geomean of 1.0 and 2.0
    assert (
        "2 cases with a checked rival, geomean best/ours 1.414x, min 1.00x, ours faster in 2"
        in text
    )


def test_report_without_arguments_prints_usage(capsys):
    assert report.main([]) == 2
    assert "bench_decode.py CSVs" in capsys.readouterr().out


def test_csvs_name_the_build_that_ran(monkeypatch):
    """build_sha comes from the imported package's build record (the .so that ran, which may
    come from another tree than the benchmark's); a record without it reads "unknown"."""
    import types

    import bench_decode

    import mla_backend

    info = types.ModuleType("mla_backend._build_info")
    monkeypatch.setitem(sys.modules, "mla_backend._build_info", info)
    monkeypatch.setattr(mla_backend, "_build_info", info, raising=False)
    assert bench_decode._build_sha() == "unknown"
    info.SOURCE_SHA = "0123456789ab-dirty"
    assert bench_decode._build_sha() == "0123456789ab-dirty"
    assert "build_sha" in bu.CSV_FIELDS
