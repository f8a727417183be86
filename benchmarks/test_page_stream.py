"""benchmarks/page_stream.cu still compiles against the kernel's headers (nvcc only, no GPU)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NVCC = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"


@pytest.mark.skipif(not Path(NVCC).exists(), reason="needs nvcc (the CUDA toolkit)")
def test_page_stream_compiles(tmp_path):
    cmd = [NVCC, "-c", "-O3", "-std=c++17", "-arch=sm_90a", "-I", str(ROOT / "csrc" / "include"),
           "-I", str(ROOT / "csrc"), str(ROOT / "benchmarks" / "page_stream.cu"),
           "-o", str(tmp_path / "page_stream.o")]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    # The program's kernels made it into the object: the stream kernel and the layout check.
    syms = subprocess.run(["nm", "-C", str(tmp_path / "page_stream.o")], capture_output=True,
                          text=True).stdout  # fmt: skip
    assert "stream_pages" in syms and "check_five_d" in syms
