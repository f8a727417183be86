"""Log evidence of examples/vllm_e2e.py: per-rank decode lines, also when a progress bar wrote
without a newline before a worker's line (as vLLM's CUDA-graph capture bar does at TP = 2)."""

import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))

import vllm_e2e  # noqa: E402

DECODE = (
    "INFO 11-28 14:12:50 [backend.py:125] mla_backend: decode batch with 1 query token(s) per "
    "request, {heads} heads, 132 split-KV parts\n"
)


def ranks_seen(lines: list[str]) -> dict[int, list[int]]:
    log = vllm_e2e.RunLog()
    for line in lines:
        log.add(line)
    return {rank: sorted(ev["heads"]) for rank, ev in log.per_rank(2).items()}


def test_decode_line_per_rank():
    lines = [
        "(Worker_TP0 pid=10) " + DECODE.format(heads=64),
        "(Worker_TP1 pid=11) " + DECODE.format(heads=64),
    ]
    assert ranks_seen(lines) == {0: [64], 1: [64]}


def test_decode_line_after_a_progress_bar_on_the_same_line():
    bar = "Capturing CUDA graphs (FULL):   0%|          | 0/5 [00:00<?, ?it/s]"
    lines = [
        bar + "(Worker_TP0 pid=10) " + DECODE.format(heads=16),
        "(Worker_TP1 pid=11) " + DECODE.format(heads=16),
    ]
    assert ranks_seen(lines) == {0: [16], 1: [16]}


def test_varlen_decode_line_counts_as_decode():
    varlen = (
        "(EngineCore pid=9) INFO 12-01 16:09:58 [backend.py:131] mla_backend: varlen decode "
        "batch with up to 4 query token(s) per request, 128 heads, 16 split-KV parts\n"
    )
    log = vllm_e2e.RunLog()
    log.add(varlen)
    log.add("(EngineCore pid=9) " + DECODE.format(heads=128))
    (only,) = log.per_rank(1).values()
    assert sorted(only["heads"]) == [128] and sorted(only["s_q"]) == [1, 4]


def test_unprefixed_text_is_not_a_worker():
    assert ranks_seen(["plain text " + DECODE.format(heads=16)]) == {}


def test_without_a_floor_the_rule_uses_the_recorded_floor():
    # graph-h16 with the v9 kernels (2026-12-01): 0.0323 / 0.183 passed against its floor
    # (0.0286 / 0.183) and must pass without one; a clearly wrong attention must not.
    ours = {"mean": 0.0323, "max": 0.183}
    assert vllm_e2e.within(ours, {"mean": 0.0286, "max": 0.183})
    assert vllm_e2e.within(ours, None)
    assert not vllm_e2e.within({"mean": 0.2, "max": 0.183}, None)
    assert not vllm_e2e.within({"mean": 0.03, "max": 1.5}, None)
