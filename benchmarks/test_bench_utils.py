"""CPU self-test of the benchmark's pure helpers and its CLI without a GPU.

Run: ``python -m pytest benchmarks/test_bench_utils.py``.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_utils as bu  # noqa: E402


def _case(heads=16, s_q=1, lengths=(64,), context=64, dist="uniform") -> bu.Case:
    return bu.Case(heads, s_q, len(lengths), context, dist, tuple(lengths))


def test_uniform_and_onelong_lengths():
    assert bu.make_lengths("uniform", 4, 1024, 2, seed=1) == [1024] * 4
    assert bu.make_lengths("onelong", 4, 32768, 1, seed=1) == [32768, 256, 256, 256]
    assert bu.make_lengths("onelong", 3, 1024, 4, seed=1) == [1024, 64, 64]


def test_skewed_lengths_keep_total_and_are_seeded():
    for batch, ctx, s_q in [(8, 1024, 1), (32, 4096, 2), (128, 32768, 4), (128, 1024, 4)]:
        a = bu.make_lengths("skewed", batch, ctx, s_q, seed=7)
        assert sum(a) == batch * ctx, "skewed keeps the uniform total (same bytes and FLOPs)"
        assert min(a) >= s_q, "every causal row must see a token"
        assert a == bu.make_lengths("skewed", batch, ctx, s_q, seed=7)
        assert a != bu.make_lengths("skewed", batch, ctx, s_q, seed=8)
    big = bu.make_lengths("skewed", 128, 4096, 1, seed=3)
    assert max(big) > 2 * 4096 and min(big) < 4096 // 3, "heavy tail both ways"
    assert bu.make_lengths("skewed", 1, 4096, 1, seed=3) == [4096]


def test_bad_lengths_arguments():
    for args in [("nope", 4, 64, 1), ("uniform", 0, 64, 1), ("uniform", 4, 0, 1)]:
        try:
            bu.make_lengths(*args, seed=0)
        except ValueError:
            continue
        raise AssertionError(f"no error for {args}")


def test_grid_size_and_dedup():
    full = bu.build_cases([16, 32, 64, 128], [1, 2, 4], [1, 8, 32, 128],
                          [1024, 4096, 16384, 32768], ["uniform", "skewed"], seed=0)  # fmt: skip
    # uniform: 4*3*4*4 = 192; skewed drops batch 1 (same as uniform): 4*3*3*4 = 144
    assert len(full) == 336
    assert all(c.batch > 1 for c in full if c.dist == "skewed")
    assert len({(c.heads, c.s_q, c.batch, c.context, c.dist) for c in full}) == 336
    again = bu.build_cases([16], [1], [8], [1024], ["skewed"], seed=0)
    assert again[0].lengths == next(
        c.lengths for c in full if (c.heads, c.s_q, c.batch, c.context, c.dist)
        == (16, 1, 8, 1024, "skewed")
    ), "lengths do not depend on the heads axis or on the grid"  # fmt: skip


def test_bytes_and_flops():
    c = _case(heads=16, s_q=1, lengths=(64,))
    assert bu.kv_bytes(c.lengths) == 64 * 576 * 2
    assert bu.q_bytes(1, 1, 16) == 16 * 576 * 2
    assert bu.out_bytes(1, 1, 16) == 16 * 512 * 2
    assert bu.case_bytes(c) == 73728 + 18432 + 16384
    assert bu.case_flops(c) == 2 * 1 * 16 * 1088 * 64
    c2 = _case(heads=128, s_q=4, lengths=(100, 28))
    assert bu.case_flops(c2) == 2 * 4 * 128 * 1088 * 128
    assert bu.pool_pages([1, 64, 65, 128]) == 1 + 1 + 2 + 2
    m = bu.derived_metrics(c, us=1.0, copy_gbps=108.544, gemm_tflops=2.228224)
    assert math.isclose(m["gbps"], 108.544) and math.isclose(m["tflops"], 2.228224)
    assert math.isclose(m["pct_copy"], 100.0) and math.isclose(m["pct_gemm"], 100.0)


def test_rotation_and_check_indices():
    assert bu.rotation_sets(1_000_000, 240_000_000, 128) == 128
    assert bu.rotation_sets(10_000_000, 240_000_000, 128) == 24
    assert bu.rotation_sets(5_000_000_000, 240_000_000, 128) == 1
    lengths = [5, 9, 1, 7, 100, 3, 8, 2, 6, 4, 11, 12]
    idx = bu.check_indices(lengths, 4)
    assert len(idx) == 4 and 4 in idx and 2 in idx and idx == sorted(set(idx))
    assert bu.check_indices([3, 3], 8) == [0, 1]


def test_parse_lists():
    assert bu.parse_int_list("16, 32,64") == [16, 32, 64]
    assert bu.parse_name_list("fa3,ours", ("ours", "fa3")) == ["fa3", "ours"]
    for bad in ("", "ours,nope"):
        try:
            bu.parse_name_list(bad, ("ours", "fa3"))
        except ValueError:
            continue
        raise AssertionError(bad)


def _result(impl, us, status="ok", mode="whole", **kw):
    return {"impl": impl, "us": us, "status": status, "mode": mode, **kw}


def test_csv_roundtrip():
    rows = [
        {"heads": 16, "impl": "ours", "us": 12.3456789, "gbps": float("nan"), "note": "a, b"},
        {"heads": 32, "impl": "fa3", "status": "error"},
    ]
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "x.csv")
        bu.write_csv(path, rows)
        back = bu.read_csv(path)
    assert list(back[0].keys()) == list(bu.CSV_FIELDS)
    assert back[0]["us"] == "12.3457" and back[0]["gbps"] == "" and back[0]["note"] == "a, b"
    assert back[1]["status"] == "error" and back[1]["us"] == ""


def test_table_and_summary():
    c = _case(heads=64, s_q=2, lengths=(4096,) * 8, context=4096)
    whole = {
        "ours": _result("ours", 50.0),
        "flashmla": _result("flashmla", 60.0),
        "fa3": _result("fa3", 40.0, status="FAIL"),  # failed the check: never the best rival
        "triton": {"impl": "triton", "status": "unavailable"},
    }
    assert bu.best_rival_us(whole) == ("flashmla", 60.0)
    assert math.isclose(bu.speedup(whole), 1.2)
    line = bu.table_line(c, whole, _result("ours", 45.0, mode="kernel"))
    assert "50.0" in line and "45.0" in line and "40.0!" in line and "n/a" in line
    assert "1.20x flashmla" in line
    assert len(line) <= len(bu.TABLE_HEADER) + 12
    slower = dict(whole, ours=_result("ours", 120.0))
    lines = bu.summary_lines([(c, whole), (c, slower)])
    assert len(lines) == 2 and lines[1].split()[:3] == ["64", "2", "2"]
    assert f"{math.sqrt(1.2 * 0.5):.2f}x" in lines[1] and "0.50x" in lines[1]
    failed = dict(whole, ours=_result("ours", 10.0, status="FAIL"))
    assert math.isnan(bu.speedup(failed)), "a failing ours claims no speedup"


def test_plot_series():
    base = {"dist": "uniform", "batch": "8", "heads": "16", "s_q": "1"}
    rows = [
        {**base, "context": "1024", "impl": "ours", "mode": "whole", "gbps": "100"},
        {**base, "context": "4096", "impl": "ours", "mode": "whole", "gbps": "200"},
        {**base, "context": "1024", "impl": "ours", "mode": "kernel", "gbps": "150"},
        {**base, "context": "1024", "impl": "fa3", "mode": "kernel", "gbps": "90"},
        {**base, "context": "1024", "impl": "fa3", "mode": "", "status": "error", "gbps": ""},
    ]
    s = bu.plot_series(rows, "gbps")
    assert s == {("uniform", 8): {(16, 1): {
        "ours": [(1024, 100.0), (4096, 200.0)], "ours kernel": [(1024, 150.0)]}}}  # fmt: skip


def test_cli_without_gpu():
    import bench_decode
    import torch

    args = bench_decode.parse_args(["--quick", "--impls", "fa3,ours", "--heads", "64"])
    assert args.heads == [64] and args.batch == [1, 32, 128] and args.impls == ["fa3", "ours"]
    assert args.budget_ms == 25.0
    assert bench_decode.main(["--dry-run", "--quick"]) == 0
    if not torch.cuda.is_available():
        assert bench_decode.main(["--quick"]) == 2  # a clear error, not a crash


def test_impls_probe_without_gpu():
    import decode_impls
    import torch

    assert set(decode_impls.IMPLS) == {"ours", "flashmla", "fa3", "triton"}
    if torch.cuda.is_available():
        return
    for cls in decode_impls.IMPLS.values():
        try:
            cls.probe()
        except decode_impls.Unavailable:
            continue
        raise AssertionError(f"{cls.name} probed available without a GPU")
