"""Paged MLA decode benchmark: ours against vLLM 0.26's FlashMLA, FA3 (q_v) and Triton MLA.

For each case it first checks every implementation's output against the fp32 reference, then
times the whole per-step cost (scheduler metadata + kernels) and the kernels alone, with CUDA
graphs over rotating input sets (cold L2), every implementation's samples taken in turn.
Writes a CSV, a text table and plots. Method:
docs/bench.md; usage: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from bench_utils import (
    DISTS,
    ENV_FIELDS,
    TABLE_HEADER,
    USABLE,
    Case,
    build_cases,
    case_bytes,
    case_flops,
    case_seed,
    check_indices,
    derived_metrics,
    kv_bytes,
    out_bytes,
    parse_int_list,
    parse_name_list,
    plot_series,
    pool_pages,
    q_bytes,
    rotation_sets,
    summary_lines,
    table_line,
    write_csv,
)
from decode_impls import IMPLS, CaseData, ImplOptions, Unavailable, Unsupported

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.append(str(REPO_ROOT))  # an installed mla_backend still wins

FULL_GRID = {
    "heads": [16, 32, 64, 128],
    "batch": [1, 8, 32, 128],
    "contexts": [1024, 4096, 16384, 32768],
    "sq": [1, 2, 4],
    "dists": ["uniform", "skewed"],
}
QUICK_GRID = {
    "heads": [16, 128],
    "batch": [1, 32, 128],
    "contexts": [4096, 32768],
    "sq": [1, 2],
    "dists": ["uniform", "skewed"],
}
GEMM_N = 8192
COPY_BYTES = 1 << 30


def log(msg: str = "") -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------------------------------------
# Timing


@dataclass
class Timing:
    us: float  # median time of one call
    method: str  # "graph" or "eager (<why the capture failed>)"
    calls: int  # calls per timed sample
    reps: int  # timed samples


def _time_once(run) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    run()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e-3


@dataclass
class Sampler:
    """A prepared timing: ``sample()`` runs one timed sample and returns its seconds."""

    sample: Callable[[], float]
    calls: int  # calls per sample
    reps: int  # samples to take
    method: str


def prepare_timing(
    fns: list,
    *,
    budget_s: float,
    min_reps: int,
    max_reps: int,
    min_replay_s: float,
    max_calls: int = 4096,
    use_graph: bool = True,
) -> Sampler:
    """Capture the calls of cycling through ``fns`` (one per input set) for timing.

    One CUDA graph captures ``calls`` back-to-back calls (a multiple of ``len(fns)``, aiming at
    ``min_replay_s`` per replay); each sample, timed with CUDA events, replays it enough times
    to last ``min_replay_s``; ``reps`` samples spend about ``budget_s`` (``min_reps`` to
    ``max_reps``). If capture fails, the same loop runs eagerly (method says so).
    """
    n = len(fns)

    def one_pass() -> None:
        for f in fns:
            f()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture stream: JIT, lazy init, allocator
        one_pass()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    per_call = max(_time_once(one_pass) / n, 1e-7)  # eager: an upper bound
    calls = n * max(1, min(math.ceil(min_replay_s / (per_call * n)), max(1, max_calls // n)))

    def eager() -> None:
        for j in range(calls):
            fns[j % n]()

    run, method = eager, "eager"
    if use_graph:
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                eager()
            run, method = graph.replay, "graph"
        except Exception as e:  # any capture failure falls back to eager
            method = f"eager ({type(e).__name__})"
            torch.cuda.synchronize()
    run()  # warm replay
    first = max(_time_once(run), 1e-7)
    # The eager estimate can be launch-bound: replay several times per sample if one is short.
    inner = max(1, math.ceil(min_replay_s / first))

    def sample() -> None:
        for _ in range(inner):
            run()

    reps = max(min_reps, min(max_reps, int(budget_s / (first * inner))))
    return Sampler(lambda: _time_once(sample), calls * inner, reps, method)


def _timing(sampler: Sampler, times: list[float]) -> Timing:
    return Timing(
        statistics.median(times) / sampler.calls * 1e6, sampler.method, sampler.calls, len(times)
    )


def time_calls(fns: list, **kw) -> Timing:
    """Median per-call time of cycling through ``fns``: ``prepare_timing``, then its samples."""
    sampler = prepare_timing(fns, **kw)
    return _timing(sampler, [sampler.sample() for _ in range(sampler.reps)])


def time_interleaved(samplers: list[Sampler]) -> list[Timing | Exception]:
    """The samples of several prepared timings taken round robin (one of each in turn, each
    up to its own ``reps``), so that every one is timed across the same stretch of the run: the
    GPU's clock under its power limit drifts over a case's seconds of compute-bound work, and
    timing the implementations one after another let the first ones run cooler (docs/perf.md
    v24: our whole step measured first read up to 12% faster than our kernels alone measured
    right after it, at 128 heads). A sampler that raises gets its exception in its place."""
    times: list[list[float]] = [[] for _ in samplers]
    failed: list[Exception | None] = [None] * len(samplers)
    for r in range(max((s.reps for s in samplers), default=0)):
        for i, s in enumerate(samplers):
            if failed[i] is None and r < s.reps:
                try:
                    times[i].append(s.sample())
                except Exception as e:  # a rival's failure must not stop the others
                    failed[i] = e
    return [failed[i] or _timing(s, times[i]) for i, s in enumerate(samplers)]


# ---------------------------------------------------------------------------------------------
# Environment and ceilings


def graph_us(fn) -> float:
    """Median µs per call of one callable in a CUDA graph (the small scripts' timer:
    q_split.py, varlen_decode.py)."""
    return time_calls([fn], budget_s=0.3, min_reps=5, max_reps=30, min_replay_s=2e-3).us


def _nvidia_smi(device: int) -> dict:
    """Name, clocks and driver of ``device`` from nvidia-smi ({} when it is missing)."""
    fields = "name,clocks.sm,clocks.max.sm,clocks.mem,driver_version"
    cmd = ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits"]
    uuid = getattr(torch.cuda.get_device_properties(device), "uuid", None)
    # By UUID first (nvidia-smi ignores CUDA_VISIBLE_DEVICES), else the first GPU listed.
    by_uuid = [[f"--id=GPU-{uuid}"]] if uuid is not None else []
    for extra in [*by_uuid, []]:
        try:
            out = subprocess.run(cmd + extra, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return {}
        lines = out.stdout.strip().splitlines()
        values = [v.strip() for v in lines[0].split(",")] if out.returncode == 0 and lines else []
        if len(values) == 5:
            keys = ("smi_name", "sm_clock_mhz", "max_sm_clock_mhz", "mem_clock_mhz", "driver")
            return dict(zip(keys, values, strict=True))
    return {}


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # not installed as a distribution: ask the module
        try:
            return str(__import__(module).__version__)
        except Exception:
            return "n/a"


def _git_sha() -> str:
    def git(*args: str) -> str:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=20
        )
        if out.returncode != 0:
            raise OSError(out.stderr)
        return out.stdout.strip()

    try:
        sha = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def _build_sha() -> str:
    """The source commit of the imported extension build (setup.py's SOURCE_SHA): the build
    that ran, where git_sha names the tree the benchmark ran from."""
    try:
        from mla_backend import _build_info
    except ImportError:
        return "unknown"
    return str(getattr(_build_info, "SOURCE_SHA", "unknown"))


def collect_env(device: int) -> dict:
    props = torch.cuda.get_device_properties(device)
    env = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "gpu": props.name,
        "num_sms": props.multi_processor_count,
        "l2_bytes": getattr(props, "L2_cache_size", 0),
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda),
        "vllm": _version("vllm"),
        "triton": _version("triton"),
        "git_sha": _git_sha(),
        "build_sha": _build_sha(),
        "python": sys.version.split()[0],
    }
    env.update(_nvidia_smi(device))
    return env


def _copy_gbps(**kw) -> float:
    src = torch.empty(COPY_BYTES // 2, dtype=torch.bfloat16, device="cuda").normal_()
    dst = torch.empty_like(src)
    t = time_calls([lambda: dst.copy_(src)], use_graph=False, **kw)
    return 2 * COPY_BYTES / (t.us * 1e-6) / 1e9


def _gemm_tflops(**kw) -> float:
    a = torch.randn(GEMM_N, GEMM_N, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(GEMM_N, GEMM_N, dtype=torch.bfloat16, device="cuda")
    c = torch.empty_like(a)
    t = time_calls([lambda: torch.mm(a, b, out=c)], use_graph=False, **kw)
    return 2 * GEMM_N**3 / (t.us * 1e-6) / 1e12


def measure_ceilings(budget_s: float) -> dict:
    """Device-to-device copy GB/s (bytes read + written) and bf16 GEMM TFLOP/s (8192^3)."""
    kw = {"budget_s": budget_s, "min_reps": 10, "max_reps": 50, "min_replay_s": 5e-3}
    ceilings = {"copy_gbps": _copy_gbps(**kw), "gemm_tflops": _gemm_tflops(**kw)}
    torch.cuda.empty_cache()
    return ceilings


# ---------------------------------------------------------------------------------------------
# Inputs and the check


def make_case_data(
    case: Case, n_sets: int, seed: int, softmax_scale: float, mem_budget: int, device="cuda"
) -> CaseData:
    """Random inputs: one page pool shared by ``n_sets`` sets, each with its own q and a block
    table of its own pages in random order. Unused block-table entries hold page 0 (a valid id:
    rivals need not tolerate garbage there)."""
    dev = torch.device(device)
    gen = torch.Generator(device=dev)
    gen.manual_seed(seed)
    pages = pool_pages(case.lengths)
    total = pages * n_sets
    kv_cache = torch.empty((total, 64, 576), dtype=torch.bfloat16, device=dev)
    kv_cache.normal_(generator=gen)
    perm = torch.randperm(total, generator=gen, device=dev).to(torch.int32)
    per_seq = torch.tensor([math.ceil(n / 64) for n in case.lengths], device=dev)
    max_pages = int(max(math.ceil(n / 64) for n in case.lengths))
    starts = torch.cumsum(per_seq, 0) - per_seq
    col = torch.arange(max_pages, device=dev)
    local = (starts[:, None] + col[None, :]).clamp(max=pages - 1)
    valid = col[None, :] < per_seq[:, None]
    block_tables, qs = [], []
    for s in range(n_sets):
        own = perm[s * pages : (s + 1) * pages]
        block_tables.append(torch.where(valid, own[local], 0).to(torch.int32).contiguous())
        qs.append(
            torch.randn(
                (case.batch, case.s_q, case.heads, 576),
                generator=gen,
                device=dev,
                dtype=torch.bfloat16,
            )
        )
    seqlens = torch.tensor(case.lengths, dtype=torch.int32, device=dev)
    return CaseData(case, qs, kv_cache, block_tables, seqlens, softmax_scale, mem_budget)


def reference(data: CaseData, idx: list[int]):
    """fp32 reference of input set 0, sequences ``idx`` only."""
    from mla_backend.reference import mla_decode_reference

    sel = torch.tensor(idx, device=data.device)
    return mla_decode_reference(
        data.q[0][sel],
        data.kv_cache,
        data.block_tables[0][sel],
        data.seqlens[sel],
        data.softmax_scale,
        causal=data.case.s_q > 1,
    )


def compare(out, lse, ref, idx: list[int], tol: float) -> tuple[str, float, float]:
    """(status, max |out - ref| / max |ref|, max |lse - ref_lse|) over the checked sequences.

    The LSE bound ``2e-2 + 1e-2 |ref|`` admits a bf16 LSE (Triton) and still catches a wrong
    scale or layout."""
    ref_out, ref_lse = ref
    sel = torch.tensor(idx, device=out.device)
    o, lse = out[sel].float(), lse[sel].float()
    if not (torch.isfinite(o).all() and torch.isfinite(lse).all()):
        return "FAIL", float("nan"), float("nan")
    rel = ((o - ref_out).abs().max() / ref_out.abs().max().clamp_min(1e-12)).item()
    lse_diff = (lse - ref_lse).abs()
    lse_ok = bool((lse_diff <= 2e-2 + 1e-2 * ref_lse.abs()).all())
    return ("ok" if rel <= tol and lse_ok else "FAIL"), rel, lse_diff.max().item()


# ---------------------------------------------------------------------------------------------
# One case


def run_case(case: Case, args, impls: dict, ceilings: dict, env: dict, device="cuda") -> list[dict]:
    """Check then time every implementation; returns CSV rows (one per impl and mode).

    ``impls`` maps each requested implementation to None (available) or why it is not."""
    base = {
        **{k: env.get(k) for k in ENV_FIELDS},
        **ceilings,
        "heads": case.heads,
        "s_q": case.s_q,
        "batch": case.batch,
        "context": case.context,
        "dist": case.dist,
        "total_len": case.total_len,
        "max_len": case.max_len,
        "bytes": case_bytes(case),
        "flops": case_flops(case),
    }
    mem_budget = int(args.mem_budget_gb * 1e9)
    kvb = kv_bytes(case.lengths)
    if kvb > mem_budget:
        return [
            {**base, "impl": name, "status": "skip", "note": "KV over --mem-budget-gb"}
            for name in impls
        ]
    set_bytes = kvb + q_bytes(case.batch, case.s_q, case.heads)
    set_bytes += out_bytes(case.batch, case.s_q, case.heads)
    target = args.rotate_mb * 1e6 if args.rotate_mb > 0 else 4 * (env["l2_bytes"] or 64 << 20)
    n_sets = min(rotation_sets(set_bytes, target, args.max_sets), max(1, mem_budget // kvb))
    seed = case_seed(args.seed, case.heads, case.s_q, case.batch, case.context, case.dist)
    data = make_case_data(case, n_sets, seed, args.softmax_scale, mem_budget, device)

    idx = check_indices(case.lengths, args.check_seqs)
    ref, ref_note = None, ""
    if not args.no_check:
        try:
            ref = reference(data, idx)
        except Exception as e:  # no reference: time unchecked
            ref_note = f"no reference: {type(e).__name__}: {e}"

    opts = ImplOptions(args.fa3_num_splits, args.triton_multi_token, env["num_sms"])
    timing_kw = {
        "budget_s": args.budget_ms * 1e-3,
        "min_reps": args.min_reps,
        "max_reps": args.max_reps,
        "min_replay_s": 2e-3,
        "use_graph": not args.no_graph,
    }
    rows, pending, kept = [], [], []
    for name, reason in impls.items():
        row = {**base, "impl": name, "n_sets": n_sets}
        if reason is not None:
            rows.append({**row, "status": "unavailable", "note": reason})
            continue
        try:
            impl = IMPLS[name](data, opts)
            row["note"] = impl.note
            if ref is None:
                status, rel, lse_err = "unchecked", float("nan"), float("nan")
                row["note"] = "; ".join(x for x in (impl.note, ref_note) if x)
            else:
                out, lse = impl.run(0)
                status, rel, lse_err = compare(out, lse, ref, idx, args.tol)
                del out, lse
        except Unsupported as e:
            rows.append({**row, "status": "unsupported", "note": str(e)})
            continue
        except Exception as e:  # a rival's failure must not stop the run
            _assert_device_healthy(name, e)
            rows.append({**row, "status": "error", "note": f"{type(e).__name__}: {e}"[:300]})
            continue
        row.update(status=status, max_rel_err=rel, lse_err=lse_err)
        # A rival that fails the check is unusable; ours is timed anyway, flagged FAIL.
        if status not in USABLE and name != "ours":
            rows.append(row)
            continue
        for mode in ("whole", "kernel"):
            fn = getattr(impl, mode)
            try:
                sampler = prepare_timing(
                    [lambda i=i, fn=fn: fn(i) for i in range(n_sets)], **timing_kw
                )
            except Exception as e:
                _assert_device_healthy(name, e)
                rows.append(timing_error(row, mode, e))
                continue
            pending.append((row, mode, sampler))
        kept.append(impl)  # its graphs stay alive until every implementation is timed

    # Every implementation's samples in turn (time_interleaved), not one after another.
    for (row, mode, _), t in zip(pending, time_interleaved([p[2] for p in pending]), strict=True):
        if isinstance(t, Exception):
            _assert_device_healthy(row["impl"], t)
            rows.append(timing_error(row, mode, t))
            continue
        metrics = derived_metrics(case, t.us, ceilings["copy_gbps"], ceilings["gemm_tflops"])
        rows.append(
            {
                **row,
                "mode": mode,
                "us": t.us,
                **metrics,
                "timing": t.method,
                "calls": t.calls,
                "reps": t.reps,
            }
        )
    del kept, pending
    del data, ref
    torch.cuda.empty_cache()
    return rows


def timing_error(row: dict, mode: str, error: Exception) -> dict:
    """The CSV row of a timing that failed."""
    return {
        **row,
        "mode": mode,
        "status": "error",
        "note": f"timing: {type(error).__name__}: {error}"[:300],
    }


def _assert_device_healthy(name: str, error: Exception) -> None:
    """After an exception, make sure the CUDA context still works (an illegal address is
    sticky: nothing after it can be trusted, so stop with the partial results written)."""
    if not torch.cuda.is_initialized():
        return
    try:
        torch.cuda.synchronize()
    except Exception as fatal:
        raise SystemExit(f"{name}: CUDA context lost after {error!r}: {fatal!r}") from fatal


# ---------------------------------------------------------------------------------------------
# Report


def by_mode(rows: list[dict]) -> tuple[dict[str, dict], dict | None]:
    """Whole-cost result per impl (or its status row) and our kernel-only result."""
    whole, ours_kernel = {}, None
    for r in rows:
        if r.get("mode") in (None, "", "whole"):
            whole.setdefault(r["impl"], r)
        if r["impl"] == "ours" and r.get("mode") == "kernel":
            ours_kernel = r
    return whole, ours_kernel


def progress_line(k: int, n: int, case: Case, rows: list[dict], seconds: float) -> str:
    whole, ours_kernel = by_mode(rows)
    short = {"ours": "ours", "flashmla": "fmla", "fa3": "fa3", "triton": "tri"}
    parts = []
    for name, r in whole.items():
        if r.get("us") is not None:
            val = f"{r['us']:.1f}"
            if name == "ours" and ours_kernel is not None and ours_kernel.get("us") is not None:
                val += f"/{ours_kernel['us']:.1f}"
            if r["status"] == "FAIL":
                val += f"!FAIL(rel {r.get('max_rel_err', float('nan')):.1e})"
        else:
            val = r["status"]
        parts.append(f"{short.get(name, name)} {val}")
    return f"[{k:>3}/{n}] {case.label():<36} " + "  ".join(parts) + f"  ({seconds:.1f}s)"


PLOT_COLORS = {
    "ours": "tab:red",
    "flashmla": "tab:blue",
    "fa3": "tab:green",
    "triton": "tab:purple",
}


def write_plots(out_dir: Path, rows: list[dict], ceilings: dict) -> list[str]:
    """GB/s and TFLOP/s vs context, a line per implementation, a subplot per heads x s_q; one
    figure per (metric, length distribution, batch)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed: no plots")
        return []
    written = []
    for metric, ceiling, unit in (
        ("gbps", ceilings["copy_gbps"], "GB/s"),
        ("tflops", ceilings["gemm_tflops"], "TFLOP/s"),
    ):
        for (dist, batch), panels in plot_series(rows, metric).items():
            heads = sorted({h for h, _ in panels})
            sqs = sorted({s for _, s in panels})
            fig, axes = plt.subplots(
                len(heads), len(sqs), figsize=(4 * len(sqs), 3 * len(heads)), squeeze=False
            )
            for r, h in enumerate(heads):
                for c, s_q in enumerate(sqs):
                    ax = axes[r][c]
                    for label, points in sorted(panels.get((h, s_q), {}).items()):
                        xs, ys = zip(*sorted(points), strict=True)
                        impl = label.split()[0]
                        style = "--" if label.endswith("kernel") else "-"
                        color = PLOT_COLORS.get(impl)
                        ax.plot(xs, ys, style, color=color, marker="o", markersize=3, label=label)
                    ax.axhline(ceiling, color="gray", linestyle=":", linewidth=1)
                    ax.set_ylim(bottom=0)
                    ax.set_xscale("log", base=2)
                    ax.set_title(f"h={h} s_q={s_q}", fontsize=9)
                    ax.set_xlabel("context")
                    ax.set_ylabel(unit)
                    ax.grid(True, alpha=0.3)
            axes[0][0].legend(fontsize=7)
            fig.suptitle(f"MLA decode {unit}, {dist} lengths, B={batch} (dotted: measured ceiling)")
            fig.tight_layout()
            path = out_dir / f"{metric}_{dist}_B{batch}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path.name)
    return written


# ---------------------------------------------------------------------------------------------
# CLI


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="representative subset (< 2 min)")
    p.add_argument("--impls", default="ours,flashmla,fa3,triton", help="comma list, a subset")
    p.add_argument("--heads", help="comma list (default 16,32,64,128)")
    p.add_argument("--batch", help="comma list (default 1,8,32,128)")
    p.add_argument("--contexts", help="comma list (default 1024,4096,16384,32768)")
    p.add_argument("--sq", help="query tokens per sequence, comma list (default 1,2,4)")
    p.add_argument("--dists", help=f"length distributions from {DISTS} (default uniform,skewed)")
    p.add_argument("--out", help="output directory (default benchmarks/results/decode-<time>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--softmax-scale",
        type=float,
        default=192**-0.5,
        help="DeepSeek's 1/sqrt(qk_nope + qk_rope head dim)",
    )
    p.add_argument(
        "--mem-budget-gb",
        type=float,
        default=40.0,
        help="skip a case whose KV exceeds this; also caps rotation sets and rival workspaces",
    )
    p.add_argument(
        "--rotate-mb",
        type=float,
        default=0,
        help="bytes the rotating input sets span (default 4x the L2)",
    )
    p.add_argument("--max-sets", type=int, default=256, help="at most this many input sets")
    p.add_argument(
        "--budget-ms",
        type=float,
        help="timed replays per measurement (ms of GPU time; default 40, --quick 25)",
    )
    p.add_argument("--min-reps", type=int, default=5)
    p.add_argument("--max-reps", type=int, default=200)
    p.add_argument("--no-graph", action="store_true", help="time eagerly, no CUDA graphs")
    p.add_argument(
        "--check-seqs",
        type=int,
        default=8,
        help="sequences per case checked against the reference (longest included)",
    )
    p.add_argument("--tol", type=float, default=2e-2, help="max |out - ref| / max |ref| for a pass")
    p.add_argument("--no-check", action="store_true", help="time without checking")
    p.add_argument(
        "--fa3-num-splits",
        type=int,
        default=32,
        help="FA3 num_splits: 32 = vLLM under full CUDA graphs, 0 = FA3 heuristic (vLLM eager)",
    )
    p.add_argument(
        "--triton-multi-token",
        choices=("flatten", "skip"),
        default="flatten",
        help="Triton MLA at s_q > 1: flatten to B*s_q single-token rows, or skip",
    )
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--dry-run", action="store_true", help="list the cases and exit (no GPU)")
    args = p.parse_args(argv)

    preset = QUICK_GRID if args.quick else FULL_GRID
    args.heads = parse_int_list(args.heads) if args.heads else preset["heads"]
    args.batch = parse_int_list(args.batch) if args.batch else preset["batch"]
    args.contexts = parse_int_list(args.contexts) if args.contexts else preset["contexts"]
    args.sq = parse_int_list(args.sq) if args.sq else preset["sq"]
    args.dists = parse_name_list(args.dists, DISTS) if args.dists else preset["dists"]
    args.impls = parse_name_list(args.impls, tuple(IMPLS))
    if args.budget_ms is None:
        args.budget_ms = 25.0 if args.quick else 40.0
    return args


def dry_run(cases: list[Case], args) -> int:
    budget = args.mem_budget_gb * 1e9
    for k, c in enumerate(cases, 1):
        kvb = kv_bytes(c.lengths)
        skip = "  SKIP (KV over budget)" if kvb > budget else ""
        log(
            f"[{k:>3}/{len(cases)}] {c.label():<36} max_len={c.max_len:<6} "
            f"KV={kvb / 1e6:9.1f} MB  {case_flops(c) / 1e9:9.1f} GFLOP{skip}"
        )
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    cases = build_cases(args.heads, args.sq, args.batch, args.contexts, args.dists, args.seed)
    if args.dry_run:
        return dry_run(cases, args)
    if not torch.cuda.is_available():
        log(
            "error: bench_decode.py needs a CUDA GPU (an H100/H200 for all implementations); "
            "none is visible. Use --dry-run to list the cases."
        )
        return 2

    torch.cuda.init()
    device = torch.cuda.current_device()
    out_dir = Path(
        args.out
        or REPO_ROOT / "benchmarks" / "results" / dt.datetime.now().strftime("decode-%Y%m%d-%H%M%S")
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    env = collect_env(device)
    log(
        f"GPU {env['gpu']} ({env['num_sms']} SMs, L2 {env['l2_bytes'] / 2**20:.0f} MiB), "
        f"SM clock {env.get('sm_clock_mhz', '?')}/{env.get('max_sm_clock_mhz', '?')} MHz, "
        f"torch {env['torch']}, vllm {env['vllm']}, triton {env['triton']}, "
        f"git {env['git_sha']}, build {env['build_sha']}"
    )

    impls: dict[str, str | None] = {}
    for name in args.impls:
        try:
            IMPLS[name].probe()
            impls[name] = None
        except Unavailable as e:
            impls[name] = str(e) or "unavailable"
        except Exception as e:  # a broken install is reported, not fatal
            impls[name] = f"{type(e).__name__}: {e}"
        log(f"  {name:<9} {'available' if impls[name] is None else 'UNAVAILABLE: ' + impls[name]}")

    t0 = time.time()
    ceilings = measure_ceilings(budget_s=0.2)
    log(
        f"ceilings: copy {ceilings['copy_gbps']:.0f} GB/s (read+write), bf16 GEMM "
        f"{ceilings['gemm_tflops']:.0f} TFLOP/s ({GEMM_N}^3)  [{time.time() - t0:.1f}s]"
    )
    (out_dir / "env.json").write_text(
        json.dumps({**env, **ceilings, "args": vars(args)}, indent=1, default=str)
    )

    log(f"{len(cases)} cases, impls {','.join(args.impls)}, timing budget {args.budget_ms} ms")
    all_rows: list[dict] = []
    entries = []
    csv_path = out_dir / "bench_decode.csv"
    for k, case in enumerate(cases, 1):
        start = time.time()
        rows = run_case(case, args, impls, ceilings, env)
        all_rows.extend(rows)
        whole, ours_kernel = by_mode(rows)
        entries.append((case, whole, ours_kernel))
        write_csv(str(csv_path), all_rows)  # every case: a crash keeps what was measured
        log(progress_line(k, len(cases), case, rows, time.time() - start))

    lines = [TABLE_HEADER] + [table_line(c, w, ok) for c, w, ok in entries]
    table = "\n".join(lines)
    summary = "\n".join(summary_lines([(c, w) for c, w, _ in entries]))
    (out_dir / "table.txt").write_text(table + "\n\n" + summary + "\n")
    plots = []
    if not args.no_plots:
        try:
            plots = write_plots(out_dir, all_rows, ceilings)
        except Exception as e:  # the numbers are written; a plotting problem must not hide them
            log(f"plots failed: {type(e).__name__}: {e}")

    log(
        "\nµs per step (whole: metadata + kernels); ours_k: our kernels alone; "
        "! = failed the check; best/ours > 1: ours faster than the best checked rival"
    )
    log(table)
    log("\nspeedup of ours over each rival (geomean of rival µs / ours µs), per heads x s_q:")
    log(summary)
    log(
        f"\nceilings: copy {ceilings['copy_gbps']:.0f} GB/s, GEMM {ceilings['gemm_tflops']:.0f} "
        f"TFLOP/s; {env['gpu']}, git {env['git_sha']}; total {time.time() - t0:.0f}s"
    )
    log(f"wrote {csv_path}, table.txt, env.json" + (f", {len(plots)} plots" if plots else ""))
    fails = [r for r in all_rows if r["impl"] == "ours" and r.get("status") in ("FAIL", "error")]
    if fails:
        log(f"WARNING: ours failed the check or errored in {len(fails)} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
