#!/usr/bin/env python3
"""Serve a DeepSeek-style model with `vllm serve`, MLA decode on mla_backend, and query it.

Starts `vllm serve` on 127.0.0.1 with MLA_BACKEND_VLLM=1 in its environment (the only switch:
no --attention-backend, no --block-size), waits until /health answers, sends completions with
the OpenAI client (one request with two prompts, one streamed request), checks the server log
(our backend selected, no fallback, decode batches ran on our kernel) and shuts the server
down. Exits 0 when everything held, 1 otherwise; --out writes the findings as JSON.

Model: --model PATH (a real DeepSeek-V2/V3-style checkpoint, or any name vLLM can load; text
prompts, --trust-remote-code). Without --model: examples/vllm_e2e.py's tiny DeepSeek-V2-style
config (2 dense layers, hidden 1024, kv_lora_rank 512; --heads 16 or 128) served with
--load-format dummy and --skip-tokenizer-init, its weights re-drawn as in vllm_e2e.py;
prompts are token ids (511 and 2048 tokens) and the answers carry token ids.

Default vLLM flags: CUDA graphs for decode batches without torch.compile (compilation mode 0,
FULL_DECODE_ONLY, as vllm_e2e.py runs them; --eager for none, --vllm-default-compile for
vLLM's default), --max-model-len 4096, --gpu-memory-utilization 0.3 (0.85 with --model).
Extra vLLM flags: --vllm-arg=--flag --vllm-arg=value, or one string per --vllm-args.

Only loopback traffic: the server binds 127.0.0.1 and the client ignores proxy settings.
About 2 minutes on an H200 with the dummy model, most of it vLLM's start-up.

usage:
  python examples/serve_deepseek.py                                   # dummy model, 16 heads
  python examples/serve_deepseek.py --heads 128 --out serve.json
  python examples/serve_deepseek.py --model /models/DeepSeek-V2-Lite-Chat
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:  # run as a script, sys.path[0] is HERE already
    sys.path.insert(0, str(HERE))

from vllm_e2e import (  # noqa: E402
    ENV_VAR,
    LOG_EVIDENCE,
    REINIT_ENV,
    make_prompts,
    model_config,
    write_entry_points,
)

ANSI = re.compile(r"\x1b\[[0-9;]*m")  # in case vLLM colours its log
SERVED_NAME = "deepseek-mla"
TEXT_PROMPTS = ["The capital of France is", "Write a haiku about paged attention:"]
LOG_CHECKS = {
    "log names our backend": LOG_EVIDENCE["selected"],
    "decode ran on our kernel": "mla_backend: decode batch with ",
}


# ---------------------------------------------------------------------------------------------
# pure helpers (tested on CPU: tests/cpu/test_examples_serve.py)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_dummy_model(root: Path, heads: int) -> Path:
    """vllm_e2e.py's tiny DeepSeek-V2-style model: a folder with only config.json."""
    path = root / f"deepseek-v2-tiny-h{heads}"
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(model_config(heads), indent=1))
    return path


def server_command(args, model: str, port: int, dummy: bool) -> list[str]:
    """The `vllm serve` command line (run as `python -m vllm.entrypoints.cli.main serve`, the
    module behind the `vllm` console script, so it works where only PYTHONPATH has vLLM)."""
    gpu_mem = args.gpu_mem if args.gpu_mem is not None else (0.3 if dummy else 0.85)
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", model,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--served-model-name", SERVED_NAME,
        "--max-model-len", str(args.max_model_len),
        "--max-num-seqs", str(args.max_num_seqs),
        "--gpu-memory-utilization", str(gpu_mem),
        "--seed", "0",
    ]  # fmt: skip
    if args.eager:
        cmd.append("--enforce-eager")
    elif not args.vllm_default_compile:
        graphs = {"mode": 0, "cudagraph_mode": "FULL_DECODE_ONLY"}
        cmd += ["--compilation-config", json.dumps(graphs)]
    if dummy:
        cmd += ["--load-format", "dummy", "--skip-tokenizer-init", "--dtype", "bfloat16"]
    else:
        cmd.append("--trust-remote-code")
    for extra in args.vllm_args:
        cmd += shlex.split(extra)
    cmd += args.vllm_arg
    return cmd


def check_log(text: str) -> tuple[dict[str, bool], dict[str, list[str]]]:
    """Checks on the server log, and the lines they rest on."""
    lines = {key: [] for key in (*LOG_CHECKS, "fallback", "vllm_backend")}
    for line in ANSI.sub("", text).splitlines():
        for key, needle in LOG_CHECKS.items():
            if needle in line:
                lines[key].append(line.strip()[-300:])
        if LOG_EVIDENCE["fallback"] in line:
            lines["fallback"].append(line.strip()[-300:])
        if "attention backend out of potential backends" in line or (
            "Using AttentionBackendEnum." in line
        ):
            lines["vllm_backend"].append(line.strip()[-300:])
    checks = {key: bool(lines[key]) for key in LOG_CHECKS}
    checks["no fallback to vLLM's backend"] = not lines["fallback"]
    return checks, {k: v[:3] for k, v in lines.items() if v}


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """GET without any proxy (loopback only); (status, body), status 0 when unreachable."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, ""
    except (urllib.error.URLError, OSError):
        return 0, ""


def wait_for_server(base: str, proc: subprocess.Popen | None, timeout_s: float) -> str | None:
    """None once /health answers 200 and /v1/models lists the model; else why not."""
    end = time.time() + timeout_s
    while time.time() < end:
        if proc is not None and proc.poll() is not None:
            return f"server exited with status {proc.returncode} before it was ready"
        status, _ = http_get(f"{base}/health")
        if status == 200:
            status, body = http_get(f"{base}/v1/models")
            if status == 200 and SERVED_NAME in body:
                return None
        time.sleep(1.0)
    return f"server not ready after {timeout_s:.0f}s"


def query(base: str, dummy: bool, max_tokens: int, heads: int) -> tuple[dict, dict[str, bool]]:
    """Two completions in one request, then one streamed; (what came back, checks)."""
    import httpx
    from openai import OpenAI

    client = OpenAI(
        base_url=f"{base}/v1",
        api_key="EMPTY",
        http_client=httpx.Client(trust_env=False, timeout=120.0),  # no proxy: loopback only
        max_retries=0,
    )
    if dummy:  # no tokenizer: token-id prompts, token ids back
        ids = make_prompts()
        prompts: list = [ids[7], ids[11]]  # 511 and 2048 tokens
        extra = {"return_token_ids": True, "ignore_eos": True}
    else:
        prompts = list(TEXT_PROMPTS)
        extra = {"ignore_eos": True}
    found: dict = {"requests": []}
    checks: dict[str, bool] = {}
    t0 = time.time()
    resp = client.completions.create(
        model=SERVED_NAME, prompt=prompts, max_tokens=max_tokens, temperature=0.0, extra_body=extra
    ).model_dump()
    choices = sorted(resp.get("choices") or [], key=lambda c: c.get("index", 0))
    found["requests"].append(
        {
            "kind": "two prompts",
            "seconds": round(time.time() - t0, 2),
            "usage": resp.get("usage"),
            "choices": [
                {k: c.get(k) for k in ("index", "text", "token_ids", "finish_reason")}
                for c in choices
            ],
        }
    )
    checks["two completions"] = len(choices) == len(prompts)
    checks["each ran to max_tokens"] = bool(choices) and all(
        c.get("finish_reason") == "length" for c in choices
    )
    usage = resp.get("usage") or {}
    checks["usage counts every token"] = usage.get("completion_tokens") == max_tokens * len(prompts)
    if dummy:
        checks["token ids returned"] = bool(choices) and all(
            len(c.get("token_ids") or []) == max_tokens for c in choices
        )
    else:
        checks["text returned"] = bool(choices) and all(c.get("text") for c in choices)

    t0 = time.time()
    stream = client.completions.create(
        model=SERVED_NAME,
        prompt=prompts[0],
        max_tokens=max_tokens,
        temperature=0.0,
        stream=True,
        extra_body=extra,
    )
    pieces, tokens, finish = 0, [], None
    for chunk in stream:
        data = chunk.model_dump()
        for c in data.get("choices") or []:
            pieces += 1
            tokens += c.get("token_ids") or []
            finish = c.get("finish_reason") or finish
    found["requests"].append(
        {
            "kind": "streamed",
            "seconds": round(time.time() - t0, 2),
            "chunks": pieces,
            "token_ids": tokens or None,
            "finish_reason": finish,
        }
    )
    checks["stream ran to max_tokens"] = finish == "length" and pieces >= 2
    if dummy and choices:  # information only: batch size and caching may tip bf16 near-ties
        first = choices[0].get("token_ids") or []
        same = 0
        while same < min(len(first), len(tokens)) and first[same] == tokens[same]:
            same += 1
        found["requests"][-1]["tokens_shared_with_batched_answer"] = same
    found["heads"] = heads if dummy else None
    return found, checks


def stop_server(proc: subprocess.Popen) -> int | None:
    """SIGINT (vLLM's clean shutdown), then SIGTERM, then SIGKILL, to the server's own
    process group (the server and the engine processes it started)."""
    for sig, wait_s in ((signal.SIGINT, 30), (signal.SIGTERM, 15), (signal.SIGKILL, 15)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        except PermissionError:
            proc.send_signal(sig)
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
    return proc.poll()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default=None, help="checkpoint path or name (default: dummy)")
    ap.add_argument("--heads", type=int, default=16, help="query heads of the dummy model")
    ap.add_argument("--max-tokens", type=int, default=32, help="new tokens per completion")
    ap.add_argument("--max-model-len", type=int, default=4096)
    ap.add_argument("--max-num-seqs", type=int, default=16)
    ap.add_argument("--gpu-mem", type=float, default=None, help="gpu_memory_utilization")
    ap.add_argument("--port", type=int, default=0, help="default: a free port on 127.0.0.1")
    ap.add_argument("--env-value", default="1", choices=["1", "force"],
                    help=f"{ENV_VAR}: force fails start-up instead of falling back")  # fmt: skip
    ap.add_argument("--eager", action="store_true", help="no CUDA graphs")
    ap.add_argument("--vllm-default-compile", action="store_true",
                    help="vLLM's default compilation (torch.compile: slow start)")  # fmt: skip
    ap.add_argument("--vllm-arg", action="append", default=[], help="one extra vllm serve arg")
    ap.add_argument("--vllm-args", action="append", default=[], help="extra args, shell-split")
    ap.add_argument("--startup-timeout", type=float, default=150)
    ap.add_argument("--log", default=None, help="server log (default: serve_deepseek.log)")
    ap.add_argument("--out", default=None, help="JSON findings")
    args = ap.parse_args()

    start = time.time()
    dummy = args.model is None
    work = Path(tempfile.mkdtemp(prefix="mla_serve_"))
    model = args.model or str(write_dummy_model(work / "models", args.heads))
    added = write_entry_points(work / "site")
    path = [str(work / "site"), str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")]
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(p for p in path if p),
        PYTHONUNBUFFERED="1",
        **{ENV_VAR: args.env_value},
    )
    env.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
    if dummy:
        env[REINIT_ENV] = "1"  # realistic dummy weights (vllm_e2e.py's plugin)
    for key in ("NO_PROXY", "no_proxy"):
        env[key] = ",".join(x for x in ("127.0.0.1", "localhost", env.get(key)) if x)
    if added:
        print(f"entry points not installed, provided by {work / 'site'}: {added}", flush=True)

    port = args.port or free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = server_command(args, model, port, dummy)
    log_path = Path(args.log or "serve_deepseek.log")
    print(f"$ {ENV_VAR}={args.env_value} {shlex.join(cmd)}", flush=True)
    summary: dict = {
        "model": model,
        "dummy": dummy,
        "command": cmd,
        "env": {ENV_VAR: args.env_value},
    }
    checks: dict[str, bool] = {}
    with open(log_path, "w") as logf:
        proc = subprocess.Popen(
            cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        problem = wait_for_server(base, proc, args.startup_timeout)
        summary["ready_s"] = round(time.time() - start, 1)
        checks["server ready"] = problem is None
        if problem:
            print(f"server: {problem}", flush=True)
        else:
            print(f"server ready at {base} after {summary['ready_s']}s", flush=True)
            try:
                found, query_checks = query(base, dummy, args.max_tokens, args.heads)
                summary["completions"] = found
                checks.update(query_checks)
                for r in found["requests"]:
                    shown = r.get("choices") or [r]
                    for c in shown:
                        what = c.get("token_ids") or repr(c.get("text"))
                        print(f"  {r['kind']}: {str(what)[:100]}", flush=True)
            except Exception as e:
                summary["query_error"] = f"{type(e).__name__}: {str(e)[:600]}"
                checks["completions answered"] = False
                print(f"query failed: {summary['query_error']}", flush=True)
    finally:
        summary["exit_status"] = stop_server(proc)
    text = log_path.read_text(errors="replace")
    log_checks, summary["log"] = check_log(text)
    checks.update(log_checks)
    summary["checks"] = checks
    summary["ok"] = all(checks.values())
    summary["wall_s"] = round(time.time() - start, 1)
    for key, ok in checks.items():
        print(f"  {'ok  ' if ok else 'FAIL'} {key}", flush=True)
    if not summary["ok"]:
        print("--- last lines of the server log:", flush=True)
        print("\n".join(text.splitlines()[-40:]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1, default=str))
    print(
        f"\n{'PASS' if summary['ok'] else 'FAIL'} in {summary['wall_s']}s; server log {log_path}",
        flush=True,
    )
    sys.exit(0 if summary["ok"] else 1)


if __name__ == "__main__":
    main()
