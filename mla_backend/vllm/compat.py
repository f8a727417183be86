"""The one place mla_backend imports vLLM names from, so a vLLM release that moves them means
editing one table. Tested range: vLLM >= 0.26.0, < 0.27 (TESTED_VLLM).

Names resolve lazily on first use (``from mla_backend.vllm.compat import X`` works as usual):
the plugin entry points run in every vLLM process and must not import vLLM's attention stack,
or CUDA-only modules, just to register a class path. The table lists, for each name, the
modules to try in order; add a release's new location in front when one moves.

No monkey-patching: selection uses vLLM's platform-plugin hook (see selection.py).
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import Any

TESTED_VLLM = ((0, 26), (0, 27))  # [min, max) of vLLM's (major, minor)

_LOCATIONS: dict[str, tuple[str, ...]] = {
    # registry of attention backends (AttentionBackendEnum.CUSTOM + register_backend)
    "AttentionBackendEnum": ("vllm.v1.attention.backends.registry",),
    "register_backend": ("vllm.v1.attention.backends.registry",),
    # backend interfaces
    "AttentionCGSupport": ("vllm.v1.attention.backend",),
    "AttentionLayer": ("vllm.v1.attention.backend",),
    "AttentionType": ("vllm.v1.attention.backend",),
    "CommonAttentionMetadata": ("vllm.v1.attention.backend",),
    "split_decodes_and_prefills": ("vllm.v1.attention.backends.utils",),
    "AttentionSelectorConfig": ("vllm.v1.attention.selector",),
    "get_attn_backend": ("vllm.v1.attention.selector",),
    # the MLA classes our backend extends (prefill, chunked context and the MLA layer glue)
    "MLACommonBackend": ("vllm.model_executor.layers.attention.mla_attention",),
    "MLACommonDecodeMetadata": ("vllm.model_executor.layers.attention.mla_attention",),
    "MLACommonImpl": ("vllm.model_executor.layers.attention.mla_attention",),
    "MLACommonMetadata": ("vllm.model_executor.layers.attention.mla_attention",),
    "MLACommonMetadataBuilder": ("vllm.model_executor.layers.attention.mla_attention",),
    "QueryLenSupport": ("vllm.model_executor.layers.attention.mla_attention",),
    # platforms (vllm.platforms.cuda imports vLLM's CUDA extension: GPU hosts only)
    "DeviceCapability": ("vllm.platforms.interface",),
    "Platform": ("vllm.platforms.interface",),
    "PlatformEnum": ("vllm.platforms.interface",),
    "CudaPlatform": ("vllm.platforms.cuda",),
    "cuda_platform_plugin": ("vllm.platforms",),
    # config
    "AttentionConfig": ("vllm.config",),
    "CacheConfig": ("vllm.config",),
    "VllmConfig": ("vllm.config",),
    "get_current_vllm_config": ("vllm.config",),
    "set_current_vllm_config": ("vllm.config",),
    "init_logger": ("vllm.logger",),
}


def __getattr__(name: str) -> Any:
    modules = _LOCATIONS.get(name)
    if modules is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    for module in modules:
        try:
            value = getattr(importlib.import_module(module), name)
        except ModuleNotFoundError as e:
            if e.name is None or not module.startswith(e.name):
                raise  # the module exists but a dependency of it is missing: say so
            continue
        except AttributeError:
            continue
        globals()[name] = value  # resolve once
        return value
    raise ImportError(
        f"vLLM {vllm_version()} has no {name} in {', '.join(modules)}; mla_backend is tested "
        f"with vLLM {_tested_range()} (add the new location to mla_backend/vllm/compat.py)"
    )


def get_logger():
    """Logger for mla_backend's lines in vLLM processes.

    vLLM attaches its handler (format, VLLM_LOGGING_LEVEL) to the ``vllm`` logger tree only, so
    a child of it prints like vLLM's own lines; a logger of our own would drop INFO lines.
    """
    return __getattr__("init_logger")("vllm.mla_backend")


def vllm_version() -> str:
    try:
        return metadata.version("vllm")
    except metadata.PackageNotFoundError:
        return "unknown"


def _tested_range() -> str:
    (lo_major, lo_minor), (hi_major, hi_minor) = TESTED_VLLM
    return f">={lo_major}.{lo_minor}, <{hi_major}.{hi_minor}"


def untested_vllm_warning() -> str | None:
    """A warning line if the installed vLLM is outside TESTED_VLLM, else None."""
    version = vllm_version()
    try:
        major_minor = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return (
            f"cannot parse vLLM version {version!r}; mla_backend is tested with {_tested_range()}"
        )
    if TESTED_VLLM[0] <= major_minor < TESTED_VLLM[1]:
        return None
    return f"vLLM {version} is outside the tested range {_tested_range()}"
