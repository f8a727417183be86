"""vLLM's two entry points into mla_backend, and the MLA_BACKEND_VLLM switch.

- `register` (group ``vllm.general_plugins``): registers our backend as vLLM's CUSTOM attention
  backend, so ``--attention-backend CUSTOM`` selects it.
- `platform_plugin` (group ``vllm.platform_plugins``): with MLA_BACKEND_VLLM set on a CUDA host,
  names a subclass of vLLM's CUDA platform whose backend choice gives MLA layers our backend
  (selection.py); unset, it returns None and vLLM picks its own platform as before.

vLLM calls both in every process, often several times: they import nothing heavy, never touch
CUDA, and are idempotent.
"""

from __future__ import annotations

import enum
import os

ENV_VAR = "MLA_BACKEND_VLLM"
BACKEND_QUALNAME = "mla_backend.vllm.backend.MlaBackendAttentionBackend"
PLATFORM_QUALNAME = "mla_backend.vllm.platform.MlaBackendCudaPlatform"

_ON = ("1", "true", "yes", "on")
_OFF = ("", "0", "false", "no", "off")


class Mode(enum.Enum):
    OFF = "off"  # vLLM chooses as it always does
    ON = "on"  # MLA layers use mla_backend where it can run; otherwise vLLM's default
    FORCE = "force"  # MLA layers use mla_backend, or engine start-up fails with the reason


def setting() -> str:
    """MLA_BACKEND_VLLM as the user wrote it, for messages (``MLA_BACKEND_VLLM=1``)."""
    return f"{ENV_VAR}={os.environ.get(ENV_VAR, '')}"


def selection_mode() -> Mode:
    """MLA_BACKEND_VLLM: unset/0 -> OFF, 1 -> ON, force -> FORCE; raises ValueError otherwise."""
    raw = os.environ.get(ENV_VAR, "").strip().lower()
    if raw in _OFF:
        return Mode.OFF
    if raw in _ON:
        return Mode.ON
    if raw == "force":
        return Mode.FORCE
    raise ValueError(f"{setting()} is not one of 0, 1 or force")


def register() -> None:
    """Register mla_backend as vLLM's CUSTOM attention backend (once; keeps another's)."""
    from mla_backend.vllm import compat

    backends, register_backend = compat.AttentionBackendEnum, compat.register_backend
    custom = backends.CUSTOM
    if custom.is_overridden():
        if custom.get_path() != BACKEND_QUALNAME:
            compat.get_logger().warning(
                "mla_backend: vLLM's CUSTOM attention backend is already %s; not registering "
                "%s (MLA_BACKEND_VLLM selection still works)",
                custom.get_path(),
                BACKEND_QUALNAME,
            )
        return
    register_backend(custom, BACKEND_QUALNAME)
    warning = compat.untested_vllm_warning()
    if warning:
        compat.get_logger().warning("mla_backend: %s", warning)


def platform_plugin() -> str | None:
    """Our CUDA platform's qualname when MLA_BACKEND_VLLM asks for it on a CUDA host, else None.

    vLLM swallows exceptions raised here, so problems are logged instead.
    """
    from mla_backend.vllm import compat

    try:
        mode = selection_mode()
    except ValueError as e:
        compat.get_logger().error("mla_backend: %s; not selecting mla_backend", e)
        return None
    if mode is Mode.OFF:
        return None
    if compat.cuda_platform_plugin() is None:
        log = compat.get_logger().error if mode is Mode.FORCE else compat.get_logger().info
        log("mla_backend: %s but vLLM found no CUDA GPU; not selecting mla_backend", setting())
        return None
    return PLATFORM_QUALNAME
