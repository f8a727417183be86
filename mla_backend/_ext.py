"""Loads the compiled extension mla_backend._C lazily, and only into the torch it was built for.

A .so built against another torch (or CUDA) can crash the process on load, so the versions that
setup.py recorded in _build_info.py are compared with the running torch first.
"""

from __future__ import annotations

import importlib.util

import torch

REBUILD = "pip install --no-build-isolation -e ."

_loaded: bool | None = None  # None: not tried yet
_reason: str | None = None


def _built_against() -> tuple[str, str] | None:
    """(torch version, CUDA version) recorded by setup.py, or None if nothing was recorded."""
    try:
        from mla_backend import _build_info
    except ImportError:
        return None
    return _build_info.TORCH_VERSION, _build_info.CUDA_VERSION


def _extension_path() -> str | None:
    """Path of the compiled extension, or None if it was not built."""
    spec = importlib.util.find_spec("mla_backend._C")
    return None if spec is None else spec.origin


def _running() -> tuple[str, str]:
    return torch.__version__, str(torch.version.cuda)


def _why_not_loadable() -> str | None:
    path = _extension_path()
    if path is None:
        return f"extension not built; run `{REBUILD}`"
    built = _built_against()
    if built is None:
        return f"mla_backend._C has no build record (mla_backend/_build_info.py); run `{REBUILD}`"
    running = _running()
    if built != running:
        return (
            f"mla_backend was built against torch {built[0]} / CUDA {built[1]} but torch "
            f"{running[0]} / CUDA {running[1]} is installed; rebuild with `{REBUILD}`"
        )
    try:
        # The library registers its ops with the dispatcher when loaded; it has no Python API.
        torch.ops.load_library(path)
    except OSError as e:
        return f"loading {path} failed: {e}"
    expected = f"torch={running[0]};cuda={running[1]}"
    try:
        reported = torch.ops.mla_backend.build_info()
    except (AttributeError, RuntimeError) as e:
        return f"mla_backend._C loaded but its build_info op failed: {e}"
    if reported != expected:
        return f"mla_backend._C reports {reported!r}, not {expected!r}; rebuild with `{REBUILD}`"
    return None


def load() -> bool:
    """Load the extension once; True if its ops are registered. Never raises."""
    global _loaded, _reason
    if _loaded is None:
        _reason = _why_not_loadable()
        _loaded = _reason is None
    return _loaded


def unavailable_reason() -> str | None:
    """Why the extension cannot be used, or None when it is loaded."""
    load()
    return _reason


def require() -> None:
    """Raise RuntimeError with the reason unless the extension is loaded."""
    if not load():
        raise RuntimeError(_reason)
