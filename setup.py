"""Build the one CUDA extension, mla_backend._C: sm_90a only, Python limited API (abi3, cp310).

Metadata lives in pyproject.toml. MLA_BACKEND_SKIP_EXT=1 installs the pure-Python package.
"""

import importlib.util
import os
import shutil
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent.resolve()
BUILD_INFO = ROOT / "mla_backend" / "_build_info.py"

SOURCES = [
    "csrc/torch_bindings.cpp",
    "csrc/ops/decode.cpp",
    "csrc/ops/metadata.cpp",
    "csrc/sm90/launch_utils.cu",
    "csrc/sm90/decode/launch.cu",
    "csrc/smxx/combine.cu",
    "csrc/smxx/metadata.cu",
]

NVCC_FLAGS = [
    # wgmma and TMA need the arch-specific "a" target; nothing else is built.
    "-gencode=arch=compute_90a,code=sm_90a",
    "-O3",
    "-DNDEBUG",
    "-lineinfo",
    "--expt-relaxed-constexpr",
    "-std=c++17",
    # Resource report per kernel, with spills and local memory flagged.
    "-Xptxas=-v,-warn-spills,-warn-lmem-usage",
    # torch adds these -D flags to every nvcc call; the kernels use the bf16/half operators.
    "-U__CUDA_NO_HALF_OPERATORS__",
    "-U__CUDA_NO_HALF_CONVERSIONS__",
    "-U__CUDA_NO_HALF2_OPERATORS__",
    "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
]
# MLA_TRACE=1: a trace build, whose decode kernel records per-CTA event clocks when
# MLA_TRACE_FILE is set at run time (benchmarks/trace_decode.py; not for production).
TRACE_BUILD = os.environ.get("MLA_TRACE", "") == "1"
if TRACE_BUILD:
    NVCC_FLAGS.append("-DMLA_TRACE_BUILD")

# The same value torch's BuildExtension defines for py_limited_api extensions, spelled the same
# way so the two definitions do not clash.
PY_LIMITED_API = "0x030A0000"  # CPython 3.10


def _string_define(name: str, value: str) -> str:
    # BuildExtension shell-quotes each flag for ninja's /bin/sh, so plain quotes reach the
    # compiler and the macro expands to a string literal.
    return f'-D{name}="{value}"'


def _find_ninja() -> None:
    # pip does not put an unactivated venv's bin/ on PATH, where `pip install ninja` puts it.
    if shutil.which("ninja") is None:
        here = os.path.dirname(sys.executable)
        if os.path.exists(os.path.join(here, "ninja")):
            os.environ["PATH"] = here + os.pathsep + os.environ.get("PATH", "")
        else:
            raise RuntimeError("building mla_backend._C needs ninja: pip install ninja")


def _find_cuda_home() -> None:
    # torch derives CUDA_HOME from the first nvcc on PATH, which may be a wrapper outside the
    # toolkit (then libcudart is not found at link time); prefer the standard install.
    default = Path("/usr/local/cuda")
    if not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")):
        if (default / "bin" / "nvcc").exists():
            os.environ["CUDA_HOME"] = str(default)


def _cuda_library_headers(cuda_home: str, cuda_major: str) -> list[str]:
    """Flags that find the cuBLAS/cuSPARSE/cuSOLVER headers ATen's CUDA headers include.

    A toolkit with only the compiler lacks them; the nvidia-* wheels torch depends on ship them.
    -idirafter keeps the toolkit's own runtime headers first.
    """
    if (Path(cuda_home) / "include" / "cusparse.h").exists():
        return []
    spec = importlib.util.find_spec("nvidia")
    flags = []
    for location in spec.submodule_search_locations if spec else []:
        for sub in (f"cu{cuda_major}", "cusparse", "cublas", "cusolver"):
            include = Path(location) / sub / "include"
            if include.is_dir():
                flags += ["-idirafter", str(include)]
    return flags


def _source_sha() -> str:
    """The commit the extension is built from (12 hex digits), with "-dirty" when csrc/ or this
    file differ from it; "unknown" outside a git checkout. Benchmarks record it, so a CSV names
    the build that ran even when the .so was carried to another machine or another tree."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=20, check=True
        ).stdout.strip()

    try:
        sha = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "csrc", "setup.py")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def _write_build_info(torch_version: str, cuda_version: str) -> None:
    BUILD_INFO.write_text(
        '"""Written by setup.py: the torch build the extension was compiled against."""\n\n'
        f"TORCH_VERSION = {torch_version!r}\n"
        f"CUDA_VERSION = {cuda_version!r}\n"
        f"TRACE_BUILD = {TRACE_BUILD!r}\n"
        f"SOURCE_SHA = {_source_sha()!r}\n"
    )


def _extension_kwargs() -> dict:
    if os.environ.get("MLA_BACKEND_SKIP_EXT", "0") == "1":
        return {}

    _find_cuda_home()
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension

    if torch.version.cuda is None:
        raise RuntimeError(
            f"torch {torch.__version__} is a CPU build; mla_backend._C needs a CUDA build of "
            "torch (or set MLA_BACKEND_SKIP_EXT=1 for the pure-Python package)"
        )
    _find_ninja()
    _write_build_info(torch.__version__, torch.version.cuda)

    versions = [
        _string_define("MLA_TORCH_VERSION", torch.__version__),
        _string_define("MLA_CUDA_VERSION", torch.version.cuda),
    ]
    ext = CUDAExtension(
        name="mla_backend._C",
        sources=SOURCES,
        include_dirs=[str(ROOT / "csrc" / "include"), str(ROOT / "csrc")],
        extra_compile_args={
            "cxx": [
                "-O3",
                "-std=c++17",
                f"-DPy_LIMITED_API={PY_LIMITED_API}",
                *versions,
                *_cuda_library_headers(CUDA_HOME, torch.version.cuda.split(".")[0]),
            ],
            "nvcc": [*NVCC_FLAGS, *versions],
        },
        py_limited_api=True,
    )
    return {
        "ext_modules": [ext],
        # Ninja is what makes the build parallel; it honours MAX_JOBS.
        "cmdclass": {"build_ext": BuildExtension.with_options(use_ninja=True)},
        "options": {"bdist_wheel": {"py_limited_api": "cp310"}},
    }


setup(**_extension_kwargs())
