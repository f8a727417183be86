"""The performance issue's targets, case by case, from bench_decode.py CSVs (no GPU needed).

    python benchmarks/targets.py grid_uniform.csv grid_skewed.csv lastcase.csv \\
        [--base old_uniform.csv old_skewed.csv ...] [--out targets.txt]

Rows of a later CSV replace those of an earlier one for the same case, implementation and mode
(as report.py merges them). Every figure is our whole per-step cost (metadata, decode, combine)
against the faster of FlashMLA and FA3 on the same case, both with checked outputs:

- parity: every case at least as fast as the faster rival; geomean over the grid >= 1.10x.
- memory-bound: 16/32/64 heads, s_q 1-2, contexts >= 4k, batch >= 64, and at most
  `MEMORY_BOUND_ROWS` query rows (64 heads with s_q = 2 is 128 rows, past the H200's ridge of
  ~97 rows: docs/perf.md, "intensity"), uniform lengths: >= 95% of the copy rate measured in
  the same run (`pct_copy`).
- compute-bound: 128 heads, contexts >= 4k, batch >= 64 (smaller batches cannot fill the GPU
  with work and are the small-batch target's), uniform lengths: >= 85% of the bf16 GEMM rate
  measured in the same run (`pct_gemm`).
- small batch: batch 1-8: our time at most 0.85x the faster rival's.
- skewed: skewed lengths: at least 1.10x the faster rival.

With --base, the same cases of an earlier run: ours now against ours then, and each rival now
against itself then (their drift is the noise floor of the comparison), as geomean speeds.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_utils import geomean, merge_csvs, timed_us  # noqa: E402

RIVALS = ("flashmla", "fa3")  # the rivals (Triton is benchmarked, never the faster)
MEMORY_BOUND_ROWS = 96
PARITY, GEOMEAN = 1.0, 1.10
MEMORY_PCT, COMPUTE_PCT = 95.0, 85.0
SMALL_RATIO, SKEWED_RATIO = 1 / 0.85, 1.10

Key = tuple[int, int, int, int, str]  # heads, s_q, batch, context, dist


@dataclass
class CaseResult:
    key: Key
    ours: float | None  # µs, whole step
    rival: str | None  # the faster rival
    rival_us: float | None
    pct_copy: float | None
    pct_gemm: float | None
    impl_us: dict[str, float]  # every checked implementation's whole-step µs

    @property
    def ratio(self) -> float | None:
        """Faster rival's µs over ours: > 1 when ours is faster."""
        if self.ours is None or self.rival_us is None:
            return None
        return self.rival_us / self.ours

    def label(self) -> str:
        h, s_q, b, ctx, dist = self.key
        return f"{h}h s_q={s_q} B={b} L={ctx // 1024}k {dist}"


def _float(value: str | None) -> float | None:
    try:
        x = float(value) if value not in (None, "") else None
    except ValueError:
        return None
    return None if x is None or math.isnan(x) else x


def load(paths: Sequence[str]) -> dict[Key, CaseResult]:
    """Whole-step results per case from bench_decode.py CSVs, later files winning."""
    by_case: dict[Key, dict[str, dict]] = {}
    for k, row in merge_csvs(paths).items():
        if k[6] == "whole":
            by_case.setdefault(k[:5], {})[k[5]] = row
    out = {}
    for key, impls in by_case.items():
        usable = {}
        for name, row in impls.items():
            us = timed_us({"status": row.get("status"), "us": _float(row.get("us"))})
            if us is not None:
                usable[name] = us
        rivals = {n: usable[n] for n in RIVALS if n in usable}
        rival = min(rivals, key=rivals.get) if rivals else None
        ours_row = impls.get("ours", {})
        out[key] = CaseResult(
            key=key,
            ours=usable.get("ours"),
            rival=rival,
            rival_us=rivals.get(rival) if rival else None,
            pct_copy=_float(ours_row.get("pct_copy")) if "ours" in usable else None,
            pct_gemm=_float(ours_row.get("pct_gemm")) if "ours" in usable else None,
            impl_us=usable,
        )
    return out


def is_memory_bound(k: Key) -> bool:
    h, s_q, b, ctx, dist = k
    return (
        h in (16, 32, 64)
        and s_q <= 2
        and s_q * h <= MEMORY_BOUND_ROWS
        and ctx >= 4096
        and b >= 64
        and dist == "uniform"
    )


def is_compute_bound(k: Key) -> bool:
    h, _, b, ctx, dist = k
    return h == 128 and ctx >= 4096 and b >= 64 and dist == "uniform"


@dataclass
class Target:
    name: str
    selects: Callable[[Key], bool]
    value: Callable[[CaseResult], float | None]
    threshold: float
    unit: str  # "x" or "%"


TARGETS = (
    Target("every case vs the faster rival", lambda k: True, lambda r: r.ratio, PARITY, "x"),
    Target("memory-bound, % of copy", is_memory_bound, lambda r: r.pct_copy, MEMORY_PCT, "%"),
    Target("compute-bound, % of GEMM", is_compute_bound, lambda r: r.pct_gemm, COMPUTE_PCT, "%"),
    Target("small batch (B <= 8)", lambda k: k[2] <= 8, lambda r: r.ratio, SMALL_RATIO, "x"),
    Target("skewed lengths", lambda k: k[4] == "skewed", lambda r: r.ratio, SKEWED_RATIO, "x"),
)


def evaluate(results: dict[Key, CaseResult]) -> dict:
    """Per target: cases, met, the range of values and the misses (worst first)."""
    out: dict = {}
    ratios = [r.ratio for r in results.values() if r.ratio is not None]
    out["cases"] = len(results)
    out["geomean"] = geomean(ratios)
    out["geomean_met"] = out["geomean"] >= GEOMEAN
    out["targets"] = []
    for t in TARGETS:
        chosen = [r for k, r in sorted(results.items()) if t.selects(k)]
        valued = [(r, t.value(r)) for r in chosen]
        have = [(r, v) for r, v in valued if v is not None]
        misses = sorted(((r, v) for r, v in have if v < t.threshold), key=lambda rv: rv[1])
        out["targets"].append(
            {
                "target": t,
                "cases": len(chosen),
                "timed": len(have),
                "met": len(have) - len(misses),
                "lo": min((v for _, v in have), default=None),
                "hi": max((v for _, v in have), default=None),
                "misses": misses,
                "untimed": [r for r, v in valued if v is None],
            }
        )
    return out


def compare(new: dict[Key, CaseResult], base: dict[Key, CaseResult]) -> dict[str, tuple]:
    """Geomean of base over new time per implementation, over the cases both timed it: > 1
    means faster now. {impl: (geomean, cases)}."""
    out = {}
    for impl in ("ours", *RIVALS):
        pairs = [
            base[k].impl_us[impl] / new[k].impl_us[impl]
            for k in new.keys() & base.keys()
            if impl in new[k].impl_us and impl in base[k].impl_us
        ]
        if pairs:
            out[impl] = (geomean(pairs), len(pairs))
    return out


def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    return f"{v:.1f}%" if unit == "%" else f"{v:.3f}x"


def report(ev: dict, drift: dict[str, tuple] | None = None, max_misses: int = 50) -> list[str]:
    lines = [
        f"{ev['cases']} cases; geomean vs the faster rival {ev['geomean']:.3f}x "
        f"(target {GEOMEAN:.2f}x: {'met' if ev['geomean_met'] else 'MISSED'})"
    ]
    for t in ev["targets"]:
        tgt = t["target"]
        need = f">= {_fmt(tgt.threshold, tgt.unit)}"
        lines.append(
            f"{tgt.name}: {t['met']} of {t['timed']} at {need}"
            f" (range {_fmt(t['lo'], tgt.unit)} - {_fmt(t['hi'], tgt.unit)})"
            + (f", {len(t['untimed'])} without a checked timing" if t["untimed"] else "")
        )
        for r, v in t["misses"][:max_misses]:
            vs = f" vs {r.rival}" if tgt.unit == "x" and r.rival else ""
            lines.append(f"    {r.label():28} {_fmt(v, tgt.unit)}{vs}")
        if len(t["misses"]) > max_misses:
            lines.append(f"    ... and {len(t['misses']) - max_misses} more")
        for r in t["untimed"][:max_misses]:
            lines.append(f"    {r.label():28} no checked timing")
    if drift:
        lines.append(
            "speed against the base run (geomean of base / new time per case): "
            + ", ".join(f"{impl} {g:.4f}x over {n}" for impl, (g, n) in drift.items())
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("csvs", nargs="+", help="bench_decode.py CSVs of one run")
    ap.add_argument("--base", nargs="+", help="CSVs of an earlier run to compare against")
    ap.add_argument("--out", help="also write the report here")
    args = ap.parse_args(argv)
    results = load(args.csvs)
    if not results:
        print("no whole-step rows in the CSVs", file=sys.stderr)
        return 1
    drift = compare(results, load(args.base)) if args.base else None
    lines = report(evaluate(results), drift)
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
