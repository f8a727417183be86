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


def test_step_profile():
    """Busy time is the union of the GPU events (overlaps counted once), the steps come from the
    most frequent attention kernel's calls per layer, CPU events and other kernels are left out
    of the attention time."""
    attn = "void mla::sm90::decode::decode_kernel<false>(mla::DecodeParams)"
    comb = "void mla::(anonymous namespace)::combine_seq_kernel<4>(mla::DecodeParams)"
    ev = [{"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 1e6}]
    t = 1000.0
    for _ in range(3):  # 3 steps x 2 layers
        for _ in range(2):
            ev.append({"ph": "X", "cat": "kernel", "name": attn, "ts": t, "dur": 100})
            # a GEMM on another stream, half of it under the attention kernel
            ev.append({"ph": "X", "cat": "kernel", "name": "gemm", "ts": t + 50, "dur": 100})
            ev.append({"ph": "X", "cat": "kernel", "name": comb, "ts": t + 150, "dur": 10})
            ev.append({"ph": "X", "cat": "kernel", "name": "concat_and_cache_mla_kernel",
                       "ts": t + 160, "dur": 10})  # fmt: skip
            t += 200
        t += 600  # idle
    ev.append({"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy HtoD", "ts": t, "dur": 20})
    p = cb.step_profile(ev, layers=2)
    assert p["steps"] == 3 and p["gpu_events"] == 25
    assert p["attention_kernels"] == sorted([attn, comb])
    assert p["attention_ms"] == pytest.approx(2 * 110 / 1e3)
    assert p["attention_calls"] == 4
    assert p["busy_ms"] == pytest.approx((2 * 170 + 20 / 3) / 1e3)  # 0..170 of each layer
    assert p["kernel_ms"] == pytest.approx((2 * 220 + 20 / 3) / 1e3)
    assert p["window_ms"] == pytest.approx((t + 20 - 1000) / 3 / 1e3)
    assert p["top"][0]["name"] == attn and p["top"][0]["calls"] == 2
    # no attention kernel: no step count, no per-step numbers
    other = [e for e in ev if "mla::" not in e["name"]]
    assert "steps" not in cb.step_profile(other, layers=2)
    assert cb.step_profile([], layers=2) == {"gpu_events": 0}
    for name in ("flash_fwd_splitkv_mla_kernel", "void flash::FlashAttnFwdCombine<...>",
                 "_fwd_grouped_kernel_stage1"):  # fmt: skip
        assert cb.ATTENTION_KERNELS.search(name)
    for name in ("concat_and_cache_mla_kernel", "nvjet_tst_128x64", "rms_norm_kernel"):
        assert not cb.ATTENTION_KERNELS.search(name)
    assert cb.profile_steps(64) == 32 and cb.profile_steps(9) == 6 and cb.profile_steps(2) == 1


def test_profiler_config_is_vllms(tmp_path):
    """--profile's profiler config is one vLLM 0.26 accepts, with the fields the child relies
    on (a typo in a key would be an error here, not on the GPU host)."""
    config = pytest.importorskip("vllm.config.profiler")
    want = cb.profiler_config(tmp_path / "trace", max_tokens=256)
    got = config.ProfilerConfig(**want)
    assert got.profiler == "torch" and got.torch_profiler_dir == str(tmp_path / "trace")
    assert got.delay_iterations == cb.PROFILE_SKIP_STEPS and got.max_iterations == 32
    assert got.ignore_frontend and not got.torch_profiler_with_stack
    with pytest.raises((TypeError, ValueError)):  # pydantic's ValidationError is a ValueError
        config.ProfilerConfig(**want, no_such_field=1)


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
import gzip
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

STEP_S = {"default": 0.004, "flashmla": 0.003, "ours": 0.002}
# the decode attention kernels of a step, by backend: (name, share of the step per layer)
KERNELS = {
    "default": [("void cutlass::device_kernel<flash::enable_sm90_or_later<flash::FlashAttnFwdSm90"
                 "<flash::CollectiveMainloopFwdSm90<2, 1, 64> > > >(...)", 0.5)],
    "flashmla": [("flash_fwd_splitkv_mla_kernel<...>", 0.4), ("flash_fwd_mla_combine_kernel", 0.1)],
    "ours": [("void mla::sm90::decode::decode_kernel<false>(mla::DecodeParams, ...)", 0.3),
             ("void mla::(anonymous namespace)::combine_rows_kernel<1>(mla::DecodeParams)", 0.1)],
}


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
        self.profiler = kw.get("profiler_config")
        self.layers = json.loads((Path(model) / "config.json").read_text())["num_hidden_layers"]
        self.profiling = False
        self.events = []

    def start_profile(self):
        assert self.profiler and self.profiler["profiler"] == "torch"
        self.profiling = True

    def stop_profile(self):
        """Writes what vLLM's torch profiler would: one trace of the decode steps after the
        delay, at most max_iterations of them; per layer the backend's attention kernels, a
        GEMM and a cache write (not attention); kernels of one step back to back."""
        self.profiling = False
        folder = Path(self.profiler["torch_profiler_dir"])
        folder.mkdir(parents=True, exist_ok=True)
        trace = {"traceEvents": self.events + [{"ph": "X", "cat": "cpu_op", "name": "aten::mm",
                                                "ts": 0, "dur": 5}]}
        with gzip.open(folder / "rank0.123.pt.trace.json.gz", "wt") as f:
            json.dump(trace, f)

    def generate(self, prompts, params, use_tqdm=False):
        n = params.max_tokens
        step = STEP_S[self.kind]
        for p in prompts:
            key = tuple(p["prompt_token_ids"])
            self.queries += len(key)
            self.hits += len(key) - 1 if key in self.seen else 0
            self.seen.add(key)
        time.sleep(0.01 + step * (n - 1))
        if self.profiling:
            steps = min(n - 1 - (self.profiler["delay_iterations"] - 1),
                        self.profiler["max_iterations"])
            layer_us = step * 1e6 / self.layers
            t = 0.0
            for _ in range(steps):
                for _ in range(self.layers):
                    attention = sum(share for _, share in KERNELS[self.kind])
                    kernels = KERNELS[self.kind] + [("nvjet_tst_gemm", 0.9 - attention),
                                                    ("concat_and_cache_mla_kernel", 0.1)]
                    for name, share in kernels:
                        self.events.append({"ph": "X", "cat": "kernel", "name": name,
                                            "ts": t, "dur": share * layer_us})
                        t += share * layer_us
                t += 0.05 * step * 1e6  # the GPU idle between steps
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


def test_profile_with_stand_in_vllm(tmp_path):
    """--profile: each process profiles one more generate() after its timed runs through
    vLLM's profiler config (delay, step limit, trace folder) and reports GPU and attention time
    per step from the trace; the row's attention ratio is against the default's."""
    result, out = run_with_stand_in(
        tmp_path, "--heads", "16", *SMALL, "--backends", "default,ours", "--profile"
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    summary = json.loads((out / "compare_backends.json").read_text())
    assert summary["config"]["profile"] is True
    rows = {r["backend"]: r for r in summary["rows"]}
    for b, step_ms, attn_share in (("default", 4.0, 0.5), ("ours", 2.0, 0.4)):
        r = rows[b]
        assert r["ok"], r
        prof = summary["runs"][f"{b}/h16"]["profile"]
        assert prof["steps"] == cb.profile_steps(9), prof
        assert r["attention_ms"] == pytest.approx(attn_share * step_ms)
        assert r["gpu_busy_ms"] == pytest.approx(1.0 * step_ms)
        assert r["gpu_busy_share"] == pytest.approx(1.0)
        assert prof["window_ms"] == pytest.approx(1.05 * step_ms, rel=0.01)
        assert len(summary["runs"][f"{b}/h16"]["itl_ms_runs"]) == 2
    assert rows["ours"]["attention_vs_default"] == pytest.approx(2.0 / 0.8)
    assert "profile: GPU busy 2.000 ms/step (1.00 of the ITL)" in result.stdout
    assert "(2.50x the default's)" in result.stdout


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
