"""CPU self-test of varlen_decode.py's query counts (the GPU part runs on an H200)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import varlen_decode as vd  # noqa: E402


def test_query_counts_are_seeded_and_in_range():
    counts = vd.query_counts(64, 4, seed=3)
    assert len(counts) == 64 and counts[0] == 4
    assert all(1 <= n <= 4 for n in counts)
    assert len(set(counts)) > 1  # mixed lengths, the point of the benchmark
    assert counts == vd.query_counts(64, 4, seed=3)
    assert vd.query_counts(1, 1, seed=0) == [1]
