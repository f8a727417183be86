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

Tensor parallelism: "tpN-" variants (tp2-eager-h128, ...; --variants tp2, or --tp 2, which
also prefixes unprefixed names) run with tensor_parallel_size N: vLLM starts one worker
process per GPU, each with the model's heads / N. Each worker loads the plugins and re-draws
its own shards (replicated weights the same on every rank); the log checks below hold for
every rank, told apart by the "(Worker_TP<rank> pid=...)" prefix vLLM puts on worker lines.
NVLink multicast stays off: NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1 and
NVSHMEM_DISABLE_NVLS=1 are set for the children where unset, and each rank reports them.

Checks, per variant (per rank with TP): the log names our backend (and no fallback), vLLM set
block size 64, our kernel decoded with the rank's share of the heads, speculative variants
decoded several query tokens per request on our kernel, and prompt logprobs (prefill) and
generated-token logprobs (decode, compared while the greedy sequences agree) match the
default backend within the noise. Each run also measures decode throughput: after the checked
generate, max-num-seqs fresh prompts of --tput-len tokens generate 1 and then --tput-tokens
tokens; the extra tokens over the extra time are the decode tokens/s (engine start excluded).
Prints a table, writes JSON (--out), exits 1 if a check fails.

Setup on the GPU host: vLLM importable (e.g. eval "$(bash .offline-vllm/install.sh)") and
mla_backend importable and built. The plugin entry points are found through a small
dist-info folder this script writes to a temporary directory (as pip install would), which
also carries the test-only plugin that re-draws the dummy weights in vLLM's processes.

usage:
  python examples/vllm_e2e.py --out e2e.json                 # all default variants
  python examples/vllm_e2e.py --variants eager-h16,spec-eager-h16 --max-tokens 16
  python examples/vllm_e2e.py --tp 2 --out e2e_tp2.json      # tp2-{eager,graph}-h{128,32}
  python examples/vllm_e2e.py --tp 2 --dry-run               # print the plan, start nothing
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ENV_VAR = "MLA_BACKEND_VLLM"
REINIT_ENV = "MLA_BACKEND_E2E_REINIT"
VOCAB = 32000
PROMPT_LENS = [5, 17, 63, 64, 65, 130, 257, 511, 700, 1000, 1500, 2048]
TOP_LOGPROBS = 5
MAX_MODEL_LEN = 4096
NUM_SPEC_TOKENS = 3
# Pass rule: ours vs default <= 2 * (FLASHMLA vs default) + margin, for the mean and the max
# |logprob difference|. Logits are bf16: from 16 to 32 they move in steps of 1/8, so a max
# over ~1000 values sees a step or two; a wrong attention moves the mean by much more.
MARGIN_MEAN, MARGIN_MAX = 0.01, 0.25
# Without a noise-floor run (its variant skipped by the deadline, or excluded): the same rule
# applied to the largest floor recorded on H200s (FLASHMLA vs default, decode, 16 and 128 heads,
# TP 1 and 2, 2026-11-28 and 2026-12-01: mean 0.0286-0.0345, max 0.177-0.183; docs/vllm.md). The
# old fixed mean bound, 0.03, sat below that floor and failed a run whose floor-judged twin
# passed.
RECORDED_FLOOR = {"mean": 0.0345, "max": 0.183}
ABS_MEAN = 2 * RECORDED_FLOOR["mean"] + MARGIN_MEAN
ABS_MAX = 2 * RECORDED_FLOOR["max"] + MARGIN_MAX
# NVLink multicast off in NCCL, PyTorch and NVSHMEM (shared multi-GPU hosts): set for the
# children where unset; each rank's re-draw line reports them. vLLM's torch-symm-mem all-reduce
# is off too (it would only ask for multicast; its custom all-reduce uses CUDA IPC).
MULTICAST_OFF = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}
TP_ENV_DEFAULTS = {"VLLM_ALLREDUCE_USE_SYMM_MEM": "0"}


@dataclass(frozen=True)
class Variant:
    heads: int
    graphs: bool = False  # full CUDA graphs for decode batches (no torch.compile)
    spec: bool = False  # ngram speculative decoding: several query tokens per request
    compile: bool = False  # vLLM's default: torch.compile + piecewise and full graphs
    env: tuple[tuple[str, str], ...] = ()  # set while the run's engine starts
    tp: int = 1  # tensor_parallel_size: one worker process per GPU, heads / tp each


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
    "eager-h32": Variant(32),  # 16 heads per rank with TP 2
    "graph-h32": Variant(32, graphs=True),
}
DEFAULT_VARIANTS = [
    "eager-h16",
    "graph-h16",
    "spec-eager-h16",
    "spec-graph-h16",
    "eager-h128",
    "graph-h128",
    "spec-graph-h128",
    "v1-graph-h16",
]
# "tpN-<name>" is <name> with tensor_parallel_size N; preset "tpN" is these four (TP 2: 64 and
# 16 heads per rank).
TP_PRESET = ["eager-h128", "graph-h128", "eager-h32", "graph-h32"]
TP_NAME = re.compile(r"tp(\d+)-(.+)")
DEFAULT, FLASHMLA, OURS = "default", "FLASHMLA", "ours"


def variant_of(name: str) -> Variant:
    """VARIANTS[name], or for "tpN-<name>" that variant with tensor_parallel_size N."""
    if name in VARIANTS:
        return VARIANTS[name]
    match = TP_NAME.fullmatch(name)
    if not match or match[2] not in VARIANTS or int(match[1]) < 2:
        raise KeyError(name)
    tp, base = int(match[1]), VARIANTS[match[2]]
    if base.heads % tp:
        raise ValueError(f"{name}: {base.heads} heads do not split over {tp} ranks")
    return replace(base, tp=tp)


def floor_name(variant: Variant) -> str:
    """The eager variant of the same heads and TP, whose FLASHMLA run gives the noise floor."""
    return (f"tp{variant.tp}-" if variant.tp > 1 else "") + f"eager-h{variant.heads}"


def expand_variants(spec: str | None, tp: int) -> list[str]:
    """--variants (names and presets "default", "tpN") under --tp: unprefixed names get "tpN-"."""
    if spec is None:
        spec = "default" if tp == 1 else f"tp{tp}"
    names: list[str] = []
    for item in (part.strip() for part in spec.split(",")):
        if item == "default":
            names += DEFAULT_VARIANTS
        elif re.fullmatch(r"tp\d+", item):
            names += [f"{item}-{base}" for base in TP_PRESET]
        elif item:
            names.append(item)
    if tp > 1:
        names = [n if TP_NAME.fullmatch(n) else f"tp{tp}-{n}" for n in names]
    return list(dict.fromkeys(names))


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
        rank, size = _tp_rank_size()
        count = sharded = 0
        seen: set[int] = set()
        with torch.no_grad():
            # model.named_parameters()'s order and names, with each parameter's module
            for prefix, module in model.named_modules():
                split = _tp_split(module, size)
                for local, p in module.named_parameters(recurse=False):
                    if id(p) in seen:
                        continue
                    seen.add(id(p))
                    name = f"{prefix}.{local}" if prefix else local
                    if not p.is_floating_point() or p.device.type == "meta":
                        continue
                    if p.dim() == 1:
                        p.fill_(0.0 if name.endswith("bias") else 1.0)
                    else:
                        # A rank's shard of a TP-split weight is its own draw (the same draw
                        # on every rank would make rank 1's heads copies of rank 0's);
                        # replicated weights are the same on every rank. Row-parallel shards
                        # hold fan_in / size of the inputs.
                        key = name if split is None else f"{name}#tp{rank}/{size}"
                        fan_in = p.shape[-1] * (size if split == "in" else 1)
                        sharded += split is not None
                        gen = torch.Generator(device=p.device).manual_seed(_seed(key))
                        gain = 4.0 if "lm_head" in name else 1.0
                        draw = torch.randn(p.shape, generator=gen, device=p.device)
                        p.copy_(draw.mul_(gain / math.sqrt(fan_in)))
                    count += 1
        env = ",".join(f"{k}={os.environ.get(k, '<unset>')}" for k in MULTICAST_OFF)
        print(
            f"E2E-REINIT {count} parameters, tp rank {rank} of {size}, {sharded} sharded; "
            f"env {env}",
            flush=True,
        )

    load_weights._mla_backend_e2e = True
    DummyModelLoader.load_weights = load_weights


def _seed(name: str) -> int:
    return sum((i + 1) * ord(c) for i, c in enumerate(name)) % (2**31)


def _tp_rank_size() -> tuple[int, int]:
    try:
        from vllm.distributed import (
            get_tensor_model_parallel_rank,
            get_tensor_model_parallel_world_size,
        )

        return get_tensor_model_parallel_rank(), get_tensor_model_parallel_world_size()
    except Exception:  # no TP group (tests, uniproc without distributed init)
        return 0, 1


def _tp_split(module, size: int) -> str | None:
    """How vLLM splits a module's weight over TP ranks: "out", "in" or None (replicated)."""
    if size <= 1 or getattr(module, "tp_size", 1) <= 1:  # e.g. disable_tp=True
        return None
    from vllm.model_executor.layers.linear import ColumnParallelLinear, RowParallelLinear
    from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding

    if isinstance(module, RowParallelLinear):
        return "in"
    if isinstance(module, (ColumnParallelLinear, VocabParallelEmbedding)):
        return "out"
    return None  # ReplicatedLinear (which keeps tp_size), norms, ...


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


def random_prompts(count: int, length: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(2, VOCAB) for _ in range(length)] for _ in range(count)]


def decode_throughput(llm, args) -> dict:
    """Decode tokens/s: max-num-seqs prompts generate 1 token, then fresh ones --tput-tokens.

    The second generate makes (tokens - 1) more decode steps than the first, with the same
    prefill (fresh random prompts: no prefix-cache hits), so the extra tokens over the extra
    time are decode throughput. The first also warms this batch size up.
    """
    from vllm import SamplingParams

    n, length, tokens = args.max_num_seqs, args.tput_len, args.tput_tokens
    times = []
    for seed, max_tokens in ((101, 1), (202, tokens)):
        params = SamplingParams(
            temperature=0.0, max_tokens=max_tokens, ignore_eos=True, detokenize=False
        )
        prompts = [{"prompt_token_ids": p} for p in random_prompts(n, length, seed)]
        t0 = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        times.append(time.perf_counter() - t0)
        generated = sum(len(o.outputs[0].token_ids) for o in outs)
    decode_tokens = generated - n
    decode_s = times[1] - times[0]
    return {
        "requests": n,
        "prompt_len": length,
        "max_tokens": tokens,
        "prefill_s": round(times[0], 3),
        "total_s": round(times[1], 3),
        "decode_tokens": decode_tokens,
        "decode_tok_s": round(decode_tokens / decode_s, 1) if decode_s > 0 else None,
        "e2e_tok_s": round(generated / times[1], 1),
    }


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

    variant = variant_of(name)
    kw = dict(
        model=str(write_model(Path(args.model_root), variant.heads)),
        load_format="dummy",
        skip_tokenizer_init=True,
        dtype="bfloat16",
        seed=0,
        max_model_len=MAX_MODEL_LEN,
        max_num_seqs=args.max_num_seqs,
        gpu_memory_utilization=args.gpu_mem,
        enforce_eager=not variant.graphs,
        disable_log_stats=False,
    )
    if variant.tp > 1:
        kw["tensor_parallel_size"] = variant.tp
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
        gen_s = time.time() - t0
        result["gen_s"] = round(gen_s, 2)
        after = spec_counters(llm)
        result["spec_counters"] = {k: after[k] - before.get(k, 0.0) for k in after}
        # prefill-heavy (prompt logprobs); decode throughput is result["throughput"]
        result["gen_tok_s"] = round(sum(len(o.outputs[0].token_ids) for o in outs) / gen_s, 1)
        result["prompt_logprobs"] = [
            [pos[tok].logprob for pos, tok in zip(o.prompt_logprobs[1:], p[1:], strict=True)]
            for o, p in zip(outs, prompts, strict=True)
        ]
        result["tokens"] = [list(o.outputs[0].token_ids) for o in outs]
        result["logprobs"] = [
            [{str(t): lp.logprob for t, lp in pos.items()} for pos in o.outputs[0].logprobs]
            for o in outs
        ]
        if args.tput_tokens > 1:
            try:
                result["throughput"] = decode_throughput(llm, args)
            except Exception as e:  # keep the checked results; evaluate() flags it
                result["throughput"] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
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
# vLLM (0.26) prefixes each line of its engine and worker processes with "(<name> pid=<pid>) ":
# "EngineCore", and with TP "Worker" until the parallel groups exist, then "Worker_TP<rank>"
# (plus _DP/_PP/... parts when those are > 1). Older releases wrote "(VllmWorker rank=<r>
# pid=<pid>)". Colour codes appear when VLLM_LOGGING_COLOR=1.
PROC_PREFIX = re.compile(r"\((?P<name>[A-Za-z][\w.-]*)(?: rank=(?P<rank>\d+))? pid=(?P<pid>\d+)\) ")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
DECODE_LINE = re.compile(
    r"mla_backend: (?:varlen )?decode batch with (?:up to )?(\d+) query token\(s\) per request, "
    r"(\d+) heads"
)
ENV_ON_LINE = re.compile(r"\benv (\S+)")


def split_prefixes(line: str) -> tuple[list[re.Match], str]:
    """The "(name pid=...) " prefixes a line starts with, and the rest.

    One prefix is usual; two or more mean processes' writes interleaved (the owner of the
    text is then one of them, which one is unknown).
    """
    text = ANSI.sub("", line.rstrip("\n"))
    # A progress bar (tqdm, "Capturing CUDA graphs ...") writes without a newline, so the next
    # process's prefixed line can follow it on the same line: start at the first prefix.
    if (first := PROC_PREFIX.search(text)) is not None and first.start() > 0:
        text = text[first.start() :]
    prefixes = []
    while match := PROC_PREFIX.match(text):
        prefixes.append(match)
        text = text[match.end() :]
    return prefixes, text


def tp_rank_of(name: str, rank: str | None) -> int | None:
    """The TP rank a process name says ("Worker_TP1" -> 1), or None (not a TP worker)."""
    if rank is not None:
        return int(rank)
    match = re.search(r"_TP(\d+)", name)
    return int(match[1]) if match else None


class RunLog:
    """Log evidence of one (backend, variant) run, per process (pid; "main" when unprefixed)."""

    def __init__(self) -> None:
        self.procs: dict[str, dict] = {}
        self.ambiguous = 0

    def _proc(self, pid: str) -> dict:
        return self.procs.setdefault(
            pid,
            {
                "name": None,
                "rank": None,
                "lines": {k: [] for k in LOG_EVIDENCE},
                "s_q": set(),
                "heads": set(),
                "env": None,
            },
        )

    def add(self, line: str) -> None:
        prefixes, text = split_prefixes(line)
        for m in prefixes:  # a process's latest name (Worker -> Worker_TP1) and rank
            proc = self._proc(m["pid"])
            proc["name"] = m["name"]
            rank = tp_rank_of(m["name"], m["rank"])
            if rank is not None:
                proc["rank"] = rank
        if len(prefixes) > 1:
            self.ambiguous += 1
        proc = self._proc(prefixes[-1]["pid"] if prefixes else "main")
        for key, needle in LOG_EVIDENCE.items():
            if needle in text:
                proc["lines"][key].append(text.strip()[-300:])
        if match := DECODE_LINE.search(text):
            proc["s_q"].add(int(match[1]))
            proc["heads"].add(int(match[2]))
        if "CUDAGraphMode." in text and "not supported" in text:
            proc["lines"].setdefault("cudagraph_downgrade", []).append(text.strip()[-300:])
        if "E2E-REINIT" in text and (match := ENV_ON_LINE.search(text)):
            proc["env"] = dict(kv.split("=", 1) for kv in match[1].split(",") if "=" in kv)

    def merged(self, procs=None) -> dict:
        procs = list(self.procs.values()) if procs is None else procs
        lines: dict[str, list[str]] = {}
        for proc in procs:
            for key, found in proc["lines"].items():
                if found:
                    lines.setdefault(key, []).extend(found)
        return {
            "lines": lines,
            "s_q": set().union(*(p["s_q"] for p in procs)),
            "heads": set().union(*(p["heads"] for p in procs)),
            "env": next((p["env"] for p in procs if p["env"] is not None), None),
            "pids": [pid for pid, p in self.procs.items() if any(p is q for q in procs)],
        }

    def per_rank(self, tp: int) -> dict[int, dict]:
        """Evidence per TP rank: with TP 1 every process is rank 0 (the engine core runs the
        model); with TP > 1 the workers by their rank (engine-core lines count for none)."""
        if tp <= 1:
            return {0: self.merged()}
        ranks: dict[int, list[dict]] = {}
        for proc in self.procs.values():
            if proc["rank"] is not None:
                ranks.setdefault(proc["rank"], []).append(proc)
        return {rank: self.merged(procs) for rank, procs in sorted(ranks.items())}


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
    for key in ("model_root", "max_tokens", "max_num_seqs", "gpu_mem", "tput_tokens", "tput_len"):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    logf.write(f"\n===== child {label}: {' '.join(cmd)}\n")
    print(f"== {label}: {len(runs)} run(s), budget {budget_s:.0f}s", flush=True)
    evidence: dict[tuple[str, str], RunLog] = {}
    current = None
    t0 = time.time()
    # Its own process group: vLLM's engine core and (with TP) workers are its children, and a
    # process left behind would hold a GPU's memory and this pipe.
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )

    def kill_group() -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()

    # The child skips runs past its budget; this kills it if one run hangs.
    watchdog = threading.Timer(budget_s + 60, kill_group)
    watchdog.start()
    try:
        for line in proc.stdout:
            logf.write(line)
            if line.startswith("E2E-BEGIN "):
                current = tuple(line.split()[1:3])
                evidence[current] = RunLog()
                continue
            if line.startswith(("E2E-END ", "E2E-SKIP ")):
                print(f"   {line.strip()}  ({time.time() - t0:.0f}s)", flush=True)
                continue
            if current is not None:
                evidence[current].add(line)
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pass
    finally:
        watchdog.cancel()
        kill_group()  # whatever is left (nothing, after a clean exit)
        proc.wait()
    if proc.returncode not in (0, None):
        print(f"   {label}: exit status {proc.returncode}", flush=True)
    results = {}
    if raw.exists():
        for text in raw.read_text().splitlines():
            r = json.loads(text)
            results[(r["backend"], r["variant"])] = r
    for key, ev in evidence.items():
        r = results.setdefault(key, {"backend": key[0], "variant": key[1], "status": "crashed"})
        merged = ev.merged()
        r["log"] = {k: v[:3] for k, v in merged["lines"].items() if v}
        r["s_q_seen"] = sorted(merged["s_q"])
        r["ranks"] = {
            str(rank): {
                "pids": e["pids"],
                "log": {k: v[:1] for k, v in e["lines"].items() if v},
                "s_q_seen": sorted(e["s_q"]),
                "heads_seen": sorted(e["heads"]),
                "env": e["env"],
            }
            for rank, e in ev.per_rank(variant_of(key[1]).tp).items()
        }
        if ev.ambiguous:
            r["interleaved_log_lines"] = ev.ambiguous
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


def rank_logs(run: dict, tp: int) -> list[dict]:
    """A run's evidence for each of its TP ranks 0..tp-1 (empty for a rank not seen)."""
    ranks = run.get("ranks") or {}
    return [ranks.get(str(rank)) or {} for rank in range(tp)]


def evaluate(name, results) -> dict:
    """Checks of one variant. With TP > 1 the log checks hold for every rank's worker."""
    variant = variant_of(name)
    ours, default = results.get((OURS, name), {}), results.get((DEFAULT, name), {})
    floor_run = results.get((FLASHMLA, floor_name(variant)))
    floor_base = results.get((DEFAULT, floor_name(variant)))
    heads_per_rank = variant.heads // variant.tp
    row = {
        "variant": name,
        "tp": variant.tp,
        "heads_per_rank": heads_per_rank,
        "ours_status": ours.get("status", "not run"),
        "default_status": default.get("status", "not run"),
    }
    checks = {}
    log = ours.get("log", {})
    ours_ranks, default_ranks = rank_logs(ours, variant.tp), rank_logs(default, variant.tp)

    def every(ranks, key):
        return all(r.get("log", {}).get(key) for r in ranks)

    checks["log names our backend"] = every(ours_ranks, "selected") and not log.get("fallback")
    checks["vLLM set block size 64"] = every(ours_ranks, "block64")
    checks["default run untouched"] = not default.get("log", {}).get("selected")
    checks["weights re-drawn"] = every(ours_ranks, "reinit") and every(default_ranks, "reinit")
    checks["our kernel decoded heads/tp heads"] = all(
        r.get("heads_seen") == [heads_per_rank] for r in ours_ranks
    )
    if variant.tp > 1:
        checks["multicast off in every worker"] = all(
            r.get("env") == MULTICAST_OFF for r in ours_ranks + default_ranks
        )
    if variant.graphs:
        checks["graphs captured"] = bool(log.get("graphs_captured")) and not log.get(
            "cudagraph_downgrade"
        )
    if variant.spec:
        checks["decoded >1 query token/request"] = all(
            any(s > 1 for s in r.get("s_q_seen", [])) for r in ours_ranks
        )
    throughput = {"ours": ours.get("throughput"), "default": default.get("throughput")}
    if any(throughput.values()):
        checks["throughput runs ok"] = all(t and t.get("decode_tok_s") for t in throughput.values())
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
        decode_tok_s={k: (t or {}).get("decode_tok_s") for k, t in throughput.items()},
        ours_ranks=ours.get("ranks"),
        throughput=throughput,
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
        f"{'prefix':>6} {'s_q':>6} {'runner':>6} {'tok/s ours/dflt':>15}  verdict"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        d, f = r.get("diff") or {}, r.get("floor") or {}
        first = f"{d['same_first_token']}/{d['prompts']}" if d else "-"
        prefix = f"{d['mean_common_prefix']:.1f}" if d else "-"
        failed = [k for k, ok in r["checks"].items() if not ok]
        tok_s = "/".join(
            "-" if r["decode_tok_s"].get(k) is None else f"{r['decode_tok_s'][k]:.0f}"
            for k in ("ours", "default")
        )
        lines.append(
            f"{r['variant']:16} {r['ours_status'][:6]:6} {r['default_status'][:6]:6} "
            f"{fmt(d.get('prefill')):>21} {fmt(d.get('decode')):>20} "
            f"{fmt(f.get('decode')):>14} {first:>7} {prefix:>6} "
            f"{','.join(map(str, r['s_q_seen'] or [])) or '-':>6} {r['model_runner']:>6} "
            f"{tok_s:>15}  " + ("PASS" if r["ok"] else "FAIL: " + "; ".join(failed))
        )
        if r["tp"] > 1:
            lines.append(
                "    ours per rank: "
                + " | ".join(
                    f"TP{rank} pid {','.join(e.get('pids', [])) or '-'}: "
                    + ("our backend" if e.get("log", {}).get("selected") else "NOT NAMED")
                    + f", {'/'.join(map(str, e.get('heads_seen', []))) or '-'} heads"
                    + f", s_q {','.join(map(str, e.get('s_q_seen', []))) or '-'}"
                    for rank, e in sorted((r.get("ours_ranks") or {}).items())
                )
            )
        for who, error in (r.get("errors") or {}).items():
            lines.append(f"    {who}: {error}")
    return lines


def visible_gpus() -> int | None:
    """GPUs a child would see (CUDA_VISIBLE_DEVICES, else nvidia-smi -L); None if unknown."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip()])
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return None
    return sum(line.startswith("GPU ") for line in out.splitlines())


def child_env(base: dict[str, str], tp: int) -> dict[str, str]:
    """The children's environment: multicast off where unset (inherited by vLLM's engine and
    worker processes); with TP, no PYTHONUNBUFFERED, so that each of a worker's log lines
    leaves it in one write (prefix and text; unbuffered they are two writes, and two workers'
    lines can interleave and lose their owner)."""
    env = dict(base)
    for key, value in MULTICAST_OFF.items():
        env.setdefault(key, value)
    if tp > 1:
        for key, value in TP_ENV_DEFAULTS.items():
            env.setdefault(key, value)
        env.pop("PYTHONUNBUFFERED", None)
    return env


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--variants",
        default=None,
        help="comma-separated variants and presets: 'default' (the default with --tp 1: "
        f"{','.join(DEFAULT_VARIANTS)}), 'tpN' (the default with --tp N > 1: "
        f"tpN-{{{','.join(TP_PRESET)}}}), and any of {', '.join(VARIANTS)}, also as "
        "'tpN-<name>' (tensor_parallel_size N)",
    )
    ap.add_argument(
        "--tp",
        type=int,
        default=1,
        help="tensor_parallel_size for variants named without 'tpN-' (default 1); with N > 1 "
        "and no --variants, runs preset tpN",
    )
    ap.add_argument(
        "--tput-tokens",
        type=int,
        default=128,
        help="tokens per request of the decode-throughput generate (<= 1: no throughput)",
    )
    ap.add_argument("--tput-len", type=int, default=1024, help="prompt length for throughput")
    ap.add_argument("--dry-run", action="store_true", help="print the plan, start nothing")
    ap.add_argument("--out", default="vllm_e2e.json", help="JSON results")
    ap.add_argument(
        "--log", default=None, help="full log of both children (default: next to --out)"
    )
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--max-num-seqs", type=int, default=16)
    ap.add_argument("--gpu-mem", type=float, default=0.45)
    ap.add_argument(
        "--deadline",
        type=float,
        default=None,
        help="seconds for everything (default 540; 420 with TP > 1: runs past it are skipped, "
        "a hung one is killed a minute later)",
    )
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
    if args.tp < 1:
        ap.error("--tp must be >= 1")
    if args.tput_tokens > 1 and not 1 <= args.tput_len <= MAX_MODEL_LEN - args.tput_tokens:
        ap.error(f"--tput-len + --tput-tokens must fit in {MAX_MODEL_LEN} tokens")
    names = expand_variants(args.variants, args.tp)
    bad = []
    for n in names:
        try:
            variant_of(n)
        except (KeyError, ValueError) as e:
            bad.append(str(e))
    if bad or not names:
        ap.error(f"bad variant(s) {bad}; choose from {list(VARIANTS)}, as 'tpN-<name>' too")
    tp = max(variant_of(n).tp for n in names)
    if args.deadline is None:
        args.deadline = 540.0 if tp == 1 else 420.0
    gpus = visible_gpus() if tp > 1 else None
    if gpus is not None and gpus < tp and not args.dry_run:
        ap.error(f"tensor parallel size {tp} needs {tp} GPUs; {gpus} visible")
    floors = sorted({floor_name(variant_of(n)) for n in names})
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
    base_env = child_env(base_env, tp)
    ours_env = dict(base_env, **{ENV_VAR: "1"})
    if added:
        print(f"entry points not installed, provided by {work / 'site'}: {added}", flush=True)
    for key, value in MULTICAST_OFF.items():
        if base_env[key] != value:
            print(
                f"WARNING: {key}={base_env[key]} in the environment (multicast off is "
                f"{key}={value}); kept",
                flush=True,
            )
    if args.dry_run:
        shown = [*MULTICAST_OFF, *TP_ENV_DEFAULTS, "PYTHONUNBUFFERED", REINIT_ENV, ENV_VAR]
        seen = "" if gpus is None else f"; {gpus} GPU(s) visible"
        print(f"variants: {', '.join(names)} (TP {tp}{seen})")
        print(f"deadline {args.deadline:.0f}s")
        for label, runs, env in (
            ("vllm-default", default_runs, base_env),
            ("mla-backend", ours_runs, ours_env),
        ):
            print(f"child {label}: {len(runs)} run(s)")
            for backend, n in runs:
                print(f"  {backend:8} {n:18} {asdict(variant_of(n))}")
            print("  env: " + " ".join(f"{k}={env.get(k, '<unset>')}" for k in shown))
        return

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
                for k in (
                    "status",
                    "init_s",
                    "gen_s",
                    "gen_tok_s",
                    "throughput",
                    "log",
                    "s_q_seen",
                    "ranks",
                    "interleaved_log_lines",
                    "spec_counters",
                    "error",
                )
            }
            for (b, v), r in results.items()
        },
        "config": {
            "max_tokens": args.max_tokens,
            "max_num_seqs": args.max_num_seqs,
            "prompt_lens": PROMPT_LENS,
            "variants": {n: asdict(variant_of(n)) for n in names},
            "tp": tp,
            "gpu_mem": args.gpu_mem,
            "throughput": {"prompt_len": args.tput_len, "max_tokens": args.tput_tokens},
            "child_env": {
                k: base_env.get(k) for k in (*MULTICAST_OFF, *TP_ENV_DEFAULTS, "PYTHONUNBUFFERED")
            },
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
