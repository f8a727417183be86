"""benchmarks/targets.py on CPU: the issue's targets from stored grid CSVs."""

import csv
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import targets  # noqa: E402
from bench_utils import CSV_FIELDS  # noqa: E402

RESULTS = HERE.parent / "docs" / "results"
V27 = [RESULTS / f"decode_grid_2026-12-04_v27_{p}.csv" for p in ("uniform", "skewed", "lastcase")]
V26 = [RESULTS / f"decode_grid_2026-12-04_v26_{p}.csv" for p in ("uniform", "skewed", "lastcase")]


def by_name(ev):
    return {t["target"].name: t for t in ev["targets"]}


@pytest.mark.skipif(not all(p.exists() for p in V27 + V26), reason="stored v27 grid not here")
def test_reproduces_the_v27_log(capsys):
    """The figures docs/perf.md v27 gives for its grid, recomputed from its CSVs."""
    ev = targets.evaluate(targets.load([str(p) for p in V27]))
    assert ev["cases"] == 336 and ev["geomean"] == pytest.approx(1.192, abs=5e-4)
    t = by_name(ev)
    parity = t["every case vs the faster rival"]
    assert parity["met"] == 307 and parity["lo"] == pytest.approx(0.908, abs=5e-4)
    worst, value = parity["misses"][0]
    assert worst.key == (64, 2, 128, 16384, "uniform") and worst.rival == "fa3"
    mem = t["memory-bound, % of copy"]
    assert (mem["cases"], mem["met"]) == (15, 13)
    assert (round(mem["lo"], 1), round(mem["hi"], 1)) == (94.7, 103.2)
    assert {r.key for r, _ in mem["misses"]} == {
        (32, 2, 128, 16384, "uniform"), (64, 1, 128, 16384, "uniform"),
    }  # fmt: skip
    comp = t["compute-bound, % of GEMM"]
    assert (comp["cases"], comp["met"]) == (9, 6)
    assert (round(comp["lo"], 1), round(comp["hi"], 1)) == (78.0, 95.6)
    assert (t["small batch (B <= 8)"]["cases"], t["small batch (B <= 8)"]["met"]) == (144, 97)
    assert (t["skewed lengths"]["cases"], t["skewed lengths"]["met"]) == (144, 109)
    # against v26's grid: ours 1.0079x, the rivals within 0.03%
    drift = targets.compare(
        targets.load([str(p) for p in V27]), targets.load([str(p) for p in V26])
    )
    assert drift["ours"][0] == pytest.approx(1.0079, abs=2e-4) and drift["ours"][1] == 336
    assert abs(drift["fa3"][0] - 1) < 1e-3 and abs(drift["flashmla"][0] - 1) < 1e-3
    assert targets.main([str(p) for p in V27]) == 0
    assert "307 of 336" in capsys.readouterr().out


def write(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(CSV_FIELDS), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)


def row(h, s_q, b, ctx, dist, impl, us, status="ok", mode="whole", pct_copy="", pct_gemm=""):
    return dict(heads=h, s_q=s_q, batch=b, context=ctx, dist=dist, impl=impl, us=us,
                status=status, mode=mode, pct_copy=pct_copy, pct_gemm=pct_gemm)  # fmt: skip


def test_classes_statuses_and_merging(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    write(a, [
        # memory-bound at 64 rows: 96% of copy, ahead of both rivals
        row(64, 1, 128, 16384, "uniform", "ours", 100, pct_copy=96.0),
        row(64, 1, 128, 16384, "uniform", "ours", 90, mode="kernel"),  # not the whole step
        row(64, 1, 128, 16384, "uniform", "fa3", 101),
        row(64, 1, 128, 16384, "uniform", "flashmla", 120),
        # 128 rows: not memory-bound (past the ridge), and not 128 heads: not compute-bound
        row(64, 2, 128, 16384, "uniform", "ours", 100, pct_copy=80.0, pct_gemm=70.0),
        row(64, 2, 128, 16384, "uniform", "fa3", 90),
        # 128 heads at B = 32: not compute-bound; a failed rival does not count
        row(128, 1, 32, 4096, "uniform", "ours", 100, pct_gemm=60.0),
        row(128, 1, 32, 4096, "uniform", "fa3", 50, status="FAIL"),
        row(128, 1, 32, 4096, "uniform", "flashmla", 110),
        # small batch, skewed: 1.10x (misses 0.85x, meets 1.10x)
        row(16, 1, 8, 1024, "skewed", "ours", 10),
        row(16, 1, 8, 1024, "skewed", "fa3", 11),
        # compute-bound, replaced by the second file
        row(128, 1, 128, 4096, "uniform", "ours", 300, pct_gemm=70.0),
        row(128, 1, 128, 4096, "uniform", "fa3", 280),
    ])  # fmt: skip
    write(b, [row(128, 1, 128, 4096, "uniform", "ours", 250, pct_gemm=86.0)])
    res = targets.load([str(a), str(b)])
    assert res[(128, 1, 32, 4096, "uniform")].rival == "flashmla"  # the FAIL left out
    assert res[(128, 1, 128, 4096, "uniform")].ours == 250
    ev = targets.evaluate(res)
    t = by_name(ev)
    assert ev["cases"] == 5
    mem, comp = t["memory-bound, % of copy"], t["compute-bound, % of GEMM"]
    assert (mem["cases"], mem["met"]) == (1, 1)
    assert (comp["cases"], comp["met"], comp["lo"]) == (1, 1, 86.0)
    parity = t["every case vs the faster rival"]
    assert [r.key for r, _ in parity["misses"]] == [(64, 2, 128, 16384, "uniform")]
    small, skew = t["small batch (B <= 8)"], t["skewed lengths"]
    assert (small["met"], skew["met"]) == (0, 1)
    assert small["misses"][0][1] == pytest.approx(1.1)
    lines = "\n".join(targets.report(ev))
    assert "64h s_q=2 B=128 L=16k uniform" in lines and "0.900x vs fa3" in lines


def test_untimed_ours_is_reported(tmp_path, capsys):
    a = tmp_path / "a.csv"
    write(a, [row(16, 1, 8, 1024, "uniform", "ours", "", status="error"),
              row(16, 1, 8, 1024, "uniform", "fa3", 10)])  # fmt: skip
    out = tmp_path / "t.txt"
    assert targets.main([str(a), "--out", str(out)]) == 0
    text = out.read_text()
    assert "0 of 0" in text and "no checked timing" in text
    assert text == capsys.readouterr().out
    empty = tmp_path / "e.csv"
    write(empty, [])
    assert targets.main([str(empty)]) == 1
