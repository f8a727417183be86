"""CPU tests of ab_variants.py's parsing, part counts and summary (its timing needs a GPU).

Run: ``python -m pytest benchmarks/test_ab_variants.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ab_variants as ab  # noqa: E402
import bench_utils  # noqa: E402
import decode_impls as di  # noqa: E402
import test_decode_impls as tdi  # noqa: E402
import trace_decode  # noqa: E402


def test_parse_variant():
    assert ab.parse_variant("base:") == ab.Variant("base")
    v = ab.parse_variant("k:MLA_A=1,MLA_B=x,parts=/2")
    assert v == ab.Variant("k", {"MLA_A": "1", "MLA_B": "x"}, "/2")
    assert ab.parse_variant("p:parts=66").parts == "66"


@pytest.mark.parametrize("text", ["base", ":A=1", "x:A", "x:parts=/0", "x:parts=abc", "x:=1"])
def test_parse_variant_rejects(text):
    with pytest.raises(ValueError):
        ab.parse_variant(text)


@pytest.mark.parametrize(
    ("spec", "default", "parts"), [(None, 132, 132), ("66", 132, 66), ("/2", 132, 66), ("/4", 3, 1)]
)
def test_resolve_parts(spec, default, parts):
    assert ab.resolve_parts(spec, default) == parts


def test_parse_case():
    assert ab.parse_case("64,2,8,4096,skewed") == (64, 2, 8, 4096, "skewed")
    for bad in ("64,2,8,4096", "64,2,8,4096,wide", "a,2,8,4096,uniform"):
        with pytest.raises(ValueError):
            ab.parse_case(bad)


def test_variant_part_count_reaches_the_buffers():
    # ours through the fake ops of test_decode_impls (num_decode_parts = 4): parts=/2 gives 2
    tdi._install_fakes()
    data = tdi._data(1)
    assert ab.OursVariant(data, di.ImplOptions(), None).meta[0].shape == (4, 4)
    halved = ab.OursVariant(data, di.ImplOptions(), "/2")
    assert halved.meta[0].shape == (2, 4) and halved.o_accum.shape[0] == 4


def test_summary():
    rows = [
        {"variant": "base", "speedup": 1.0},
        {"variant": "new", "speedup": 1.1},
        {"variant": "base", "speedup": 1.0},
        {"variant": "new", "speedup": 0.9},
    ]
    (line,) = ab.summary(rows)
    assert line.startswith("new vs base: geomean 0.9950") and "min 0.900, max 1.100" in line


def test_main_rejects_bad_input_before_gpu_work():
    with pytest.raises(ValueError):
        ab.main(["--cases", "16,1,1,1024,uniform", "--variants", "base:", "bad"])


def test_run_end_to_end_with_stand_ins(monkeypatch):
    # The GPU's parts replaced: capture returns the step itself, the timer a constant. Every
    # (case, variant) gets a row, the knob is set only while its variant is built, and equal
    # variants compute the same output.
    tdi._install_fakes()
    monkeypatch.delenv("MLA_FAKE_KNOB", raising=False)
    seen = []
    real_whole = di.Ours.whole

    def whole(self, i):
        seen.append(os.environ.get("MLA_FAKE_KNOB"))
        real_whole(self, i)

    monkeypatch.setattr(di.Ours, "whole", whole)
    args = ab.argparse.Namespace(
        cases=["16,1,2,100,uniform", "16,2,3,200,skewed"],
        variants=["base:", "knob:MLA_FAKE_KNOB=1"],
        rounds=3, replay_ms=1.0, seed=0, mem_budget_gb=1.0, max_sets=2,
    )  # fmt: skip
    rows = ab.run(args, device="cpu", capture=lambda fn: fn, timer=lambda fn: 1e-3, l2_bytes=1)
    assert [(r["case"], r["variant"]) for r in rows] == [
        (c, v) for c in args.cases for v in ("base", "knob")
    ]
    assert all(r["speedup"] == 1.0 and r["max_diff"] == 0 and r["num_parts"] == 4 for r in rows)
    assert set(seen) == {None, "1"} and os.environ.get("MLA_FAKE_KNOB") is None


def test_cases_are_the_grids(monkeypatch):
    # "32,1,8,1024,skewed" here is that case of the grid: the same lengths (the grid seeds them by
    # batch, context and s_q; this script once seeded them by the whole case, heads included, so
    # its skewed cases were other batches than the grid's, 2026-12-03), and trace_decode.py too.
    tdi._install_fakes()
    seen = []
    real_init = di.Ours.__init__

    def init(self, data, opts):
        seen.append(data.case.lengths)
        real_init(self, data, opts)

    monkeypatch.setattr(di.Ours, "__init__", init)
    args = ab.argparse.Namespace(
        cases=["32,1,8,1024,skewed"], variants=["base:"],
        rounds=1, replay_ms=1.0, seed=0, mem_budget_gb=1.0, max_sets=1,
    )  # fmt: skip
    ab.run(args, device="cpu", capture=lambda fn: fn, timer=lambda fn: 1e-3, l2_bytes=1)
    (grid_case,) = bench_utils.build_cases([32], [1], [8], [1024], ["skewed"], 0)
    assert seen and all(lengths == grid_case.lengths for lengths in seen)
    assert tuple(trace_decode.case_lengths(32, 1, 8, 1024, "skewed")) == grid_case.lengths
    assert len(set(grid_case.lengths)) > 1


def test_a_build_on_pythonpath_wins(tmp_path):
    # Comparing two builds runs this script twice, the other build's package first on
    # PYTHONPATH: the repository it sits in must not shadow that package (it did, 2026-12-01).
    fake = tmp_path / "mla_backend"
    fake.mkdir()
    (fake / "__init__.py").write_text("WHICH = 'the PYTHONPATH build'\n")
    script = Path(__file__).with_name("ab_variants.py")
    code = (
        "import runpy, sys; runpy.run_path(sys.argv[1], run_name='ab_variants'); "
        "import mla_backend; print(mla_backend.WHICH)"
    )
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    elsewhere = tmp_path / "cwd"  # not the fake's folder: sys.path[0] of -c is the cwd
    elsewhere.mkdir()
    out = subprocess.run(
        [sys.executable, "-c", code, str(script)],
        env=env, cwd=elsewhere, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout.strip() == "the PYTHONPATH build"
