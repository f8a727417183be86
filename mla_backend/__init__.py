"""Fast paged MLA decode kernels for vLLM on NVIDIA Hopper (sm_90a).

``import mla_backend`` imports nothing heavy: the op wrappers (mla_backend.ops) load on first
use, and the compiled extension only when it matches the installed torch.
"""

__version__ = "0.1.0"

_OPS = (
    "is_supported",
    "rows_per_cta",
    "num_decode_parts",
    "num_varlen_decode_parts",
    "parts_for_batch",
    "get_decode_metadata",
    "get_mla_metadata",
    "decode_workspace",
    "mla_decode",
    "flash_mla_with_kvcache",
)

__all__ = ["__version__", "register", *_OPS]


def register() -> None:
    """vLLM ``general_plugins`` entry point: registers the attention backend.

    vLLM calls it in every process; it imports only the registration module, never CUDA.
    """
    from mla_backend.vllm.registration import register as _register

    _register()


def __getattr__(name: str):
    if name in _OPS:
        from mla_backend import ops

        return getattr(ops, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
