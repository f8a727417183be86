#!/usr/bin/env python3
"""End to end: vLLM with mla_backend's decode against vLLM's own MLA backend, on an H200.

A tiny DeepSeek-V2-style model (2 dense layers, hidden 1024, kv_lora_rank 512, rope 64, nope
128, v 128, vocab 32000; 16 or 128 heads) with dummy weights re-drawn at a scale where
attention matters (norm weights 1, matrices N(0, 1/fan_in), lm_head x4; seeded by parameter
name, so every run has the same model). Prompts are token ids of mixed lengths (5 to 2048,
across page boundaries), half of them periodic so ngram speculative decoding finds drafts.

Each variant (eager or CUDA graphs, 16 or 128 heads, with or without ngram speculative
decoding, on vLLM's V2 or V1 model runner) runs with vLLM's default MLA backend and with
ours, selected only by MLA_BACKEND_VLLM=1 (no --block-size, no --attention-backend: vLLM
must pick block size 64 itself). The switch is read when vLLM resolves its platform, so each
backend runs in its own child process; runs inside a child share one Python process
(imports, model inspection). vLLM's FLASHMLA backend also runs the eager variants in the
default child: its distance from the default backend is the bf16 noise floor the comparison
allows (twice it, plus a margin).

Checks, per variant: the log names our backend (and no fallback), vLLM set block size 64,
speculative variants decoded several query tokens per request on our kernel, and prompt
logprobs (prefill) and generated-token logprobs (decode, compared while the greedy
sequences agree) match the default backend within the noise. Prints a table, writes JSON
(--out), exits 1 if a check fails.

Setup on the GPU host: vLLM importable (e.g. eval "$(bash .offline-vllm/install.sh)") and
mla_backend importable and built. The plugin entry points are found through a small
dist-info folder this script writes to a temporary directory (as pip install would), which
also carries the test-only plugin that re-draws the dummy weights in vLLM's processes.

usage:
  python examples/vllm_e2e.py --out e2e.json                 # all default variants
  python examples/vllm_e2e.py --variants eager-h16,spec-eager-h16 --max-tokens 16
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ENV_VAR = "MLA_BACKEND_VLLM"
REINIT_ENV = "MLA_BACKEND_E2E_REINIT"
VOCAB = 32000
PROMPT_LENS = [5, 17, 63, 64, 65, 130, 257, 511, 700, 1000, 1500, 2048]
TOP_LOGPROBS = 5
NUM_SPEC_TOKENS = 3
# Pass rule: ours vs default <= 2 * (FLASHMLA vs default) + margin, for the mean and the max
# |logprob difference|. Logits are bf16: from 16 to 32 they move in steps of 1/8, so a max
# over ~1000 values sees a step or two; a wrong attention moves the mean by much more.
MARGIN_MEAN, MARGIN_MAX = 0.01, 0.25
ABS_MEAN, ABS_MAX = 0.03, 0.5  # used when no noise-floor run is available


@dataclass(frozen=True)
class Variant:
    heads: int
    graphs: bool = False  # full CUDA graphs for decode batches (no torch.compile)
    spec: bool = False  # ngram speculative decoding: several query tokens per request
    compile: bool = False  # vLLM's default: torch.compile + piecewise and full graphs
    env: tuple[tuple[str, str], ...] = ()  # set while the run's engine starts


# vLLM 0.26 runs dense DeepSeek-V2 models on its V2 model runner and MoE models (DeepSeek-V3)
# or ngram speculative decoding on the V1 runner; "v1-" variants force the V1 runner.
V1_RUNNER = (("VLLM_USE_V2_MODEL_RUNNER", "0"),)


VARIANTS = {
    "eager-h16": Variant(16),
    "graph-h16": Variant(16, graphs=True),
    "spec-eager-h16": Variant(16, spec=True),
    "spec-graph-h16": Variant(16, graphs=True, spec=True),
    "eager-h128": Variant(128),
    "graph-h128": Variant(128, graphs=True),
    "spec-graph-h128": Variant(128, graphs=True, spec=True),
    "v1-graph-h16": Variant(16, graphs=True, env=V1_RUNNER),
    "compile-h16": Variant(16, graphs=True, compile=True),  # slow (cold torch.compile)
}
DEFAULT_VARIANTS = [name for name, v in VARIANTS.items() if not v.compile]
DEFAULT, FLASHMLA, OURS = "default", "FLASHMLA", "ours"


# ---------------------------------------------------------------------------------------------
# test-only vLLM plugin (runs in vLLM's processes): realistic dummy weights


def reinit_plugin() -> None:
    """vllm.general_plugins entry point: re-draw dummy weights after vLLM's dummy loader."""
    if os.environ.get(REINIT_ENV) != "1":
        return
    import torch
    from vllm.model_executor.model_loader.dummy_loader import DummyModelLoader

    if getattr(DummyModelLoader.load_weights, "_mla_backend_e2e", False):
        return
    stock = DummyModelLoader.load_weights

    def load_weights(self, model, model_config):
        stock(self, model, model_config)
        count = 0
        with torch.no_grad():
            for name, p in model.named_parameters():
                if not p.is_floating_point() or p.device.type == "meta":
                    continue
                if p.dim() == 1:
                    p.fill_(0.0 if name.endswith("bias") else 1.0)
                else:
                    gen = torch.Generator(device=p.device).manual_seed(_seed(name))
                    gain = 4.0 if "lm_head" in name else 1.0
                    draw = torch.randn(p.shape, generator=gen, device=p.device)
                    p.copy_(draw.mul_(gain / math.sqrt(p.shape[-1])))
                count += 1
        print(f"E2E-REINIT {count} parameters", flush=True)

    load_weights._mla_backend_e2e = True
    DummyModelLoader.load_weights = load_weights


def _seed(name: str) -> int:
    return sum((i + 1) * ord(c) for i, c in enumerate(name)) % (2**31)


# ---------------------------------------------------------------------------------------------
# child process: run every (backend, variant) of one child in this process


def model_config(heads: int) -> dict:
    return {
        "architectures": ["DeepseekV2ForCausalLM"],
        "model_type": "deepseek_v2",
        "vocab_size": VOCAB,
        "hidden_size": 1024,
        "intermediate_size": 2816,
        "num_hidden_layers": 2,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "q_lora_rank": 1536,
        "kv_lora_rank": 512,
        "qk_rope_head_dim": 64,
        "qk_nope_head_dim": 128,
        "v_head_dim": 128,
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        "tie_word_embeddings": False,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "torch_dtype": "bfloat16",
        # every layer dense; the MoE fields must still be ints for transformers' config class
        "first_k_dense_replace": 2,
        "moe_layer_freq": 1,
        "n_routed_experts": 8,
        "num_experts_per_tok": 2,
        "n_shared_experts": 1,
        "moe_intermediate_size": 512,
        "topk_method": "greedy",
        "n_group": 1,
        "topk_group": 1,
    }


def write_model(root: Path, heads: int) -> Path:
    path = root / f"deepseek-v2-tiny-h{heads}"
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(model_config(heads), indent=1))
    return path


def make_prompts(seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    prompts = []
    for i, length in enumerate(PROMPT_LENS):
        period = length if i % 2 == 0 else min(length, 9 + 4 * i)
        base = [rng.randrange(2, VOCAB) for _ in range(period)]
        prompts.append((base * math.ceil(length / period))[:length])
    return prompts


def spec_counters(llm) -> dict[str, float]:
    try:
        metrics = llm.get_metrics()
    except Exception:  # metrics are a bonus; the log line is the evidence
        return {}
    counters: dict[str, float] = {}
    for m in metrics:
        if m.name.startswith("vllm:spec_decode_num") and hasattr(m, "value"):
            counters[m.name] = counters.get(m.name, 0.0) + float(m.value)
    return counters


def run_one(backend: str, name: str, args) -> dict:
    from vllm import LLM, SamplingParams

    variant = VARIANTS[name]
    kw = dict(
        model=str(write_model(Path(args.model_root), variant.heads)),
        load_format="dummy",
        skip_tokenizer_init=True,
        dtype="bfloat16",
        seed=0,
        max_model_len=4096,
        max_num_seqs=args.max_num_seqs,
        gpu_memory_utilization=args.gpu_mem,
        enforce_eager=not variant.graphs,
        disable_log_stats=False,
    )
    if variant.graphs and not variant.compile:
        kw["compilation_config"] = {"mode": 0, "cudagraph_mode": "FULL_DECODE_ONLY"}
    if variant.spec:
        kw["speculative_config"] = {
            "method": "ngram",
            "num_speculative_tokens": NUM_SPEC_TOKENS,
            "prompt_lookup_max": 4,
            "prompt_lookup_min": 2,
        }
    if backend == FLASHMLA:
        kw["attention_config"] = {"backend": FLASHMLA}
    params = SamplingParams(
        temperature=0.0,
        max_tokens=args.max_tokens,
        logprobs=TOP_LOGPROBS,
        prompt_logprobs=1,
        ignore_eos=True,
        detokenize=False,
    )
    prompts = make_prompts()
    result = {"backend": backend, "variant": name}
    saved = {key: os.environ.get(key) for key, _ in variant.env}
    os.environ.update(variant.env)
    t0 = time.time()
    try:
        llm = LLM(**kw)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    result["init_s"] = round(time.time() - t0, 1)
    try:
        before = spec_counters(llm)
        t0 = time.time()
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        result["gen_s"] = round(time.time() - t0, 2)
        after = spec_counters(llm)
        result["spec_counters"] = {k: after[k] - before.get(k, 0.0) for k in after}
        result["prompt_logprobs"] = [
            [pos[tok].logprob for pos, tok in zip(o.prompt_logprobs[1:], p[1:], strict=True)]
            for o, p in zip(outs, prompts, strict=True)
        ]
        result["tokens"] = [list(o.outputs[0].token_ids) for o in outs]
        result["logprobs"] = [
            [{str(t): lp.logprob for t, lp in pos.items()} for pos in o.outputs[0].logprobs]
            for o in outs
        ]
        result["status"] = "ok"
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
    return result


def child_main(args) -> None:
    import gc

    runs = json.loads(args.child)
    deadline = args.child_deadline
    for backend, name in runs:
        if time.time() > deadline - 45:
            print(f"E2E-SKIP {backend} {name} (deadline)", flush=True)
            continue
        print(f"E2E-BEGIN {backend} {name}", flush=True)
        try:
            result = run_one(backend, name, args)
        except Exception as e:  # keep going with the next run
            import traceback

            traceback.print_exc()
            result = {
                "backend": backend,
                "variant": name,
                "status": "error",
                "error": f"{type(e).__name__}: {str(e)[:600]}",
            }
        gc.collect()
        with open(args.raw, "a") as f:
            f.write(json.dumps(result) + "\n")
        print(f"E2E-END {backend} {name} {result['status']}", flush=True)


# ---------------------------------------------------------------------------------------------
# parent: entry points, children, log evidence, comparison, report

LOG_EVIDENCE = {
    "selected": "mla_backend: using ",
    "fallback": "mla_backend: not used",
    "block64": "Setting kv cache block size to 64",
    "graphs_captured": "Graph capturing finished",
    "reinit": "E2E-REINIT",
    "v2_runner": "Using V2 Model Runner",
}


def write_entry_points(folder: Path) -> list[str]:
    """A dist-info that makes vLLM load our plugins (those pip has not installed) + reinit."""
    from importlib.metadata import entry_points

    ours = {
        "vllm.general_plugins": "mla_backend:register",
        "vllm.platform_plugins": "mla_backend.vllm.registration:platform_plugin",
    }
    lines = {"vllm.general_plugins": ["mla_backend_e2e = vllm_e2e:reinit_plugin"]}
    added = []
    for group, target in ours.items():
        if not any(ep.name == "mla_backend" for ep in entry_points(group=group)):
            lines.setdefault(group, []).append(f"mla_backend = {target}")
            added.append(group)
    dist = folder / "mla_backend_e2e_plugins-0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: mla-backend-e2e-plugins\nVersion: 0\n"
    )
    text = "".join(f"[{g}]\n" + "\n".join(entries) + "\n\n" for g, entries in lines.items())
    (dist / "entry_points.txt").write_text(text)
    return added


def run_child(label, runs, env, args, logf, budget_s) -> dict[tuple[str, str], dict]:
    """Run a child; return log evidence per (backend, variant)."""
    raw = Path(args.work) / f"raw-{label}.jsonl"
    raw.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        json.dumps(runs),
        "--raw",
        str(raw),
        "--child-deadline",
        str(time.time() + budget_s),
    ]
    for key in ("model_root", "max_tokens", "max_num_seqs", "gpu_mem"):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    logf.write(f"\n===== child {label}: {' '.join(cmd)}\n")
    print(f"== {label}: {len(runs)} run(s), budget {budget_s:.0f}s", flush=True)
    evidence: dict[tuple[str, str], dict] = {}
    current = None
    t0 = time.time()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    # The child skips runs past its budget; this kills it if one run hangs.
    watchdog = threading.Timer(budget_s + 60, proc.kill)
    watchdog.start()
    try:
        for line in proc.stdout:
            logf.write(line)
            if line.startswith("E2E-BEGIN "):
                current = tuple(line.split()[1:3])
                evidence[current] = {
                    "lines": {k: [] for k in LOG_EVIDENCE},
                    "s_q": set(),
                    "t0": time.time(),
                }
                continue
            if line.startswith(("E2E-END ", "E2E-SKIP ")):
                print(f"   {line.strip()}  ({time.time() - t0:.0f}s)", flush=True)
                continue
            if current is None:
                continue
            ev = evidence[current]
            for key, needle in LOG_EVIDENCE.items():
                if needle in line:
                    ev["lines"][key].append(line.strip()[-300:])
            if "mla_backend: decode batch with " in line:
                ev["s_q"].add(int(line.split("mla_backend: decode batch with ")[1].split()[0]))
            if "CUDAGraphMode." in line and "not supported" in line:
                ev["lines"].setdefault("cudagraph_downgrade", []).append(line.strip()[-300:])
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
    finally:
        watchdog.cancel()
    if proc.returncode not in (0, None):
        print(f"   {label}: exit status {proc.returncode}", flush=True)
    results = {}
    if raw.exists():
        for text in raw.read_text().splitlines():
            r = json.loads(text)
            results[(r["backend"], r["variant"])] = r
    for key, ev in evidence.items():
        r = results.setdefault(key, {"backend": key[0], "variant": key[1], "status": "crashed"})
        r["log"] = {k: v[:3] for k, v in ev["lines"].items() if v}
        r["s_q_seen"] = sorted(ev["s_q"])
    return results


def logprob_diffs(a: dict, b: dict) -> dict:
    """|a - b| of prompt logprobs (prefill) and of generated logprobs while contexts agree."""
    prefill, decode, same_first, prefixes = [], [], 0, []
    for pa, pb in zip(a["prompt_logprobs"], b["prompt_logprobs"], strict=True):
        prefill += [abs(x - y) for x, y in zip(pa, pb, strict=True)]
    for ta, tb, la, lb in zip(a["tokens"], b["tokens"], a["logprobs"], b["logprobs"], strict=True):
        agree = 0
        while agree < min(len(ta), len(tb)) and ta[agree] == tb[agree]:
            agree += 1
        prefixes.append(agree)
        same_first += bool(ta and tb and ta[0] == tb[0])
        # Position j's context is the prompt plus tokens < j: equal for every j <= agree.
        for j in range(min(agree + 1, len(la), len(lb))):
            diffs = [abs(la[j][t] - lb[j][t]) for t in la[j].keys() & lb[j].keys()]
            (prefill if j == 0 else decode).extend(diffs)  # token 0 comes from the prefill

    def stats(values):
        if not values:
            return None
        return {"mean": sum(values) / len(values), "max": max(values), "n": len(values)}

    return {
        "prefill": stats(prefill),
        "decode": stats(decode),
        "same_first_token": same_first,
        "prompts": len(prefixes),
        "mean_common_prefix": sum(prefixes) / max(1, len(prefixes)),
    }


def within(diff, floor) -> bool:
    if diff is None:
        return True
    if floor is None:
        return diff["mean"] <= ABS_MEAN and diff["max"] <= ABS_MAX
    return (
        diff["mean"] <= 2 * floor["mean"] + MARGIN_MEAN
        and diff["max"] <= 2 * floor["max"] + MARGIN_MAX
    )


def evaluate(name, results) -> dict:
    variant = VARIANTS[name]
    ours, default = results.get((OURS, name), {}), results.get((DEFAULT, name), {})
    floor_run = results.get((FLASHMLA, f"eager-h{variant.heads}"))
    floor_base = results.get((DEFAULT, f"eager-h{variant.heads}"))
    row = {
        "variant": name,
        "ours_status": ours.get("status", "not run"),
        "default_status": default.get("status", "not run"),
    }
    checks = {}
    log = ours.get("log", {})
    checks["log names our backend"] = bool(log.get("selected")) and not log.get("fallback")
    checks["vLLM set block size 64"] = bool(log.get("block64"))
    checks["default run untouched"] = not default.get("log", {}).get("selected")
    checks["weights re-drawn"] = bool(log.get("reinit")) and bool(
        default.get("log", {}).get("reinit")
    )
    if variant.graphs:
        checks["graphs captured"] = bool(log.get("graphs_captured")) and not log.get(
            "cudagraph_downgrade"
        )
    if variant.spec:
        checks["decoded >1 query token/request"] = any(s > 1 for s in ours.get("s_q_seen", []))
    floor = None
    if all(r and r.get("status") == "ok" for r in (floor_run, floor_base)):
        floor = logprob_diffs(floor_run, floor_base)
        row["floor"] = floor
    if ours.get("status") == "ok" and default.get("status") == "ok":
        diff = logprob_diffs(ours, default)
        row["diff"] = diff
        checks["prefill logprobs match"] = within(diff["prefill"], floor and floor["prefill"])
        checks["decode logprobs match"] = within(diff["decode"], floor and floor["decode"])
    else:
        checks["both runs ok"] = False
    row["model_runner"] = "V2" if log.get("v2_runner") else "V1"
    row.update(
        checks=checks,
        ok=all(checks.values()),
        s_q_seen=ours.get("s_q_seen"),
        init_s={"ours": ours.get("init_s"), "default": default.get("init_s")},
        spec_counters=ours.get("spec_counters"),
        errors={
            k: r.get("error") for k, r in (("ours", ours), ("default", default)) if r.get("error")
        },
    )
    return row


def fmt(stats) -> str:
    return "-" if not stats else f"{stats['mean']:.4f}/{stats['max']:.3f}"


def report(rows) -> list[str]:
    head = (
        f"{'variant':16} {'ours':6} {'dflt':6} {'prefill |d| mean/max':>21} "
        f"{'decode |d| mean/max':>20} {'floor decode':>14} {'1st tok':>7} "
        f"{'prefix':>6} {'s_q':>6} {'runner':>6}  verdict"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        d, f = r.get("diff") or {}, r.get("floor") or {}
        first = f"{d['same_first_token']}/{d['prompts']}" if d else "-"
        prefix = f"{d['mean_common_prefix']:.1f}" if d else "-"
        failed = [k for k, ok in r["checks"].items() if not ok]
        lines.append(
            f"{r['variant']:16} {r['ours_status'][:6]:6} {r['default_status'][:6]:6} "
            f"{fmt(d.get('prefill')):>21} {fmt(d.get('decode')):>20} "
            f"{fmt(f.get('decode')):>14} {first:>7} {prefix:>6} "
            f"{','.join(map(str, r['s_q_seen'] or [])) or '-':>6} {r['model_runner']:>6}  "
            + ("PASS" if r["ok"] else "FAIL: " + "; ".join(failed))
        )
        for who, error in (r.get("errors") or {}).items():
            lines.append(f"    {who}: {error}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help=f"comma-separated subset of: {', '.join(VARIANTS)}",
    )
    ap.add_argument("--out", default="vllm_e2e.json", help="JSON results")
    ap.add_argument(
        "--log", default=None, help="full log of both children (default: next to --out)"
    )
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--max-num-seqs", type=int, default=16)
    ap.add_argument("--gpu-mem", type=float, default=0.45)
    ap.add_argument("--deadline", type=float, default=540, help="seconds for everything")
    ap.add_argument("--model-root", default=str(Path(tempfile.gettempdir()) / "mla_e2e_models"))
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--raw", help=argparse.SUPPRESS)
    ap.add_argument("--child-deadline", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_main(args)
        return

    start = time.time()
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    floors = sorted({f"eager-h{VARIANTS[n].heads}" for n in names})
    default_runs = []
    for n in names:
        default_runs.append((DEFAULT, n))
    for n in floors:
        if n not in names:
            default_runs.append((DEFAULT, n))
        default_runs.append((FLASHMLA, n))
    ours_runs = [(OURS, n) for n in names]

    work = Path(args.work or tempfile.mkdtemp(prefix="mla_e2e_"))
    args.work = str(work)
    added = write_entry_points(work / "site")
    path = [str(work / "site"), str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")]
    base_env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(p for p in path if p),
        PYTHONUNBUFFERED="1",
        **{REINIT_ENV: "1"},
    )
    base_env.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
    base_env.pop(ENV_VAR, None)
    ours_env = dict(base_env, **{ENV_VAR: "1"})
    if added:
        print(f"entry points not installed, provided by {work / 'site'}: {added}", flush=True)

    log_path = Path(args.log or Path(args.out).with_suffix(".log"))
    results = {}
    with open(log_path, "w") as logf:
        remaining = args.deadline - (time.time() - start)
        share = len(default_runs) / (len(default_runs) + len(ours_runs))
        results.update(
            run_child("vllm-default", default_runs, base_env, args, logf, remaining * share)
        )
        remaining = args.deadline - (time.time() - start)
        results.update(run_child("mla-backend", ours_runs, ours_env, args, logf, remaining))

    rows = [evaluate(n, results) for n in names]
    lines = report(rows)
    print("\n" + "\n".join(lines), flush=True)
    summary = {
        "ok": all(r["ok"] for r in rows),
        "wall_s": round(time.time() - start, 1),
        "variants": rows,
        "runs": {
            f"{b}/{v}": {
                k: r.get(k)
                for k in ("status", "init_s", "gen_s", "log", "s_q_seen", "spec_counters", "error")
            }
            for (b, v), r in results.items()
        },
        "config": {
            "max_tokens": args.max_tokens,
            "max_num_seqs": args.max_num_seqs,
            "prompt_lens": PROMPT_LENS,
            "variants": {n: asdict(VARIANTS[n]) for n in names},
        },
    }
    Path(args.out).write_text(json.dumps(summary, indent=1, default=str))
    print(
        f"\n{'PASS' if summary['ok'] else 'FAIL'} in {summary['wall_s']}s; results "
        f"{args.out}, log {log_path}",
        flush=True,
    )
    sys.exit(0 if summary["ok"] else 1)


if __name__ == "__main__":
    main()
