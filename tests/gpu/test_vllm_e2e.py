"""vLLM end to end on the GPU (examples/vllm_e2e.py): our backend, selected by MLA_BACKEND_VLLM,
against vLLM's default MLA backend. Minutes long: marked slow; needs vLLM and an sm_90 GPU."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "vllm_e2e.py"

pytestmark = [pytest.mark.gpu, pytest.mark.slow, pytest.mark.vllm]


@pytest.mark.parametrize("variants", ["eager-h16,graph-h16,spec-eager-h16,spec-graph-h16"])
def test_vllm_e2e(tmp_path, variants):
    out = tmp_path / "e2e.json"
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--variants",
            variants,
            "--out",
            str(out),
            "--deadline",
            "480",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = result.stdout[-6000:]
    assert out.exists(), report + result.stderr[-3000:]
    summary = json.loads(out.read_text())
    failed = {
        r["variant"]: [k for k, ok in r["checks"].items() if not ok]
        for r in summary["variants"]
        if not r["ok"]
    }
    assert result.returncode == 0 and not failed, f"{failed}\n{report}"
