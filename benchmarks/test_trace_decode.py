"""CPU self-test of trace_decode.py: a synthetic trace file read back and summarised."""

from __future__ import annotations

import os
import struct
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import trace_decode as td  # noqa: E402


def _cta(g_in: int, seqs: list[dict] | None, clk0: int = 1000) -> list[int]:
    """A CTA's row; clocks tick at 2 per ns (0.5 ns per clock)."""
    r = [0] * td.SLOTS
    r[td.G_IN] = g_in
    r[td.C_IN] = clk0
    r[td.META] = clk0 + 200
    if seqs is None:  # a part without work leaves right after the metadata
        r[td.G_OUT] = g_in + 50
        return r
    r[td.NSEQ] = len(seqs)
    t = r[td.META]
    for k, s in enumerate(seqs):
        base = td.SEQ0 + td.STRIDE * k
        r[base + td.START] = t + 100
        r[base + td.Q_READY] = t + 100 + s["q"]
        r[base + td.FIRST_S] = r[base + td.Q_READY] + 2000
        r[base + td.LAST_PAGE] = r[base + td.FIRST_S] + s["pages"] * 4000
        r[base + td.EPI_S] = r[base + td.LAST_PAGE] + 6000
        r[base + td.EPI_V] = r[base + td.LAST_PAGE] + 5000
        r[base + td.PAGES] = s["pages"]
        t = r[base + td.EPI_S]
    pages = sum(s["pages"] for s in seqs)
    r[td.WAIT_S] = 600 * pages  # 0.3 us per page
    r[td.WAIT_V] = 200 * pages
    r[td.C_OUT] = t + 10
    r[td.G_OUT] = g_in + (r[td.C_OUT] - clk0) // 2
    return r


def _write(path, grids: list[tuple[int, int, list[list[int]]]]) -> None:
    with open(path, "wb") as f:
        for gx, gy, rows in grids:
            f.write(struct.pack("<4I", td.MAGIC, gx, gy, td.SLOTS))
            for r in rows:
                f.write(struct.pack(f"<{td.SLOTS}Q", *r))


def test_read_and_summarise(tmp_path):
    path = tmp_path / "t.bin"
    first = [_cta(10_000, [{"q": 8000, "pages": 4}]), _cta(10_100, None)]
    second = [
        _cta(20_000, [{"q": 16000, "pages": 4}, {"q": 4000, "pages": 2}]),
        _cta(20_200, [{"q": 8000, "pages": 1}]),
    ]
    _write(path, [(1, 2, first), (2, 1, second)])
    traces = td.read_traces(path)
    assert [(t.grid_x, t.grid_y, len(t.rows)) for t in traces] == [(1, 2, 2), (2, 1, 2)]

    s = td.summarize(traces[0])
    assert s["ctas"] == 2 and s["ctas_with_work"] == 1
    assert s["ns_per_clock"] == pytest.approx(0.5)
    assert s["entry_skew_us"] == pytest.approx((0.0, 0.05, 0.1))
    assert s["q_ready"] == pytest.approx((4.0, 4.0, 4.0))  # 8000 clocks at 0.5 ns
    assert s["first_s"] == pytest.approx((1.0, 1.0, 1.0))
    assert s["per_page"] == pytest.approx((2.0, 2.0, 2.0))
    assert s["epilogue_s"] == pytest.approx((3.0, 3.0, 3.0))
    assert s["epilogue_v"] == pytest.approx((2.5, 2.5, 2.5))
    assert s["last_cta"]["index"] == 0 and s["last_cta"]["sequences"] == 1
    assert s["wait_s_per_page"] == pytest.approx((0.3, 0.3, 0.3))
    assert s["wait_v_per_page"] == pytest.approx((0.1, 0.1, 0.1))

    s = td.summarize(traces[1])
    assert s["ctas_with_work"] == 2
    assert s["q_ready"] == pytest.approx((2.0, 4.0, 8.0))
    # the 1-page sequence has no per-page time
    assert s["per_page"] == pytest.approx((2.0, 2.0, 2.0))
    assert s["pages_per_cta"] == (1, 3.5, 6)
    assert s["gap"] == pytest.approx((0.05, 0.05, 0.05))
    text = td.format_summary("case", s)
    assert text.startswith("== case: 2 CTAs, 2 with work") and "per_page" in text


def test_rejects_a_file_that_is_not_a_trace(tmp_path):
    path = tmp_path / "bad.bin"
    path.write_bytes(struct.pack("<4I", 1, 1, 1, td.SLOTS) + bytes(8 * td.SLOTS))
    with pytest.raises(ValueError, match="not a decode trace"):
        td.read_traces(path)


def test_no_exit_recorded_means_no_trace_build():
    with pytest.raises(ValueError, match="not a trace build"):
        td.summarize(td.Trace(1, 1, [[0] * td.SLOTS]))


def test_a_normal_build_is_refused(monkeypatch):
    # A stand-in for setup.py's record, so the test needs no built extension.
    import types

    import mla_backend

    info = types.ModuleType("mla_backend._build_info")
    info.TRACE_BUILD = False
    info.__file__ = "mla_backend/_build_info.py"
    monkeypatch.setitem(sys.modules, "mla_backend._build_info", info)
    monkeypatch.setattr(mla_backend, "_build_info", info, raising=False)
    with pytest.raises(SystemExit, match="not a trace build"):
        td.require_trace_build()
    info.TRACE_BUILD = True
    td.require_trace_build()
