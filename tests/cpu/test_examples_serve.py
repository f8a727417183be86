"""examples/serve_deepseek.py on CPU: its command line and log checks, and its whole flow
(start, wait, OpenAI-client queries, log check, shutdown) against a stand-in `vllm serve`
(a small HTTP server on 127.0.0.1 that answers like vLLM's completions endpoint). The real
run needs an H200; this checks the plumbing."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
sys.path.insert(0, str(EXAMPLES))

import serve_deepseek as sd  # noqa: E402


def _args(**kw):
    base = dict(
        gpu_mem=None,
        max_model_len=4096,
        max_num_seqs=16,
        eager=False,
        vllm_default_compile=False,
        vllm_args=[],
        vllm_arg=[],
    )
    return SimpleNamespace(**{**base, **kw})


def test_server_command_dummy():
    cmd = sd.server_command(_args(vllm_args=["--max-num-batched-tokens 4096"]), "/m", 1234, True)
    assert cmd[1:5] == ["-m", "vllm.entrypoints.cli.main", "serve", "/m"]
    joined = " ".join(cmd)
    assert "--host 127.0.0.1 --port 1234" in joined
    assert "--load-format dummy --skip-tokenizer-init" in joined
    assert "--gpu-memory-utilization 0.3" in joined
    assert json.loads(cmd[cmd.index("--compilation-config") + 1]) == {
        "mode": 0,
        "cudagraph_mode": "FULL_DECODE_ONLY",
    }
    assert cmd[-2:] == ["--max-num-batched-tokens", "4096"]
    assert "--attention-backend" not in cmd and "--block-size" not in cmd


def test_server_command_real_and_eager():
    cmd = sd.server_command(_args(eager=True), "deepseek-ai/DeepSeek-V2-Lite-Chat", 8000, False)
    assert "--trust-remote-code" in cmd and "--enforce-eager" in cmd
    assert "--load-format" not in cmd and "--compilation-config" not in cmd
    assert "--gpu-memory-utilization 0.85" in " ".join(cmd)


def test_check_log():
    good = (
        "INFO mla_backend: using mla_backend.vllm.backend.MlaBackendAttentionBackend\n"
        "(EngineCore pid=1) INFO mla_backend: decode batch with 1 query token(s) per request\n"
    )
    checks, lines = sd.check_log(good)
    assert all(checks.values()), checks
    fell_back = "WARNING mla_backend: not used for MLA attention (no GPU)\n"
    checks, lines = sd.check_log(fell_back)
    assert not checks["log names our backend"]
    assert not checks["no fallback to vLLM's backend"]
    assert lines["fallback"]


def test_wait_for_server_reports_exit():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    port = sd.free_port()
    assert "exited" in sd.wait_for_server(f"http://127.0.0.1:{port}", proc, 5)


FAKE_SERVE = r'''
"""Stand-in for `python -m vllm.entrypoints.cli.main serve`: vLLM-like log lines and an
OpenAI-style completions endpoint on 127.0.0.1 (token ids in, token ids out)."""
import argparse
import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# SIGINT stops the server as it stops vLLM's (uvicorn installs its handler explicitly), even
# when this process inherits SIGINT ignored, as a background job of a non-interactive shell does.
signal.signal(signal.SIGINT, signal.default_int_handler)

ap = argparse.ArgumentParser()
ap.add_argument("cmd")
ap.add_argument("model")
ap.add_argument("--host")
ap.add_argument("--port", type=int)
ap.add_argument("--served-model-name")
args, _ = ap.parse_known_args()
assert args.host == "127.0.0.1"
ours = os.environ.get("MLA_BACKEND_VLLM") in ("1", "force")
if ours and os.environ.get("FAKE_SERVE_FALLBACK"):
    ours = False
    print("WARNING mla_backend: not used for MLA attention (test); falling back", flush=True)
if ours:
    print("INFO mla_backend: using mla_backend.vllm.backend.MlaBackendAttentionBackend",
          flush=True)
else:
    print("INFO Using FLASH_ATTN_MLA attention backend out of potential backends: [].",
          flush=True)


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def _json(self, obj, code=200):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/health":
            self._json({})
        elif self.path == "/v1/models":
            self._json({"object": "list", "data": [{"id": args.served_model_name,
                        "object": "model", "created": 0, "owned_by": "vllm"}]})
        else:
            self._json({"error": "no"}, 404)

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompts = req["prompt"]
        if not isinstance(prompts, list) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        n = req["max_tokens"]
        if ours:
            print("(EngineCore pid=2) INFO mla_backend: decode batch with 1 query token(s) "
                  "per request, 16 heads, 8 split-KV parts", flush=True)
        answers = [[(sum(p) + i) % 1000 if isinstance(p, list) else i for i in range(n)]
                   for p in prompts]
        base = {"id": "cmpl-1", "object": "text_completion", "created": 0,
                "model": args.served_model_name}
        if not req.get("stream"):
            choices = [{"index": i, "text": "" if req.get("return_token_ids") else "x" * n,
                        "token_ids": a if req.get("return_token_ids") else None,
                        "finish_reason": "length", "logprobs": None}
                       for i, a in enumerate(answers)]
            usage = {"prompt_tokens": 1, "completion_tokens": n * len(prompts),
                     "total_tokens": 1 + n * len(prompts)}
            return self._json({**base, "choices": choices, "usage": usage})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for j, tok in enumerate(answers[0]):
            choice = {"index": 0, "text": "", "logprobs": None,
                      "token_ids": [tok] if req.get("return_token_ids") else None,
                      "finish_reason": "length" if j == n - 1 else None}
            self.wfile.write(f"data: {json.dumps({**base, 'choices': [choice]})}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")
        self.close_connection = True


server = ThreadingHTTPServer((args.host, args.port), Handler)
print("INFO Application startup complete.", flush=True)
try:
    server.serve_forever()
except KeyboardInterrupt:
    print("INFO Shutting down", flush=True)
    sys.exit(0)
'''


def _fake_vllm(root: Path) -> Path:
    pkg = root / "vllm" / "entrypoints" / "cli"
    pkg.mkdir(parents=True)
    for folder in (root / "vllm", root / "vllm" / "entrypoints", pkg):
        (folder / "__init__.py").write_text("")
    (pkg / "main.py").write_text(FAKE_SERVE)
    return root


def _run(tmp_path, extra_env=None):
    pytest.importorskip("openai")
    pytest.importorskip("httpx")
    fake = _fake_vllm(tmp_path / "fake")
    out = tmp_path / "serve.json"
    env = dict(__import__("os").environ, PYTHONPATH=str(fake), **(extra_env or {}))
    result = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "serve_deepseek.py"),
            "--out",
            str(out),
            "--log",
            str(tmp_path / "serve.log"),
            "--max-tokens",
            "5",
            "--startup-timeout",
            "30",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    return result, json.loads(out.read_text())


def test_whole_flow_with_stand_in_server(tmp_path):
    result, summary = _run(tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    assert summary["ok"] and summary["dummy"]
    assert summary["env"] == {"MLA_BACKEND_VLLM": "1"}
    two, streamed = summary["completions"]["requests"]
    assert [len(c["token_ids"]) for c in two["choices"]] == [5, 5]
    assert streamed["token_ids"] == two["choices"][0]["token_ids"]
    assert streamed["tokens_shared_with_batched_answer"] == 5
    assert summary["exit_status"] == 0  # stopped by SIGINT, cleanly
    assert "PASS" in result.stdout


def test_fallback_in_the_log_fails_the_run(tmp_path):
    result, summary = _run(tmp_path, {"FAKE_SERVE_FALLBACK": "1"})
    assert result.returncode == 1
    assert summary["checks"]["two completions"]  # the server answered ...
    assert not summary["checks"]["log names our backend"]  # ... but not on our backend
    assert not summary["checks"]["no fallback to vLLM's backend"]
    assert "last lines of the server log" in result.stdout
