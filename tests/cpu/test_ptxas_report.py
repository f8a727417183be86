"""ptxas's resource report on every CUDA source of the extension: no spills, no serialised wgmma.

ptxas serialises every wgmma of a kernel (C7510, C7520: "Potential Performance Loss") when a
branch around them, or a warpgroup barrier it inserts, is not provably warp-uniform. The kernel
still computes the right result, so no GPU test notices; on an H200 it ran 1.4-1.6x slower in
every shape (docs/perf.md, v14). Compiling to a cubin needs nvcc, not a GPU (a few seconds per
file), with the flags setup.py builds with.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NVCC = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"

# Messages that cost speed without an error: wgmma serialised, registers spilled to local memory.
SERIALISED = re.compile(r"\((C7510|C7520)\)|wgmma[^\n]*serialized")
SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def setup_py_value(name: str):
    """A top-level list assigned in setup.py (SOURCES, NVCC_FLAGS), without running setup()."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return ast.literal_eval(node.value)
    raise KeyError(name)


def report_problems(text: str) -> list[str]:
    """The lines of a ptxas -v report that say a kernel lost speed."""
    bad = [line for line in text.splitlines() if SERIALISED.search(line)]
    for m in SPILLS.finditer(text):
        if m.group(1) != "0" or m.group(2) != "0":
            bad.append(m.group(0))
    return bad


def test_report_problems_finds_what_it_looks_for():
    serial = (
        "ptxas info    : (C7520) Potential Performance Loss: wgmma.mma_async instructions are "
        "serialized due to program dependence on compiler-inserted WG.AR in divergent path"
    )
    clean = "    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads"
    assert report_problems(serial) == [serial]
    assert report_problems("    8 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads")
    assert report_problems(clean + "\nptxas info    : (C7519) warpgroup.arrive is injected") == []


CUDA_SOURCES = [s for s in setup_py_value("SOURCES") if s.endswith(".cu")]


@pytest.mark.skipif(not Path(NVCC).exists(), reason="needs nvcc (the CUDA toolkit)")
@pytest.mark.parametrize("source", CUDA_SOURCES)
def test_ptxas_report_is_clean(source, tmp_path):
    flags = setup_py_value("NVCC_FLAGS")
    cmd = [NVCC, "-cubin", *flags, "-I", str(ROOT / "csrc" / "include"), "-I", str(ROOT / "csrc"),
           str(ROOT / source), "-o", str(tmp_path / "out.cubin")]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    report = run.stdout + run.stderr
    if source.endswith("decode/launch.cu"):  # the decode kernel: a file without one says nothing
        assert "Used" in report, "no ptxas resource report (is -Xptxas=-v still in NVCC_FLAGS?)"
    assert report_problems(report) == []
