"""In-process A/B of variants of ours: the method for effects of a few percent (docs/bench.md).

    python benchmarks/ab_variants.py --cases 64,1,1,4096,uniform 16,1,32,1024,skewed \\
        --variants base: half:parts=/2 knob:MLA_SOME_KNOB=1 --out ab.csv

A variant is ``name:K=V,K=V,...``: environment variables set while its decode calls are built
and captured (a launcher that reads a knob from the environment bakes it into the graph; the
committed kernels read none, so knobs are for experiment builds), and ``parts=N`` or
``parts=/k`` for a split-KV part count of N, or the default one divided by k. A case's cache
lengths are those of the benchmark grid's case of the same name (``bench_utils.grid_lengths``).
Every (case, variant) is one CUDA graph over the benchmark's rotating input sets (cold L2, as
bench_decode.py); the rounds replay the variants interleaved, and each variant's time is the
median over the rounds of (replay time / calls), whole decode step. Timing noise between
processes reaches ~8% on single cases; inside one process, with the variants interleaved, the
rounds agree within ~1%. The first variant is the baseline; each row also gives the largest
difference of its set-0 output from the baseline's (a knob that must not change the arithmetic
shows 0).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
REPO_ROOT = str(Path(__file__).resolve().parents[1])
if REPO_ROOT not in sys.path:
    # Appended, not inserted: a package on PYTHONPATH (another build to compare) still wins.
    sys.path.append(REPO_ROOT)

from bench_utils import (  # noqa: E402
    Case,
    case_seed,
    grid_lengths,
    kv_bytes,
    out_bytes,
    q_bytes,
    rotation_sets,
)
from decode_impls import ImplOptions, Ours  # noqa: E402

DISTS = ("uniform", "skewed", "onelong")


@dataclass(frozen=True)
class Variant:
    name: str
    env: dict[str, str] = field(default_factory=dict)
    parts: str | None = None  # "N" or "/k"


def parse_variant(text: str) -> Variant:
    """``name:K=V,K=V[,parts=N|parts=/k]`` (``name:`` alone is the default build)."""
    name, sep, rest = text.partition(":")
    if not name or not sep:
        raise ValueError(f"variant {text!r}: expected name:K=V,... (name: alone for none)")
    env, parts = {}, None
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not key or not eq:
            raise ValueError(f"variant {text!r}: {item!r} is not K=V")
        if key == "parts":
            resolve_parts(value, 132)  # validates the form
            parts = value
        else:
            env[key] = value
    return Variant(name, env, parts)


def resolve_parts(spec: str | None, default: int) -> int:
    """The part count of a variant: the default, ``N``, or the default divided by ``k``."""
    if spec is None:
        return default
    try:
        value = int(spec[1:]) if spec.startswith("/") else int(spec)
    except ValueError:
        raise ValueError(f"parts={spec!r}: expected N or /k") from None
    if value < 1:
        raise ValueError(f"parts={spec!r}: must be >= 1")
    return max(1, default // value) if spec.startswith("/") else value


def parse_case(text: str) -> tuple[int, int, int, int, str]:
    """``heads,s_q,batch,context,dist``."""
    fields = text.split(",")
    if len(fields) != 5 or fields[4] not in DISTS:
        raise ValueError(f"case {text!r}: expected heads,s_q,batch,context,{'|'.join(DISTS)}")
    heads, s_q, batch, context = (int(f) for f in fields[:4])
    return heads, s_q, batch, context, fields[4]


class OursVariant(Ours):
    """ours with a variant's part count."""

    def __init__(self, data, opts, parts: str | None):
        self._parts_spec = parts
        super().__init__(data, opts)

    def _num_parts(self, case, dev) -> int:
        return resolve_parts(self._parts_spec, super()._num_parts(case, dev))


class _Env:
    """Sets a variant's environment for the block, restores the previous one after."""

    def __init__(self, env: dict[str, str]):
        self.env, self.saved = env, {}

    def __enter__(self):
        self.saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _cuda_capture(fn):
    """One CUDA graph of ``fn``'s launches; returns its replay."""
    import torch

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def run(args, *, device="cuda", capture=_cuda_capture, timer=None, l2_bytes=None) -> list[dict]:
    """Time every variant on every case; one row per (case, variant). ``capture``, ``timer``
    and ``l2_bytes`` are the GPU's parts (a CPU test passes stand-ins)."""
    import torch
    from bench_decode import _time_once, make_case_data

    timer = timer or _time_once
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    variants = [parse_variant(v) for v in args.variants]
    if Ours._ops is None:
        Ours.probe()
    if l2_bytes is None:
        l2_bytes = torch.cuda.get_device_properties(0).L2_cache_size
    rows = []
    for spec in args.cases:
        heads, s_q, batch, context, dist = parse_case(spec)
        seed = case_seed(args.seed, heads, s_q, batch, context, dist)
        lengths = tuple(grid_lengths(dist, batch, context, s_q, args.seed))  # the grid's case
        case = Case(heads, s_q, batch, context, dist, lengths)
        set_bytes = kv_bytes(lengths) + q_bytes(batch, s_q, heads) + out_bytes(batch, s_q, heads)
        budget = int(args.mem_budget_gb * 1e9)
        n_sets = min(
            rotation_sets(set_bytes, 4 * l2_bytes, args.max_sets),
            max(1, budget // kv_bytes(lengths)),
        )
        data = make_case_data(case, n_sets, seed, 192**-0.5, budget, device=device)
        graphs, outs = [], []
        for v in variants:
            with _Env(v.env):
                impl = OursVariant(data, ImplOptions(), v.parts)

                def step(impl=impl, n_sets=n_sets):
                    for i in range(n_sets):
                        impl.whole(i)

                step()  # warm-up, outside the capture
                sync()
                outs.append(impl.out[0].float().clone())
                replay = capture(step)
            replay()
            one = max(timer(replay), 1e-7)
            inner = max(1, math.ceil(args.replay_ms * 1e-3 / one))
            graphs.append((replay, inner, impl))
        times = [[] for _ in variants]
        for _ in range(args.rounds):
            for k, (replay, inner, _) in enumerate(graphs):

                def replays(replay=replay, inner=inner):
                    for _ in range(inner):
                        replay()

                times[k].append(timer(replays) * 1e6 / (inner * n_sets))
        base = statistics.median(times[0])
        line = [f"{spec:>26}"]
        for k, v in enumerate(variants):
            us = statistics.median(times[k])
            diff = (outs[k] - outs[0]).abs().max().item()
            rows.append(
                {
                    "case": spec,
                    "variant": v.name,
                    "num_parts": graphs[k][2].meta[0].shape[0],
                    "us": round(us, 3),
                    "speedup": round(base / us, 4),
                    "spread": round((max(times[k]) - min(times[k])) / us, 4),
                    "max_diff": diff,
                    "nan": bool(outs[k].isnan().any()),
                    "n_sets": n_sets,
                }
            )
            line.append(f"{v.name}={us:8.2f} ({base / us:5.3f})")
        print(" ".join(line), flush=True)
        del graphs, outs, data
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def summary(rows: list[dict]) -> list[str]:
    """Geomean, min and max speedup of every variant after the first, over the cases."""
    names = list(dict.fromkeys(r["variant"] for r in rows))
    lines = []
    for name in names[1:]:
        s = [r["speedup"] for r in rows if r["variant"] == name]
        geo = math.exp(sum(map(math.log, s)) / len(s))
        lines.append(f"{name} vs {names[0]}: geomean {geo:.4f}, min {min(s):.3f}, max {max(s):.3f}")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", required=True, help="heads,s_q,batch,context,dist")
    p.add_argument("--variants", nargs="+", required=True, help="name:K=V,...,parts=N|/k")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--replay-ms", type=float, default=3.0, help="replays per round sample")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-sets", type=int, default=256, help="rotating input sets, at most")
    p.add_argument("--mem-budget-gb", type=float, default=40.0)
    p.add_argument("--out", default="ab.csv")
    args = p.parse_args(argv)
    for v in args.variants:
        parse_variant(v)  # fail before any GPU work
    for c in args.cases:
        parse_case(c)
    t0 = time.time()
    rows = run(args)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for line in summary(rows):
        print(line)
    print(f"{len(rows)} rows in {time.time() - t0:.0f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
