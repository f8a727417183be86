"""Backend choice with MLA_BACKEND_VLLM: MLA layers get mla_backend, everything else is vLLM's.

`MlaBackendSelection` goes in front of a vLLM platform class (platform.py) and overrides the
platform's public backend hook, ``get_attn_backend_cls``. vLLM's selector calls it for every
attention layer with the layer's requirements; we answer for MLA layers when the switch is on
and the user named no backend, and hand everything else to the platform unchanged.

Why a platform plugin: vLLM 0.26 has no hook for a plugin to join automatic backend selection
(the priority lists are fixed per platform), and reading the switch in a general plugin would
mean patching the selector. An upstream hook that lets a plugin rank a registered backend would
make platform.py unnecessary.
"""

from __future__ import annotations

from typing import Any

from mla_backend.vllm import compat
from mla_backend.vllm.registration import BACKEND_QUALNAME, Mode, selection_mode, setting

_announced = False  # one selection line per process


def _announce(message: str, *args: Any, warn: bool = False) -> None:
    global _announced
    if not _announced:
        _announced = True
        logger = compat.get_logger()
        (logger.warning if warn else logger.info)(message, *args)


def _config_hint(reason: str, config: Any, capability: Any) -> str:
    """vLLM's terse reasons, with the value that failed and what we need."""
    hints = {
        "dtype not supported": f"model dtype {config.dtype}; needs torch.bfloat16",
        "kv_cache_dtype not supported": f"kv cache dtype {config.kv_cache_dtype}; needs auto "
        "or bfloat16",
        "block_size not supported": f"--block-size {config.block_size}; needs 64 (or leave it "
        "unset and vLLM picks 64)",
        "head_size not supported": f"head size {config.head_size}; needs 576 (kv_lora_rank 512 "
        "+ rope 64)",
        "compute capability not supported": f"compute capability {capability}; needs 9.x",
    }
    return f"{reason} ({hints[reason]})" if reason in hints else reason


def unsupported_reasons(capability: Any, config: Any, num_heads: int | None) -> list[str]:
    """Why mla_backend cannot serve a layer with this selector config (empty: it can)."""
    from mla_backend import ops
    from mla_backend.vllm.backend import MlaBackendAttentionBackend

    reasons = [
        _config_hint(r, config, capability)
        for r in MlaBackendAttentionBackend.validate_configuration(
            device_capability=capability, **config._asdict()
        )
    ]
    if num_heads is not None and num_heads > ops.MAX_HEADS:
        reasons.append(
            f"{num_heads} query heads per rank; the kernel takes at most {ops.MAX_HEADS}"
        )
    vllm_config = compat.get_current_vllm_config()
    if vllm_config.parallel_config.decode_context_parallel_size > 1:
        reasons.append("decode context parallelism is not supported")
    spec = vllm_config.speculative_config
    if spec is not None and spec.num_speculative_tokens:
        per_draft = 2 if getattr(spec, "parallel_drafting", False) else 1
        max_s_q = 1 + per_draft * spec.num_speculative_tokens
        if max_s_q > ops.MAX_S_Q:
            reasons.append(
                f"speculative decoding makes {max_s_q} query tokens per request; the "
                f"kernel takes at most {ops.MAX_S_Q}"
            )
    return reasons


class MlaBackendSelection:
    """Mixin for a vLLM platform class: MLA layers get mla_backend when MLA_BACKEND_VLLM asks."""

    @classmethod
    def get_attn_backend_cls(
        cls, selected_backend: Any, attn_selector_config: Any, num_heads: int | None = None
    ) -> str:
        vllm_choice = super().get_attn_backend_cls  # type: ignore[misc]
        mode = selection_mode()
        if mode is Mode.OFF or not attn_selector_config.use_mla:
            return vllm_choice(selected_backend, attn_selector_config, num_heads)
        if selected_backend is not None:
            # The user named a backend: theirs wins (CUSTOM is ours, validated by vLLM).
            custom = compat.AttentionBackendEnum.CUSTOM
            if mode is Mode.FORCE and selected_backend is not custom:
                raise ValueError(
                    f"{setting()} conflicts with --attention-backend {selected_backend.name}"
                )
            if selected_backend is not custom:
                _announce(
                    "mla_backend: %s ignored for MLA layers: --attention-backend %s was given",
                    setting(),
                    selected_backend.name,
                )
            return vllm_choice(selected_backend, attn_selector_config, num_heads)

        try:
            capability = cls.get_device_capability()
            reasons = unsupported_reasons(capability, attn_selector_config, num_heads)
        except ImportError as e:  # e.g. a vLLM release moved a class that compat.py names
            reasons = [f"mla_backend's vLLM backend does not import: {e}"]
        if reasons:
            why = "; ".join(reasons)
            if mode is Mode.FORCE:
                raise ValueError(f"{setting()} but mla_backend cannot run this MLA layer: {why}")
            _announce(
                "mla_backend: not used for MLA attention (%s); falling back to vLLM's "
                "default MLA backend",
                why,
                warn=True,
            )
            return vllm_choice(selected_backend, attn_selector_config, num_heads)
        _announce(
            "mla_backend: using %s for MLA attention (%s): decode on mla_backend kernels, "
            "prefill on vLLM's MLA prefill path",
            BACKEND_QUALNAME,
            setting(),
        )
        return BACKEND_QUALNAME
