#!/usr/bin/env python3
"""Decode speed in vLLM: its default MLA backend, its FLASHMLA backend and mla_backend's.

One offline, decode-heavy workload, the same for every backend: a DeepSeek-V2-style model
with dummy weights and many dense MLA layers (16; hidden 1024, kv_lora_rank 512, rope 64), with
16 and with 128 query heads, a batch of 64 sequences of 4k-8k prompt tokens each, and 256 new
tokens per sequence, so that decode attention over long contexts dominates the step time.
Full CUDA graphs for decode batches, no torch.compile (as examples/vllm_e2e.py runs them).

Backends: `default` (vLLM picks; FLASH_ATTN_MLA on Hopper), `ours` (MLA_BACKEND_VLLM=1, vLLM
picks block size 64 itself), and any vLLM backend name (`flashmla` -> attention backend
FLASHMLA, `triton_mla`, ...). MLA_BACKEND_VLLM is read when vLLM resolves its platform, so
every backend runs in its own child process, which runs all head configs. The children are
started together so that their vLLM imports overlap, then run one after another: only one
ever holds the GPU.

--rounds R runs every backend in R processes, in alternating order (default, flashmla, ours,
then ours, flashmla, default, ...), and reports per backend the median over its processes (and
each process's numbers beside it). One process per backend measures the process as much as the
backend: two runs of one build have disagreed by up to 30% in their ratios to the default, on
ms per step and ITL alike (docs/perf.md v17), more than the kernels differ.

What is timed, per backend and head config: prefix caching on, the prompts are prefilled
once (untimed), so that a later generate() on the same prompts computes at most the last
page of each prompt. Then, --repeats times, generate(max_tokens=1) and generate(max_tokens=N)
on the same prompts; the difference of their medians is N-1 decode steps of the whole batch:

    ms per decode step = (median t_N - median t_1) / (N - 1)
    decode tokens/s    = batch * (N - 1) / (median t_N - median t_1)

vLLM's mean inter-token latency (ITL) over the same runs is reported beside it: the engine's
own time between two tokens of a request, which leaves out what the difference carries, the
cost of submitting and prefilling the prompts in each call (in the 16-head runs of v24 and
v27, t_1's standard deviation within one process was 0.02-0.05 s against ~0.24 s for 63
decode steps: docs/perf.md v28; hence 256 new tokens by default, 64 before). --profile adds,
after the timed runs, one generate() under vLLM's torch profiler (PROFILE_SKIP_STEPS steps in,
at most 32 decode steps): the GPU's busy time and the decode attention kernels' time per step,
and the busy time's share of the ITL, which says whether the step waits on the GPU or on the
host.
Checks per run: the log names the backend that ran (ours: our selection line and no fallback,
and our decode kernel's line; the others: not ours, and vLLM's FLASHMLA when asked for),
decode graphs were captured, no request was preempted, and the prompts hit the prefix cache.

Writes DIR/compare_backends.json, DIR/compare_backends.log (all children) and
DIR/compare_backends.png (bars; skipped without matplotlib); prints a table.

Setup on the GPU host: as for examples/vllm_e2e.py (vLLM 0.26 and mla_backend importable,
extension built). About 3 minutes on an H200 with the defaults; --deadline caps it.

usage:
  python examples/compare_backends.py --out cmp
  python examples/compare_backends.py --out cmp --heads 128 --layers 8 --batch 32 \\
      --prompt-len 8192 --max-tokens 32 --backends default,ours
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:  # run as a script, sys.path[0] is HERE already
    sys.path.insert(0, str(HERE))

from vllm_e2e import ENV_VAR, LOG_EVIDENCE, VOCAB, model_config, write_entry_points  # noqa: E402

DEFAULT_BACKENDS = "default,flashmla,ours"
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # in case vLLM colours its log
PAGE = 64  # our kernel's page: vLLM's KV-cache block size with our backend
MIN_RUN_S = 30.0  # a child starts a head config only with this much of its budget left
CHILD_RESERVE_S = 45.0  # kept back for each child still waiting to run
KILL_GRACE_S = 30.0  # past its budget, a child is killed
EVIDENCE = {
    **LOG_EVIDENCE,
    "ran_on_ours": "mla_backend: decode batch with ",
    "kv_cache": "GPU KV cache size:",
}


# ---------------------------------------------------------------------------------------------
# pure helpers (tested on CPU: tests/cpu/test_examples_compare.py)


def parse_prompt_len(text: str) -> tuple[int, int]:
    """'6144' -> (6144, 6144); '4096-8192' -> (4096, 8192)."""
    lo, _, hi = text.partition("-")
    lo_i, hi_i = int(lo), int(hi or lo)
    if not 1 <= lo_i <= hi_i:
        raise ValueError(f"prompt length {text!r}: want N or LO-HI with 1 <= LO <= HI")
    return lo_i, hi_i


def parse_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def backend_setup(name: str) -> tuple[str | None, str | None]:
    """(value of MLA_BACKEND_VLLM, vLLM attention backend to ask for) for a backend name."""
    if name == "default":
        return None, None
    if name == "ours":
        return "1", None
    return None, name.upper()


def max_model_len(prompt_hi: int, max_tokens: int) -> int:
    """Room for the longest prompt and its new tokens, rounded up to whole 1024s."""
    need = prompt_hi + max_tokens + PAGE
    return -(-need // 1024) * 1024


def bench_model_config(heads: int, layers: int, max_len: int) -> dict:
    """vllm_e2e.py's tiny DeepSeek-V2 config with more layers, all dense, longer positions."""
    config = model_config(heads)
    config.update(
        num_hidden_layers=layers,
        first_k_dense_replace=layers,  # every layer dense: attention + a small MLP
        max_position_embeddings=max_len,
    )
    return config


def write_bench_model(root: Path, heads: int, layers: int, max_len: int) -> Path:
    path = root / f"deepseek-v2-bench-h{heads}-l{layers}-p{max_len}"
    path.mkdir(parents=True, exist_ok=True)
    config = bench_model_config(heads, layers, max_len)
    (path / "config.json").write_text(json.dumps(config, indent=1))
    return path


def make_prompts(batch: int, lo: int, hi: int, seed: int = 0) -> list[list[int]]:
    """Random token ids, lengths uniform in [lo, hi]; no two prompts share a first page."""
    rng = random.Random(seed)
    return [[rng.randrange(2, VOCAB) for _ in range(rng.randint(lo, hi))] for _ in range(batch)]


def decode_stats(t_1: list[float], t_n: list[float], max_tokens: int, batch: int) -> dict:
    """Decode step time from generate() times with max_tokens=1 and max_tokens=N."""
    m1, mn = statistics.median(t_1), statistics.median(t_n)
    steps = max_tokens - 1
    decode_s = mn - m1
    out = {"t1_median_s": m1, "tn_median_s": mn, "decode_steps": steps, "decode_s": decode_s}
    if steps < 1 or decode_s <= 0:
        out.update(ms_per_step=None, tokens_per_s=None)
    else:
        out.update(ms_per_step=1e3 * decode_s / steps, tokens_per_s=batch * steps / decode_s)
    # spread: the same quantity from the fastest and the slowest pair
    pairs = [(n - o) / steps * 1e3 for o, n in zip(t_1, t_n, strict=True)] if steps >= 1 else []
    out["ms_per_step_range"] = [min(pairs), max(pairs)] if pairs else None
    return out


# Decode attention kernels by family, matched against the demangled kernel names of a trace:
# ours (namespace mla::), vLLM's FlashAttention-3 (flash::), FlashMLA, Triton MLA, FlashInfer.
# vLLM's KV-cache write (concat_and_cache_mla) is the same for every backend and is left out.
ATTENTION_KERNELS = re.compile(
    r"\bmla::|\bflash::|flash_fwd_splitkv_mla|flash_fwd_mla_combine|get_mla_metadata|flashmla"
    r"|_fwd_grouped_kernel|_fwd_kernel_stage|BatchMLAPaged",
    re.IGNORECASE,
)
GPU_EVENT_CATS = ("kernel", "gpu_memcpy", "gpu_memset")
PROFILE_SKIP_STEPS = 2  # engine steps before the profiled ones: the prefill, the first decode


def step_profile(events: list[dict], layers: int, top: int = 8) -> dict:
    """GPU time per decode step from the GPU events of a torch-profiler trace of decode steps.

    The step count comes from the trace: the most frequent decode attention kernel runs once per
    layer and step (ours: the decode and combine kernels; FA3: its forward kernel). Per step:
    the GPU's busy time (the union of its events' intervals, any stream), the sum of the
    attention kernels (`ATTENTION_KERNELS`) and the window from the first event's start to the
    last one's end, which with the profiler's own host overhead is an upper bound on the
    unprofiled step. Kernel durations are the GPU's own, unaffected by that overhead.
    """
    gpu = [
        e
        for e in events
        if e.get("ph") == "X" and e.get("cat") in GPU_EVENT_CATS and e.get("dur") is not None
    ]
    out: dict = {"gpu_events": len(gpu)}
    if not gpu or layers < 1:
        return out
    spans = sorted((float(e["ts"]), float(e["ts"]) + float(e["dur"])) for e in gpu)
    busy, cur_lo, cur_hi = 0.0, *spans[0]
    for lo, hi in spans[1:]:
        if lo > cur_hi:
            busy += cur_hi - cur_lo
            cur_lo, cur_hi = lo, hi
        else:
            cur_hi = max(cur_hi, hi)
    busy += cur_hi - cur_lo
    window = max(hi for _, hi in spans) - spans[0][0]
    by_name: dict[str, list[float]] = {}
    for e in gpu:
        by_name.setdefault(str(e.get("name", "?")), []).append(float(e["dur"]))
    attention = {n: d for n, d in by_name.items() if ATTENTION_KERNELS.search(n)}
    calls = max((len(d) for d in attention.values()), default=0)
    out["attention_kernels"] = sorted(attention)
    if not calls:
        return out
    steps = calls / layers
    us = 1e-3 / steps  # µs in the trace -> ms per step
    ranked = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:top]
    out.update(
        steps=round(steps, 2),
        window_ms=window * us,
        busy_ms=busy * us,
        kernel_ms=sum(sum(d) for d in by_name.values()) * us,
        attention_ms=sum(sum(d) for d in attention.values()) * us,
        attention_calls=sum(len(d) for d in attention.values()) / steps,
        top=[{"name": n[:160], "ms": sum(d) * us, "calls": len(d) / steps} for n, d in ranked],
    )
    return out


def read_trace_events(folder: Path) -> list[dict]:
    """The events of every torch-profiler trace (`*.json` or `*.json.gz`) under folder."""
    import gzip

    events: list[dict] = []
    for path in sorted(folder.rglob("*.json*")):
        if not (path.name.endswith(".json") or path.name.endswith(".json.gz")):
            continue
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt") as f:
            data = json.load(f)
        events += data.get("traceEvents", []) if isinstance(data, dict) else data
    return events


def profile_steps(max_tokens: int) -> int:
    """Decode steps to profile in a generate() of max_tokens new tokens: its steps are the
    prefill and max_tokens - 1 decodes; skip PROFILE_SKIP_STEPS, keep one back, at most 32."""
    return max(1, min(32, max_tokens - PROFILE_SKIP_STEPS - 1))


def profiler_config(folder: Path, max_tokens: int) -> dict:
    """vLLM's `profiler_config` for --profile: the torch profiler, a trace of the engine's
    decode steps only (no frontend, stacks, shapes or summary table) written under folder."""
    return {
        "profiler": "torch",
        "torch_profiler_dir": str(folder),
        "torch_profiler_with_stack": False,
        "torch_profiler_record_shapes": False,
        "torch_profiler_dump_cuda_time_total": False,
        "ignore_frontend": True,
        "delay_iterations": PROFILE_SKIP_STEPS,
        "max_iterations": profile_steps(max_tokens),
    }


def child_deadline(end_at: float, n: int, index: int) -> float:
    """When child `index` (0-based, of n, run in order) must be done: the end of the whole
    budget, less a reserve for each child after it."""
    return end_at - CHILD_RESERVE_S * (n - 1 - index)


def vllm_choice(line: str) -> str | None:
    """vLLM's own backend line -> its backend name ('FLASH_ATTN_MLA', 'FLASHMLA', ...)."""
    marker = "attention backend out of potential backends"
    if marker in line:
        head = line.split(marker)[0].rstrip().split()
        return head[-1] if head else None
    if "Using AttentionBackendEnum." in line and line.rstrip().endswith("backend."):
        return line.split("Using AttentionBackendEnum.")[1].split()[0]
    return None


def parse_log(text: str) -> dict[tuple[str, int], dict]:
    """Evidence per (backend, heads) from a child's log, between its CMP-BEGIN/END lines."""
    evidence: dict[tuple[str, int], dict] = {}
    current = None
    for line in ANSI.sub("", text).splitlines():
        if line.startswith("CMP-BEGIN "):
            _, backend, heads = line.split()[:3]
            current = (backend, int(heads))
            evidence[current] = {k: [] for k in EVIDENCE}
            evidence[current].update(vllm_choice=None, kv_cache_tokens=None, downgrade=[])
            continue
        if line.startswith("CMP-END "):
            current = None
            continue
        if current is None:
            continue
        ev = evidence[current]
        for key, needle in EVIDENCE.items():
            if needle in line:
                ev[key].append(line.strip()[-300:])
        choice = vllm_choice(line)
        if choice:
            ev["vllm_choice"] = choice
        if EVIDENCE["kv_cache"] in line:
            digits = line.split(EVIDENCE["kv_cache"])[1].split("tokens")[0]
            digits = "".join(c for c in digits if c.isdigit())
            ev["kv_cache_tokens"] = int(digits) if digits else None
        if "CUDAGraphMode." in line and "not supported" in line:
            ev["downgrade"].append(line.strip()[-300:])
    return evidence


def checks_for(backend: str, result: dict, ev: dict | None) -> dict[str, bool]:
    """What must hold for a timing to count: the right backend ran, with graphs, no noise."""
    ev = ev or {}
    env_value, asked = backend_setup(backend)
    checks = {"run ok": result.get("status") == "ok"}
    if env_value:
        checks["log names our backend"] = bool(ev.get("selected")) and not ev.get("fallback")
        checks["decode ran on our kernel"] = bool(ev.get("ran_on_ours"))
    else:
        checks["not our backend"] = not ev.get("selected")
    if asked:
        checks[f"vLLM used {asked}"] = ev.get("vllm_choice") == asked
    checks["decode graphs captured"] = bool(ev.get("graphs_captured")) and not ev.get("downgrade")
    counters = result.get("counters") or {}
    if "vllm:num_preemptions" in counters:
        checks["no preemption"] = counters["vllm:num_preemptions"] == 0
    queries = counters.get("vllm:prefix_cache_queries")
    if queries:
        checks["prompts hit the prefix cache"] = (
            counters.get("vllm:prefix_cache_hits", 0) / queries >= 0.9
        )
    return checks


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _ratio(base: float | None, x: float | None) -> float | None:
    return base / x if base and x else None


def evaluate(
    results: dict, evidence: dict, backends: list[str], heads: list[int], rounds: int = 1
) -> list[dict]:
    """One row per (heads, backend). results and evidence map (backend, heads) to {round:
    value}; a row's numbers are medians over its rounds (one process each), its checks must
    hold in every round, and with several rounds `rounds` lists each process's numbers."""
    rows = []
    for h in heads:
        runs_of = {
            b: [results.get((b, h), {}).get(i, {"status": "not run"}) for i in range(rounds)]
            for b in (*backends, "default")
        }
        base_ms = [(r.get("stats") or {}).get("ms_per_step") for r in runs_of["default"]]
        base_itl = [r.get("itl_ms") for r in runs_of["default"]]
        base_attn = [(r.get("profile") or {}).get("attention_ms") for r in runs_of["default"]]
        for b in backends:
            runs = runs_of[b]
            evs = [evidence.get((b, h), {}).get(i) for i in range(rounds)]
            stats = [r.get("stats") or {} for r in runs]
            per_round = [checks_for(b, r, ev) for r, ev in zip(runs, evs, strict=True)]
            names = dict.fromkeys(k for c in per_round for k in c)  # every round's, in order
            checks = {k: all(c.get(k, True) for c in per_round) for k in names}
            ev = next((e for e in evs if e), None)
            ms = [st.get("ms_per_step") for st in stats]
            itl = [r.get("itl_ms") for r in runs]
            prof = [r.get("profile") or {} for r in runs]
            busy = [p.get("busy_ms") for p in prof]
            attn = [p.get("attention_ms") for p in prof]
            if backend_setup(b)[0]:
                shown = "CUSTOM (mla_backend)"
            else:  # vLLM logs its automatic choice once per process
                shown = (ev or {}).get("vllm_choice") or ("(vLLM's choice)" if ev else None)
            statuses = [r.get("status", "not run") for r in runs]
            timed = [x for x in ms if x is not None]
            # one process: the spread of its pairs; several: the spread of their medians
            if rounds == 1:
                ms_range = stats[0].get("ms_per_step_range")
            else:
                ms_range = [min(timed), max(timed)] if timed else None
            row = {
                "heads": h,
                "backend": b,
                "status": statuses[0] if len(set(statuses)) == 1 else "/".join(statuses),
                "vllm_backend": shown,
                "ms_per_step": _median(ms),
                "tokens_per_s": _median([st.get("tokens_per_s") for st in stats]),
                "ms_per_step_range": ms_range,
                "speedup_vs_default": _ratio(_median(base_ms), _median(ms)),
                "itl_ms": _median(itl),
                "itl_vs_default": _ratio(_median(base_itl), _median(itl)),
                # --profile: GPU time per decode step, and its share of the step (the ITL)
                "gpu_busy_ms": _median(busy),
                "gpu_busy_share": _median([_ratio(b, i) for b, i in zip(busy, itl, strict=True)]),
                "attention_ms": _median(attn),
                "attention_vs_default": _ratio(_median(base_attn), _median(attn)),
                "init_s": _median([r.get("init_s") for r in runs]),
                "t1_median_s": _median([st.get("t1_median_s") for st in stats]),
                "tn_median_s": _median([st.get("tn_median_s") for st in stats]),
                "kv_cache_tokens": (ev or {}).get("kv_cache_tokens"),
                "checks": checks,
                "ok": all(checks.values()),
                "error": next((r["error"] for r in runs if r.get("error")), None),
                "log": {k: v[:2] for k, v in (ev or {}).items() if isinstance(v, list) and v},
            }
            if rounds > 1:  # each process's numbers, its ratios against the same round's default
                row["rounds"] = [
                    {
                        "status": statuses[i],
                        "ms_per_step": ms[i],
                        "itl_ms": itl[i],
                        "speedup_vs_default": _ratio(base_ms[i], ms[i]),
                        "itl_vs_default": _ratio(base_itl[i], itl[i]),
                        "gpu_busy_ms": busy[i],
                        "attention_ms": attn[i],
                    }
                    for i in range(rounds)
                ]
            rows.append(row)
    return rows


def _num(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def report(rows: list[dict]) -> list[str]:
    head = (
        f"{'heads':>5} {'backend':10} {'vLLM backend':22} {'ms/step':>8} {'tok/s':>9} "
        f"{'vs dflt':>7} {'ITL ms':>7} {'vs dflt':>7} {'init s':>6}  checks"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        failed = [k for k, ok in r["checks"].items() if not ok]
        lines.append(
            f"{r['heads']:>5} {r['backend'][:10]:10} {str(r['vllm_backend'] or '-')[:22]:22} "
            f"{_num(r['ms_per_step'], '.3f'):>8} {_num(r['tokens_per_s'], ',.0f'):>9} "
            f"{_num(r['speedup_vs_default'], '.2f') + ('x' if r['speedup_vs_default'] else ''):>7} "
            f"{_num(r['itl_ms'], '.3f'):>7} "
            f"{_num(r.get('itl_vs_default'), '.2f') + ('x' if r.get('itl_vs_default') else ''):>7} "
            f"{_num(r['init_s'], '.0f'):>6}  " + ("ok" if r["ok"] else "FAIL: " + "; ".join(failed))
        )
        if r.get("rounds"):
            lines.append(
                "      per process: ms/step "
                + " ".join(_num(x["ms_per_step"], ".3f") for x in r["rounds"])
                + "; ITL ms "
                + " ".join(_num(x["itl_ms"], ".3f") for x in r["rounds"])
            )
        if r.get("gpu_busy_ms") is not None:
            share = r.get("gpu_busy_share")
            lines.append(
                f"      profile: GPU busy {r['gpu_busy_ms']:.3f} ms/step"
                + (f" ({share:.2f} of the ITL)" if share else "")
                + f", decode attention {_num(r.get('attention_ms'), '.3f')} ms/step"
                + (
                    f" ({r['attention_vs_default']:.2f}x the default's)"
                    if r.get("attention_vs_default")
                    else ""
                )
            )
        if r.get("error"):
            lines.append(f"      error: {r['error'][:300]}")
    return lines


def plot(rows: list[dict], path: Path, title: str) -> str | None:
    """Grouped bars (ms per decode step, decode tokens/s) per head config; None if no plot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    heads = sorted({r["heads"] for r in rows})
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    by = {(r["heads"], r["backend"]): r for r in rows}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.8 / max(1, len(backends))
    for ax, key, label in (
        (axes[0], "ms_per_step", "ms per decode step (lower is better)"),
        (axes[1], "tokens_per_s", "decode tokens/s (higher is better)"),
    ):
        for i, b in enumerate(backends):
            xs = [j + (i - (len(backends) - 1) / 2) * width for j in range(len(heads))]
            ys = [by.get((h, b), {}).get(key) or 0.0 for h in heads]
            bars = ax.bar(xs, ys, width, label=b)
            for bar, y in zip(bars, ys, strict=True):
                if y:
                    text = f"{y:.2f}" if key == "ms_per_step" else f"{y:,.0f}"
                    ax.annotate(
                        text,
                        (bar.get_x() + bar.get_width() / 2, y),
                        ha="center",
                        va="bottom",
                        fontsize=7,
                    )
        ax.set_xticks(range(len(heads)), [f"{h} heads" for h in heads])
        ax.set_title(label, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


# ---------------------------------------------------------------------------------------------
# child process: one backend, every head config


def _counters(llm) -> dict[str, float]:
    """vLLM's counters and the inter-token-latency histogram (sum, count); {} if unavailable."""
    try:
        metrics = llm.get_metrics()
    except Exception:  # metrics are a cross-check only
        return {}
    values: dict[str, float] = {}
    for m in metrics:
        if m.name == "vllm:inter_token_latency_seconds":
            values["itl_sum"] = values.get("itl_sum", 0.0) + float(m.sum)
            values["itl_count"] = values.get("itl_count", 0.0) + float(m.count)
        elif m.name in (
            "vllm:num_preemptions",
            "vllm:prefix_cache_queries",
            "vllm:prefix_cache_hits",
        ) and hasattr(m, "value"):
            values[m.name] = values.get(m.name, 0.0) + float(m.value)
    return values


def timed_generate(llm, prompts: list, n: int, SamplingParams) -> float:
    """Seconds for one greedy generate() of n new tokens per prompt (EOS ignored)."""
    params = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, detokenize=False)
    t = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - t
    got = sorted({len(o.outputs[0].token_ids) for o in outs})
    if got != [n]:
        raise RuntimeError(f"asked for {n} new tokens per prompt, got {got}")
    return elapsed


def run_one(backend: str, heads: int, args, LLM, SamplingParams) -> dict:
    lo, hi = parse_prompt_len(args.prompt_len)
    max_len = max_model_len(hi, args.max_tokens)
    _, asked = backend_setup(backend)
    kw = dict(
        model=str(write_bench_model(Path(args.model_root), heads, args.layers, max_len)),
        load_format="dummy",
        skip_tokenizer_init=True,
        dtype="bfloat16",
        seed=0,
        max_model_len=max_len,
        max_num_seqs=args.batch,
        max_num_batched_tokens=args.max_num_batched_tokens,
        gpu_memory_utilization=args.gpu_mem,
        enable_prefix_caching=True,
        compilation_config={"mode": 0, "cudagraph_mode": "FULL_DECODE_ONLY"},
        disable_log_stats=False,
    )
    if asked:
        kw["attention_config"] = {"backend": asked}
    profile_dir = Path(f"{args.raw}-h{heads}-trace") if args.profile else None
    if profile_dir is not None:
        kw["profiler_config"] = profiler_config(profile_dir, args.max_tokens)
    result: dict = {"backend": backend, "heads": heads}
    t0 = time.time()
    llm = LLM(**kw)
    result["init_s"] = round(time.time() - t0, 1)
    prompts = [{"prompt_token_ids": p} for p in make_prompts(args.batch, lo, hi)]

    try:
        t0 = time.time()
        # prefill every prompt once: from here on they are in the prefix cache
        timed_generate(llm, prompts, 1, SamplingParams)
        result["prefill_s"] = round(time.time() - t0, 2)
        timed_generate(llm, prompts, args.max_tokens, SamplingParams)  # warm-up of the decode path
        t_1, t_n, itl = [], [], []
        before = _counters(llm)
        for _ in range(args.repeats):
            t_1.append(timed_generate(llm, prompts, 1, SamplingParams))
            mid = _counters(llm)
            t_n.append(timed_generate(llm, prompts, args.max_tokens, SamplingParams))
            after = _counters(llm)
            if after.get("itl_count", 0) > mid.get("itl_count", 0):
                itl.append(
                    (after["itl_sum"] - mid["itl_sum"]) / (after["itl_count"] - mid["itl_count"])
                )
        after = _counters(llm)
        result["counters"] = {
            k: after[k] - before.get(k, 0.0) for k in after if not k.startswith("itl_")
        }
        result["t_1"], result["t_n"] = t_1, t_n
        result["stats"] = decode_stats(t_1, t_n, args.max_tokens, args.batch)
        result["itl_ms"] = 1e3 * statistics.median(itl) if itl else None
        result["itl_ms_runs"] = [1e3 * x for x in itl]
        result["status"] = "ok"
        if profile_dir is not None:  # after the timed runs, so that it slows none of them
            try:
                llm.start_profile()
                timed_generate(llm, prompts, args.max_tokens, SamplingParams)
                llm.stop_profile()
                result["profile"] = step_profile(read_trace_events(profile_dir), args.layers)
            except Exception as e:  # the profile is a diagnosis; the timing above stands
                result["profile"] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            result["profile"]["trace_dir"] = str(profile_dir)
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
    return result


def child_main(args) -> None:
    import gc
    import traceback

    from vllm import LLM, SamplingParams  # the slow part, done while earlier children run

    print(f"CMP-READY {args.child}", flush=True)
    order = sys.stdin.readline().split()
    if len(order) != 2 or order[0] != "go":
        print(f"CMP-SKIPPED {args.child} (no time left)", flush=True)
        return
    deadline = float(order[1])
    for heads in [int(h) for h in parse_list(args.heads)]:
        if time.time() > deadline - MIN_RUN_S:
            result = {"backend": args.child, "heads": heads, "status": "skipped (deadline)"}
            print(f"CMP-SKIP {args.child} {heads} (deadline)", flush=True)
        else:
            print(f"CMP-BEGIN {args.child} {heads}", flush=True)
            try:
                result = run_one(args.child, heads, args, LLM, SamplingParams)
            except Exception as e:  # keep going with the next head config
                traceback.print_exc()
                result = {
                    "backend": args.child,
                    "heads": heads,
                    "status": "error",
                    "error": f"{type(e).__name__}: {str(e)[:600]}",
                }
            gc.collect()
            ms = (result.get("stats") or {}).get("ms_per_step")
            note = f" {ms:.3f} ms/step" if ms else ""
            print(f"CMP-END {args.child} {heads} {result['status']}{note}", flush=True)
        with open(args.raw, "a") as f:
            f.write(json.dumps(result) + "\n")
    print(f"CMP-DONE {args.child}", flush=True)


# ---------------------------------------------------------------------------------------------
# parent


def _kill(proc: subprocess.Popen) -> None:
    """End a child and the processes it started (its own session; vLLM's engine core)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass


PROGRESS = ("CMP-BEGIN ", "CMP-END ", "CMP-SKIP")
EXIT_GRACE_S = 20.0  # a child that has written its results gets this long to exit


def _follow(proc: subprocess.Popen, log_path: Path, hard_deadline: float, t0: float) -> None:
    """Echo a child's progress lines until it exits; kill it (and what it started) past
    hard_deadline, or when it lingers after its last result."""

    def echo(line: str) -> None:
        if line.startswith(PROGRESS):
            print(f"   {line.strip()}  ({time.time() - t0:.0f}s)", flush=True)

    pending = ""
    with open(log_path, errors="replace") as f:
        while True:
            pending += f.readline()
            if pending.endswith("\n"):
                echo(pending)
                if pending.startswith("CMP-DONE"):
                    hard_deadline = min(hard_deadline, time.time() + EXIT_GRACE_S)
                pending = ""
                continue
            if proc.poll() is not None:
                for line in (pending + f.read()).splitlines():
                    echo(line)
                return
            if time.time() > hard_deadline:
                print("   killed: past its budget or not exiting", flush=True)
                _kill(proc)
                return
            time.sleep(0.2)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", default="compare_out", help="folder for JSON, log and plot")
    ap.add_argument(
        "--backends",
        default=DEFAULT_BACKENDS,
        help="comma-separated: "
        "default, ours, or a vLLM MLA backend name (flashmla, triton_mla, ...)",
    )
    ap.add_argument("--heads", default="16,128", help="query-head configs, comma-separated")
    ap.add_argument("--layers", type=int, default=16, help="dense MLA layers")
    ap.add_argument("--batch", type=int, default=64, help="sequences decoded together")
    ap.add_argument("--prompt-len", default="4096-8192", help="N or LO-HI (uniform, seeded)")
    ap.add_argument("--max-tokens", type=int, default=256, help="new tokens per sequence (>= 2)")
    ap.add_argument("--repeats", type=int, default=3, help="timed pairs per run (median)")
    ap.add_argument(
        "--rounds", type=int, default=1, help="processes per backend, in alternating order"
    )
    ap.add_argument("--gpu-mem", type=float, default=0.4, help="gpu_memory_utilization")
    ap.add_argument("--max-num-batched-tokens", type=int, default=16384)
    ap.add_argument("--deadline", type=float, default=270, help="seconds for everything")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="after the timed runs, one more under vLLM's torch profiler: GPU time and decode "
        "attention time per step (step_profile)",
    )
    ap.add_argument("--model-root", default=str(Path(tempfile.gettempdir()) / "mla_cmp_models"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--raw", help=argparse.SUPPRESS)
    args = ap.parse_args()
    try:
        lo, hi = parse_prompt_len(args.prompt_len)
        heads = [int(h) for h in parse_list(args.heads)]
    except ValueError as e:
        ap.error(str(e))
    if args.max_tokens < 2:
        ap.error("--max-tokens must be at least 2 (one prefill token + decode steps)")
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    if args.child:
        child_main(args)
        return

    start = time.time()
    end = start + args.deadline
    backends = parse_list(args.backends)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="mla_cmp_"))
    added = write_entry_points(work / "site")
    path = [str(work / "site"), str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")]
    base_env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(p for p in path if p), PYTHONUNBUFFERED="1"
    )
    base_env.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
    base_env.pop(ENV_VAR, None)
    if added:
        print(f"entry points not installed, provided by {work / 'site'}: {added}", flush=True)
    need = args.batch * (hi + args.max_tokens)
    print(
        f"model: {args.layers} dense MLA layers, heads {heads}; batch {args.batch}, prompts "
        f"{lo}-{hi} tokens ({need:,} KV tokens in use), {args.max_tokens} new tokens; "
        f"backends {backends}"
        + (f" x {args.rounds} rounds" if args.rounds > 1 else "")
        + f"; deadline {args.deadline:.0f}s",
        flush=True,
    )

    flags = ["--heads", ",".join(map(str, heads))]
    for key in (
        "layers", "batch", "prompt_len", "max_tokens", "repeats", "gpu_mem",
        "max_num_batched_tokens", "model_root",
    ):  # fmt: skip
        flags += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    if args.profile:
        flags.append("--profile")
    children = []
    # The first process's share of the deadline (child_deadline, relative to the start); it needs
    # about a reserve's worth beyond MIN_RUN_S to run one head config.
    first_budget = child_deadline(args.deadline, len(backends) * args.rounds, 0)
    if first_budget < MIN_RUN_S + CHILD_RESERVE_S:
        print(
            f"warning: --deadline {args.deadline:.0f}s keeps {CHILD_RESERVE_S:.0f}s for each of "
            f"the {len(backends) * args.rounds - 1} later processes, which leaves the first "
            f"{first_budget:.0f}s (it is skipped below {MIN_RUN_S:.0f}s); raise --deadline",
            flush=True,
        )
    try:
        # Start every child now: their vLLM imports overlap; each then waits for "go". Rounds
        # alternate the order, so that no backend always runs first or last.
        order = [
            (i, b) for i in range(args.rounds) for b in (backends[::-1] if i % 2 else backends)
        ]
        for i, b in order:
            env_value, _ = backend_setup(b)
            env = dict(base_env, **{ENV_VAR: env_value}) if env_value else base_env
            raw, log = work / f"raw-{b}-{i}.jsonl", work / f"log-{b}-{i}.txt"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", b, "--raw", str(raw)]
            with open(log, "w") as logf:
                proc = subprocess.Popen(
                    cmd + flags,
                    stdin=subprocess.PIPE,
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    text=True,
                    env=env,
                    start_new_session=True,
                )
            children.append((b, i, proc, raw, log))
        for n, (b, i, proc, _, log) in enumerate(children):
            name = f"{b} (round {i + 1} of {args.rounds})" if args.rounds > 1 else b
            budget_end = child_deadline(end, len(children), n)
            left = budget_end - time.time()
            if left < MIN_RUN_S:
                print(f"== {name}: skipped, {left:.0f}s left", flush=True)
                proc.stdin.close()
                continue
            print(f"== {name}: {len(heads)} head config(s), budget {left:.0f}s", flush=True)
            proc.stdin.write(f"go {budget_end}\n")
            proc.stdin.close()
            _follow(proc, log, budget_end + KILL_GRACE_S, start)
            if proc.returncode not in (0, None):
                print(f"   {name}: exit status {proc.returncode}", flush=True)
    finally:
        for _, _, proc, _, _ in children:
            if proc.stdin and not proc.stdin.closed:
                proc.stdin.close()
            _kill(proc)

    results, evidence = {}, {}
    log_path = out / "compare_backends.log"
    with open(log_path, "w") as logf:
        for b, i, _, raw, log in children:
            text = log.read_text(errors="replace") if log.exists() else ""
            logf.write(f"\n===== child {b}" + (f" round {i + 1}" if args.rounds > 1 else ""))
            logf.write(f"\n{text}")
            for key, ev in parse_log(text).items():
                evidence.setdefault(key, {})[i] = ev
            if raw.exists():
                for line in raw.read_text().splitlines():
                    r = json.loads(line)
                    results.setdefault((r["backend"], r["heads"]), {})[i] = r
    rows = evaluate(results, evidence, backends, heads, args.rounds)
    lines = report(rows)
    print("\n" + "\n".join(lines), flush=True)
    config = {
        "layers": args.layers,
        "heads": heads,
        "batch": args.batch,
        "prompt_len": [lo, hi],
        "max_tokens": args.max_tokens,
        "repeats": args.repeats,
        "rounds": args.rounds,
        "gpu_memory_utilization": args.gpu_mem,
        "max_num_batched_tokens": args.max_num_batched_tokens,
        "profile": args.profile,
        "backends": backends,
        "model": bench_model_config(heads[0], args.layers, max_model_len(hi, args.max_tokens)),
    }
    title = (
        f"vLLM decode, {args.layers} MLA layers, batch {args.batch}, prompts {lo}-{hi}, "
        f"{args.max_tokens} new tokens, CUDA graphs"
    )
    png = plot(rows, out / "compare_backends.png", title)
    summary = {
        "ok": all(r["ok"] for r in rows),
        "wall_s": round(time.time() - start, 1),
        "config": config,
        "rows": rows,
        "runs": {
            f"{b}/h{h}" + (f"/r{i}" if args.rounds > 1 else ""): r
            for (b, h), by_round in results.items()
            for i, r in sorted(by_round.items())
        },
        "plot": png,
    }
    json_path = out / "compare_backends.json"
    json_path.write_text(json.dumps(summary, indent=1, default=str))
    print(
        f"\n{'ok' if summary['ok'] else 'FAILED checks'} in {summary['wall_s']}s; "
        f"{json_path}, {log_path}, {png or 'no plot (matplotlib missing)'}",
        flush=True,
    )
    sys.exit(0 if summary["ok"] else 1)


if __name__ == "__main__":
    main()
