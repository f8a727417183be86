"""examples/compare_backends.py on CPU: its pure helpers, and its whole parent/child flow with a
stand-in `vllm` package (an LLM class that logs what vLLM would and sleeps instead of
decoding). The real run needs an H200; this checks the plumbing: children, go signals,
deadlines, log evidence, timing arithmetic, JSON and table."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
sys.path.insert(0, str(EXAMPLES))

import compare_backends as cb  # noqa: E402


def test_parse_prompt_len():
    assert cb.parse_prompt_len("6144") == (6144, 6144)
    assert cb.parse_prompt_len("4096-8192") == (4096, 8192)
    for bad in ("0", "9-3", "x"):
        with pytest.raises(ValueError):
            cb.parse_prompt_len(bad)


def test_backend_setup():
    assert cb.backend_setup("default") == (None, None)
    assert cb.backend_setup("ours") == ("1", None)
    assert cb.backend_setup("flashmla") == (None, "FLASHMLA")
    assert cb.backend_setup("triton_mla") == (None, "TRITON_MLA")


def test_model_and_prompts():
    max_len = cb.max_model_len(8192, 64)
    assert max_len % 1024 == 0 and max_len >= 8192 + 64
    config = cb.bench_model_config(128, 16, max_len)
    assert config["num_hidden_layers"] == 16
    assert config["first_k_dense_replace"] == 16  # all dense
    assert config["num_attention_heads"] == 128
    assert config["kv_lora_rank"] == 512 and config["qk_rope_head_dim"] == 64
    assert config["max_position_embeddings"] == max_len
    prompts = cb.make_prompts(8, 100, 200)
    assert len(prompts) == 8 and all(100 <= len(p) <= 200 for p in prompts)
    assert all(2 <= t < cb.VOCAB for p in prompts for t in p)
    assert prompts == cb.make_prompts(8, 100, 200)  # seeded
    assert len({tuple(p[: cb.PAGE]) for p in prompts}) == 8


def test_decode_stats():
    s = cb.decode_stats([0.10, 0.12, 0.11], [0.74, 0.75, 0.76], max_tokens=65, batch=32)
    assert s["decode_steps"] == 64
    assert s["ms_per_step"] == pytest.approx((0.75 - 0.11) / 64 * 1e3)
    assert s["tokens_per_s"] == pytest.approx(32 * 64 / 0.64)
    lo, hi = s["ms_per_step_range"]
    assert lo <= s["ms_per_step"] <= hi
    assert cb.decode_stats([0.5], [0.4], 8, 4)["ms_per_step"] is None


def test_child_deadline():
    assert cb.child_deadline(1000.0, 3, 2) == 1000.0
    assert cb.child_deadline(1000.0, 3, 0) == 1000.0 - 2 * cb.CHILD_RESERVE_S


def test_log_parsing_and_checks():
    log = textwrap.dedent(
        """\
        CMP-BEGIN default 16
        INFO Using FLASH_ATTN_MLA attention backend out of potential backends: ['FLASHMLA'].
        INFO [kv_cache_utils.py:2177] GPU KV cache size: 2,345,678 tokens
        INFO Graph capturing finished in 3 secs
        CMP-END default 16 ok
        CMP-BEGIN flashmla 16
        \x1b[32mINFO\x1b[0m [cuda.py:422] Using AttentionBackendEnum.FLASHMLA backend.
        INFO Graph capturing finished in 3 secs
        CMP-END flashmla 16 ok
        CMP-BEGIN ours 16
        INFO mla_backend: using mla_backend.vllm.backend.MlaBackendAttentionBackend for MLA
        INFO Graph capturing finished in 3 secs
        INFO mla_backend: decode batch with 1 query token(s) per request, 16 heads, 66 parts
        CMP-END ours 16 ok
        """
    )
    ev = cb.parse_log(log)
    assert ev[("default", 16)]["vllm_choice"] == "FLASH_ATTN_MLA"
    assert ev[("default", 16)]["kv_cache_tokens"] == 2345678
    assert ev[("flashmla", 16)]["vllm_choice"] == "FLASHMLA"
    ok = {"status": "ok", "counters": {"vllm:num_preemptions": 0.0}}
    for b in ("default", "flashmla", "ours"):
        checks = cb.checks_for(b, ok, ev[(b, 16)])
        assert all(checks.values()), (b, checks)
    # our backend fell back: the run must not count
    bad = cb.checks_for("ours", ok, ev[("default", 16)])
    assert not bad["log names our backend"] and not bad["decode ran on our kernel"]
    assert not cb.checks_for("default", ok, ev[("ours", 16)])["not our backend"]
    preempted = dict(ok, counters={"vllm:num_preemptions": 3.0})
    assert not cb.checks_for("default", preempted, ev[("default", 16)])["no preemption"]


FAKE_VLLM = '''
"""Stand-in for vLLM's offline API: logs like vLLM, sleeps like a decode step."""
import os
import time
from types import SimpleNamespace

STEP_S = {"default": 0.004, "flashmla": 0.003, "ours": 0.002}


class SamplingParams:
    def __init__(self, max_tokens=16, **kw):
        self.max_tokens = max_tokens


class LLM:
    def __init__(self, model, **kw):
        ours = os.environ.get("MLA_BACKEND_VLLM") == "1"
        asked = (kw.get("attention_config") or {}).get("backend")
        if ours:
            print("INFO mla_backend: using mla_backend.vllm.backend.MlaBackendAttentionBackend")
            self.kind = "ours"
        elif asked:
            print(f"INFO Using AttentionBackendEnum.{asked} backend.")
            self.kind = asked.lower()
        else:
            print("INFO Using FLASH_ATTN_MLA attention backend out of potential backends: [].")
            self.kind = "default"
        print("INFO GPU KV cache size: 1,000,000 tokens")
        print("INFO Graph capturing finished in 1 secs", flush=True)
        self.n_itl = self.s_itl = self.queries = self.hits = 0.0
        self.seen = set()
        self.llm_engine = SimpleNamespace(engine_core=SimpleNamespace(shutdown=lambda: None))

    def generate(self, prompts, params, use_tqdm=False):
        n = params.max_tokens
        step = STEP_S[self.kind]
        for p in prompts:
            key = tuple(p["prompt_token_ids"])
            self.queries += len(key)
            self.hits += len(key) - 1 if key in self.seen else 0
            self.seen.add(key)
        time.sleep(0.01 + step * (n - 1))
        if n > 1 and self.kind == "ours":
            print("INFO mla_backend: decode batch with 1 query token(s) per request", flush=True)
        self.n_itl += len(prompts) * (n - 1)
        self.s_itl += len(prompts) * (n - 1) * step
        out = SimpleNamespace(token_ids=list(range(n)))
        return [SimpleNamespace(outputs=[out]) for _ in prompts]

    def get_metrics(self):
        return [
            SimpleNamespace(name="vllm:inter_token_latency_seconds", sum=self.s_itl,
                            count=self.n_itl),
            SimpleNamespace(name="vllm:num_preemptions", value=0.0),
            SimpleNamespace(name="vllm:prefix_cache_queries", value=self.queries),
            SimpleNamespace(name="vllm:prefix_cache_hits", value=self.hits),
        ]
'''


SMALL = ["--layers", "2", "--batch", "4", "--prompt-len", "100-200", "--max-tokens", "9",
         "--repeats", "2"]  # fmt: skip


def run_with_stand_in(tmp_path, *flags: str, timeout: float = 120):
    """compare_backends.py with the stand-in vLLM first on the path; returns (result, out)."""
    fake = tmp_path / "fake"
    (fake / "vllm").mkdir(parents=True)
    (fake / "vllm" / "__init__.py").write_text(FAKE_VLLM)
    out = tmp_path / "out"
    env = {k: v for k, v in __import__("os").environ.items() if k != "MLA_BACKEND_VLLM"}
    env["PYTHONPATH"] = str(fake)
    cmd = [sys.executable, str(EXAMPLES / "compare_backends.py"), "--out", str(out)]
    cmd += [*flags, "--model-root", str(tmp_path / "models")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    return result, out


def test_whole_flow_with_stand_in_vllm(tmp_path):
    result, out = run_with_stand_in(tmp_path, "--heads", "16,128", *SMALL)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    summary = json.loads((out / "compare_backends.json").read_text())
    rows = {(r["backend"], r["heads"]): r for r in summary["rows"]}
    assert set(rows) == {(b, h) for b in ("default", "flashmla", "ours") for h in (16, 128)}
    for (b, _), r in rows.items():
        assert r["ok"], r
        step_ms = {"default": 4.0, "flashmla": 3.0, "ours": 2.0}[b]
        assert r["ms_per_step"] == pytest.approx(step_ms, rel=0.5, abs=1.5)
        assert r["itl_ms"] == pytest.approx(step_ms)
    assert rows[("default", 16)]["vllm_backend"] == "FLASH_ATTN_MLA"
    assert rows[("flashmla", 128)]["vllm_backend"] == "FLASHMLA"
    assert rows[("ours", 16)]["speedup_vs_default"] > 1.0
    assert (out / "compare_backends.log").exists()
    assert "ms/step" in result.stdout and "ours" in result.stdout


def test_rounds_alternate_processes_and_take_medians(tmp_path):
    """--rounds 2: each backend in two processes, the second round in reverse order; a row's
    numbers are the median over its processes, each process's numbers are kept beside it."""
    result, out = run_with_stand_in(
        tmp_path, "--heads", "16", *SMALL, "--rounds", "2", "--backends", "default,ours"
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "warning: --deadline" not in result.stdout
    starts = [line.split("==")[1].split(":")[0].strip() for line in result.stdout.splitlines()
              if line.startswith("== ")]  # fmt: skip
    assert starts == [
        "default (round 1 of 2)", "ours (round 1 of 2)", "ours (round 2 of 2)",
        "default (round 2 of 2)",
    ]  # fmt: skip
    summary = json.loads((out / "compare_backends.json").read_text())
    assert summary["config"]["rounds"] == 2
    assert set(summary["runs"]) == {f"{b}/h16/r{i}" for b in ("default", "ours") for i in (0, 1)}
    rows = {r["backend"]: r for r in summary["rows"]}
    for b, step_ms in (("default", 4.0), ("ours", 2.0)):
        r = rows[b]
        assert r["ok"], r
        assert len(r["rounds"]) == 2 and all(x["status"] == "ok" for x in r["rounds"])
        assert r["itl_ms"] == pytest.approx(step_ms)
        per = [x["ms_per_step"] for x in r["rounds"]]
        assert r["ms_per_step"] == pytest.approx(sum(per) / 2)  # the median of two
        assert r["ms_per_step_range"] == [min(per), max(per)]
    assert rows["ours"]["itl_vs_default"] == pytest.approx(2.0)
    assert all(x["itl_vs_default"] == pytest.approx(2.0) for x in rows["ours"]["rounds"])
    assert "per process: ms/step" in result.stdout


def test_deadline_skips_everything(tmp_path):
    """With no time, every backend is skipped (not run), the report still comes out."""
    result, out = run_with_stand_in(tmp_path, "--deadline", "5", timeout=60)
    assert result.returncode == 1
    summary = json.loads((out / "compare_backends.json").read_text())
    assert {r["status"] for r in summary["rows"]} == {"not run"}
    assert "skipped" in result.stdout
    assert "warning: --deadline 5s" in result.stdout


def test_help():
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "compare_backends.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and "--deadline" in result.stdout
