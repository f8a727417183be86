"""Pure helpers of the decode benchmark: the case grid, sequence lengths, byte and FLOP counts,
rotation sizing, CSV and the text report. No CUDA here, so tests run on any machine.
"""

from __future__ import annotations

import csv
import math
import random
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

HEAD_DIM_QK = 576  # K: the whole latent vector (512 compressed KV + 64 rope)
HEAD_DIM_V = 512  # V: its first 512 dims
PAGE_SIZE = 64
BF16_BYTES = 2

DISTS = ("uniform", "skewed", "onelong")
SKEW_SIGMA = 1.0  # log-normal shape of the "skewed" lengths
SKEW_CAP = 4.0  # no "skewed" length above SKEW_CAP times the mean (before rescaling)
ONELONG_SHORT = 256  # the short sequences of "onelong", at most context / 16


@dataclass(frozen=True)
class Case:
    """One benchmark shape; ``lengths`` are the cache lengths, ``s_q`` new tokens included."""

    heads: int
    s_q: int
    batch: int
    context: int
    dist: str
    lengths: tuple[int, ...]

    @property
    def rows(self) -> int:
        return self.s_q * self.heads

    @property
    def max_len(self) -> int:
        return max(self.lengths)

    @property
    def total_len(self) -> int:
        return sum(self.lengths)

    def label(self) -> str:
        return f"h={self.heads} s_q={self.s_q} B={self.batch} ctx={self.context} {self.dist}"


def case_seed(base_seed: int, *key: object) -> int:
    """A stable 31-bit seed for ``key`` (Python's hash() of str is salted per process)."""
    return (base_seed * 1_000_003 + zlib.crc32(repr(key).encode())) & 0x7FFFFFFF


def make_lengths(dist: str, batch: int, context: int, s_q: int, seed: int) -> list[int]:
    """Cache lengths of one batch; every length is >= s_q so each causal query row sees a token.

    - ``uniform``: every sequence has ``context`` tokens.
    - ``skewed``: log-normal (sigma ``SKEW_SIGMA``) draws capped at ``SKEW_CAP`` times their
      mean, rescaled so the total is exactly ``batch * context``: the same bytes and FLOPs as
      ``uniform``, so the two differ only in how hard the work is to balance.
    - ``onelong``: sequence 0 has ``context`` tokens, the rest ``min(256, context // 16)``.
    """
    if batch < 1 or context < 1 or s_q < 1:
        raise ValueError(f"batch, context and s_q must be >= 1, got {batch}, {context}, {s_q}")
    low = s_q
    if dist == "uniform":
        return [max(context, low)] * batch
    if dist == "onelong":
        short = max(low, min(ONELONG_SHORT, context // 16))
        return [max(context, low)] + [short] * (batch - 1)
    if dist != "skewed":
        raise ValueError(f"unknown length distribution {dist!r}; choose from {DISTS}")
    rng = random.Random(seed)
    draws = [rng.lognormvariate(0.0, SKEW_SIGMA) for _ in range(batch)]
    cap = SKEW_CAP * sum(draws) / batch
    draws = [min(x, cap) for x in draws]
    total = batch * max(context, low)
    scale = total / sum(draws)
    lengths = [max(low, round(x * scale)) for x in draws]
    # Put the rounding remainder on the longest sequence so the total is exact.
    longest = max(range(batch), key=lengths.__getitem__)
    lengths[longest] += total - sum(lengths)
    if lengths[longest] < low:
        raise ValueError("skewed lengths: context too small for the batch")
    return lengths


def grid_lengths(dist: str, batch: int, context: int, s_q: int, seed: int = 0) -> list[int]:
    """The cache lengths of the grid's case (``build_cases`` with ``seed``): seeded by batch,
    context and s_q, not by the head count or the distribution, so that every head count of a
    (dist, batch, context, s_q) meets the same lengths. Scripts that rerun a grid case
    (ab_variants.py, trace_decode.py) take its lengths from here."""
    return make_lengths(dist, batch, context, s_q, case_seed(seed, batch, context, s_q))


def build_cases(
    heads: Iterable[int],
    s_qs: Iterable[int],
    batches: Iterable[int],
    contexts: Iterable[int],
    dists: Iterable[str],
    seed: int,
) -> list[Case]:
    """The grid, in (dist, heads, s_q, batch, context) order.

    A non-uniform case whose lengths equal the uniform ones (batch 1) is dropped as a duplicate.
    """
    cases = []
    for dist in dists:
        for h in heads:
            for s_q in s_qs:
                for b in batches:
                    for ctx in contexts:
                        lengths = grid_lengths(dist, b, ctx, s_q, seed)
                        if dist != "uniform" and lengths == make_lengths("uniform", b, ctx, s_q, 0):
                            continue
                        cases.append(Case(h, s_q, b, ctx, dist, tuple(lengths)))
    return cases


def kv_bytes(lengths: Sequence[int]) -> int:
    """Bytes of cached latent vectors the step must read once: sum(L) * 576 * 2."""
    return sum(lengths) * HEAD_DIM_QK * BF16_BYTES


def q_bytes(batch: int, s_q: int, heads: int) -> int:
    return batch * s_q * heads * HEAD_DIM_QK * BF16_BYTES


def out_bytes(batch: int, s_q: int, heads: int) -> int:
    return batch * s_q * heads * HEAD_DIM_V * BF16_BYTES


def case_bytes(case: Case) -> int:
    """The traffic a perfect kernel moves: KV read once, q read, out written."""
    return (
        kv_bytes(case.lengths)
        + q_bytes(case.batch, case.s_q, case.heads)
        + out_bytes(case.batch, case.s_q, case.heads)
    )


def case_flops(case: Case) -> int:
    """2 * s_q * h * (576 + 512) * sum(L): QK^T plus PV, causal masking not discounted."""
    return 2 * case.s_q * case.heads * (HEAD_DIM_QK + HEAD_DIM_V) * case.total_len


def pool_pages(lengths: Sequence[int]) -> int:
    """KV-cache pages one input set needs."""
    return sum(math.ceil(n / PAGE_SIZE) for n in lengths)


def rotation_sets(set_bytes: int, target_bytes: int, max_sets: int) -> int:
    """How many distinct input sets to cycle through so they span at least ``target_bytes``
    (a few times the L2), capped at ``max_sets``."""
    if set_bytes <= 0:
        raise ValueError("set_bytes must be positive")
    return max(1, min(max_sets, math.ceil(target_bytes / set_bytes)))


def check_indices(lengths: Sequence[int], k: int) -> list[int]:
    """Up to ``k`` sequences to check: the longest, the shortest and evenly spaced others."""
    n = len(lengths)
    if k <= 0:
        raise ValueError("k must be >= 1")
    if n <= k:
        return list(range(n))
    picked = {max(range(n), key=lengths.__getitem__), min(range(n), key=lengths.__getitem__)}
    step = n / k
    for j in range(k):
        if len(picked) >= k:
            break
        picked.add(int(j * step))
    return sorted(picked)


def parse_int_list(text: str) -> list[int]:
    """'16,32, 64' -> [16, 32, 64]."""
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values:
        raise ValueError(f"empty list: {text!r}")
    return values


def parse_name_list(text: str, allowed: Sequence[str]) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise ValueError(f"unknown or empty names {unknown or text!r}; choose from {allowed}")
    return names


def derived_metrics(case: Case, us: float, copy_gbps: float, gemm_tflops: float) -> dict:
    """GB/s, TFLOP/s and their share of the measured ceilings for one timing."""
    gbps = case_bytes(case) / (us * 1e-6) / 1e9
    tflops = case_flops(case) / (us * 1e-6) / 1e12
    return {
        "gbps": gbps,
        "tflops": tflops,
        "pct_copy": 100.0 * gbps / copy_gbps if copy_gbps > 0 else float("nan"),
        "pct_gemm": 100.0 * tflops / gemm_tflops if gemm_tflops > 0 else float("nan"),
    }


ENV_FIELDS = (
    "date", "gpu", "sm_clock_mhz", "max_sm_clock_mhz", "mem_clock_mhz", "driver",
    "torch", "cuda", "vllm", "triton", "git_sha", "build_sha",
)  # fmt: skip
CSV_FIELDS = ENV_FIELDS + (
    "copy_gbps", "gemm_tflops",  # measured ceilings
    # the case
    "heads", "s_q", "batch", "context", "dist", "total_len", "max_len", "bytes", "flops",
    # one implementation, one mode (whole | kernel)
    "impl", "mode", "status", "max_rel_err", "lse_err",
    "us", "gbps", "tflops", "pct_copy", "pct_gemm",
    "timing", "n_sets", "calls", "reps", "note",
)  # fmt: skip


def write_csv(path: str, rows: Sequence[dict], fields: Sequence[str] = CSV_FIELDS) -> None:
    """Write ``rows`` (dicts; missing keys blank, floats to 6 significant digits)."""

    def fmt(value: object) -> object:
        if isinstance(value, float):
            return "" if math.isnan(value) else f"{value:.6g}"
        return "" if value is None else value

    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: fmt(row.get(k)) for k in fields})


def read_csv(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def merge_csvs(paths: Iterable[str]) -> dict[tuple, dict]:
    """The rows of several CSVs by (heads, s_q, batch, context, dist, impl, mode), a later
    file's row replacing an earlier one's: for grids split over runs or partly rerun."""
    merged: dict[tuple, dict] = {}
    for path in paths:
        for row in read_csv(path):
            key = tuple(int(row[k]) for k in ("heads", "s_q", "batch", "context"))
            merged[key + (row["dist"], row["impl"], row["mode"])] = row
    return merged


# ---------------------------------------------------------------------------------------------
# Text report

RIVALS = ("flashmla", "fa3", "triton")
USABLE = ("ok", "unchecked")  # statuses whose timings count
DIST_SHORT = {"uniform": "unif", "skewed": "skew", "onelong": "1lng"}


def cell(result: dict | None) -> str:
    """A timing cell: µs, or why there is none."""
    if result is None:
        return "-"
    if result.get("us") is not None and not math.isnan(result["us"]):
        flag = "!" if result["status"] == "FAIL" else ""
        return f"{result['us']:.1f}{flag}"
    return {"unavailable": "n/a", "unsupported": "n/a"}.get(result["status"], result["status"])


def timed_us(result: dict | None) -> float | None:
    """µs of a result that passed the check (or was not checked), else None."""
    if not result or result.get("status") not in USABLE:
        return None
    us = result.get("us")
    return None if us is None or math.isnan(us) else us


def best_rival_us(by_impl: dict[str, dict]) -> tuple[str | None, float]:
    """The fastest rival whose output passed the check (whole per-step cost)."""
    best, best_us = None, math.inf
    for name in RIVALS:
        us = timed_us(by_impl.get(name))
        if us is not None and us < best_us:
            best, best_us = name, us
    return best, best_us


def speedup(by_impl: dict[str, dict]) -> float:
    """Best rival µs / our µs (both whole per-step cost, both checked); > 1: we are faster."""
    ours = timed_us(by_impl.get("ours"))
    _, rival = best_rival_us(by_impl)
    if ours is None or math.isinf(rival):
        return float("nan")
    return rival / ours


TABLE_HEADER = (
    f"{'h':>3} {'sq':>2} {'B':>3} {'ctx':>5} {'len':>4} |"
    f" {'ours':>8} {'ours_k':>8} | {'flashmla':>8} {'fa3':>8} {'triton':>8} | best/ours"
)


def table_line(case: Case, whole: dict[str, dict], ours_kernel: dict | None) -> str:
    """One compact line: whole-cost µs per implementation, our kernel-only µs, the speedup."""
    ratio = speedup(whole)
    best, _ = best_rival_us(whole)
    tail = f"{ratio:5.2f}x {best}" if not math.isnan(ratio) else "  -"
    return (
        f"{case.heads:>3} {case.s_q:>2} {case.batch:>3} {case.context:>5}"
        f" {DIST_SHORT.get(case.dist, case.dist):>4} |"
        f" {cell(whole.get('ours')):>8} {cell(ours_kernel):>8} |"
        f" {cell(whole.get('flashmla')):>8} {cell(whole.get('fa3')):>8}"
        f" {cell(whole.get('triton')):>8} | {tail}"
    )


def geomean(values: Iterable[float]) -> float:
    vals = [v for v in values if v > 0 and not math.isnan(v) and not math.isinf(v)]
    if not vals:
        return float("nan")
    return math.exp(sum(math.log(v) for v in vals) / len(vals))


def summary_lines(entries: Sequence[tuple[Case, dict[str, dict]]]) -> list[str]:
    """Per (heads, s_q): geometric-mean speedup of ours over each rival and over the best one,
    and the worst case (whole per-step cost, checked outputs only)."""
    groups: dict[tuple[int, int], list[dict[str, dict]]] = {}
    for case, whole in entries:
        groups.setdefault((case.heads, case.s_q), []).append(whole)
    lines = [
        f"{'h':>3} {'sq':>2} {'n':>3} | "
        + " ".join(f"{r:>8}" for r in RIVALS)
        + " |     best    worst"
    ]
    for (h, s_q), items in sorted(groups.items()):
        per_rival = []
        for name in RIVALS:
            ratios = [
                timed_us(w.get(name)) / timed_us(w.get("ours"))
                for w in items
                if timed_us(w.get(name)) is not None and timed_us(w.get("ours")) is not None
            ]
            per_rival.append(geomean(ratios))
        best = [speedup(w) for w in items]
        finite = [b for b in best if not math.isnan(b)]
        worst = min(finite) if finite else float("nan")
        lines.append(
            f"{h:>3} {s_q:>2} {len(items):>3} | "
            + " ".join(f"{v:>7.2f}x" if not math.isnan(v) else f"{'-':>8}" for v in per_rival)
            + f" | {geomean(best):>7.2f}x {worst:>7.2f}x"
        )
    return lines


def plot_series(rows: Sequence[dict], metric: str) -> dict:
    """Group timed CSV rows for the plots:
    ``{(dist, batch): {(heads, s_q): {label: [(context, value), ...]}}}``; labels are the
    implementation names (whole per-step cost) and ``ours kernel``."""
    series: dict = {}
    for r in rows:
        value = r.get(metric)
        if r.get("mode") not in ("whole", "kernel") or value in (None, ""):
            continue
        if r["mode"] == "kernel" and r["impl"] != "ours":
            continue
        label = r["impl"] if r["mode"] == "whole" else f"{r['impl']} kernel"
        panel = series.setdefault((r["dist"], int(r["batch"])), {})
        lines = panel.setdefault((int(r["heads"]), int(r["s_q"])), {})
        lines.setdefault(label, []).append((int(r["context"]), float(value)))
    return series
