"""MLA_BACKEND_VLLM through vLLM's own selector, on a simulated sm_90 CUDA platform.

vLLM's real CUDA platform needs a GPU driver to import, so the platform here is a minimal
stand-in (compute capability 9.0; vLLM's choice is a fixed Triton backend) with our selection
mixin in front, exactly as platform.py puts it in front of vLLM's CUDA platform. The kernel's
availability check is patched to "supported" where a test needs the backend to be usable.
"""

import pytest
import torch

pytest.importorskip("vllm")

# What the tests patch: the platform vLLM resolved, and the selector's per-process cache.
# (Imported before the simulated CUDA platform is installed: vLLM's modules take import-time
# branches on the platform.)
import vllm.platforms  # noqa: E402
from vllm.v1.attention import selector  # noqa: E402

from mla_backend import ops  # noqa: E402
from mla_backend.vllm import compat, selection  # noqa: E402
from mla_backend.vllm.backend import MlaBackendAttentionBackend  # noqa: E402
from mla_backend.vllm.registration import ENV_VAR, register  # noqa: E402

VLLM_MLA_CHOICE = compat.AttentionBackendEnum.TRITON_MLA.get_class()
VLLM_CHOICE = compat.AttentionBackendEnum.TRITON_ATTN.get_class()
MLA_HEAD_SIZE = 576  # kv_lora_rank 512 + rope 64


class SimulatedSm90(compat.Platform):
    """A CUDA platform as far as backend selection looks."""

    _enum = compat.PlatformEnum.CUDA
    device_name = "cuda"
    device_type = "cuda"

    @classmethod
    def get_device_capability(cls, device_id: int = 0):
        return compat.DeviceCapability(major=9, minor=0)

    @classmethod
    def get_attn_backend_cls(cls, selected_backend, attn_selector_config, num_heads=None):
        if selected_backend is not None:
            return selected_backend.get_path()
        choice = VLLM_MLA_CHOICE if attn_selector_config.use_mla else VLLM_CHOICE
        return f"{choice.__module__}.{choice.__qualname__}"


class SimulatedMlaBackendPlatform(selection.MlaBackendSelection, SimulatedSm90):
    pass


class LogLines:
    def __init__(self):
        self.lines: list[tuple[str, str]] = []

    def _add(self, level):
        return lambda msg, *args: self.lines.append((level, msg % args))

    def __getattr__(self, level):
        return self._add(level)


@pytest.fixture
def log(monkeypatch):
    lines = LogLines()
    monkeypatch.setattr(compat, "get_logger", lambda: lines)
    monkeypatch.setattr(selection, "_announced", False)
    return lines


@pytest.fixture
def platform(monkeypatch):
    monkeypatch.setattr(vllm.platforms, "_current_platform", SimulatedMlaBackendPlatform())
    selector._cached_get_attn_backend.cache_clear()
    yield
    selector._cached_get_attn_backend.cache_clear()


@pytest.fixture
def kernels_available(monkeypatch):
    monkeypatch.setattr(ops, "is_supported", lambda device=None: (True, ""))


def select(
    *,
    use_mla=True,
    dtype=torch.bfloat16,
    kv_cache_dtype="auto",
    use_sparse=False,
    num_heads=16,
    **config,
):
    with compat.set_current_vllm_config(compat.VllmConfig(**config)):
        return selector.get_attn_backend(
            MLA_HEAD_SIZE if use_mla else 128,
            dtype,
            kv_cache_dtype,
            use_mla=use_mla,
            use_sparse=use_sparse,
            num_heads=num_heads,
        )


@pytest.mark.parametrize("value", ["1", "force"])
def test_env_var_selects_mla_backend_for_mla(platform, kernels_available, log, monkeypatch, value):
    monkeypatch.setenv(ENV_VAR, value)
    assert select() is MlaBackendAttentionBackend
    assert len(log.lines) == 1 and log.lines[0][0] == "info"
    assert "MlaBackendAttentionBackend" in log.lines[0][1]


def test_env_var_leaves_non_mla_layers_alone(platform, kernels_available, log, monkeypatch):
    monkeypatch.setenv(ENV_VAR, "1")
    assert select(use_mla=False) is VLLM_CHOICE
    assert log.lines == []


@pytest.mark.parametrize("value", [None, "0", ""])
def test_without_env_var_vllm_chooses(platform, kernels_available, log, monkeypatch, value):
    if value is None:
        monkeypatch.delenv(ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(ENV_VAR, value)
    assert select() is VLLM_MLA_CHOICE
    assert log.lines == []


def test_falls_back_with_one_line_when_kernels_unavailable(platform, log, monkeypatch):
    monkeypatch.setenv(ENV_VAR, "1")
    monkeypatch.setattr(ops, "is_supported", lambda device=None: (False, "extension not built"))
    assert select() is VLLM_MLA_CHOICE
    assert select(num_heads=32) is VLLM_MLA_CHOICE  # another layer config: no second line
    assert len(log.lines) == 1
    level, line = log.lines[0]
    assert level == "warning" and "extension not built" in line and "falling back" in line


def test_force_fails_with_the_reason(platform, log, monkeypatch):
    monkeypatch.setenv(ENV_VAR, "force")
    monkeypatch.setattr(ops, "is_supported", lambda device=None: (False, "extension not built"))
    with pytest.raises(ValueError, match="extension not built"):
        select()


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        (dict(dtype=torch.float16), "needs torch.bfloat16"),
        (dict(kv_cache_dtype="fp8"), "kv cache dtype fp8"),
        (dict(use_sparse=True), "sparse"),
        (dict(num_heads=256), "256 query heads"),
        (dict(cache_config=compat.CacheConfig(block_size=16)), "--block-size 16"),
    ],
)
def test_unsupported_configs_fall_back(
    platform, kernels_available, log, monkeypatch, config, reason
):
    monkeypatch.setenv(ENV_VAR, "1")
    assert select(**config) is VLLM_MLA_CHOICE
    assert len(log.lines) == 1 and reason in log.lines[0][1]


def test_explicit_backend_wins(platform, kernels_available, log, monkeypatch):
    monkeypatch.setenv(ENV_VAR, "1")
    triton = compat.AttentionConfig(backend="TRITON_MLA")
    assert select(attention_config=triton) is VLLM_MLA_CHOICE
    assert "ignored" in log.lines[0][1]
    monkeypatch.setenv(ENV_VAR, "force")
    selector._cached_get_attn_backend.cache_clear()  # vLLM caches choices per process
    with pytest.raises(ValueError, match="conflicts"):
        select(attention_config=triton)


def test_attention_backend_custom_is_ours(platform, kernels_available, log, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    register()
    try:
        assert select(attention_config=compat.AttentionConfig(backend="CUSTOM")) is (
            MlaBackendAttentionBackend
        )
    finally:
        compat.AttentionBackendEnum.CUSTOM.clear_override()


def test_vllm_picks_block_size_64():
    # What Platform.update_block_size_for_backend asks when the user gave no --block-size.
    default = compat.CacheConfig.DEFAULT_BLOCK_SIZE
    assert MlaBackendAttentionBackend.get_preferred_block_size(default) == 64
    assert MlaBackendAttentionBackend.supports_block_size(64)
    assert not MlaBackendAttentionBackend.supports_block_size(16)


def test_declared_capabilities():
    backend = MlaBackendAttentionBackend
    assert backend.is_mla() and not backend.is_sparse()
    assert backend.supported_dtypes == [torch.bfloat16]
    assert backend.supports_compute_capability(compat.DeviceCapability(9, 0))
    assert not backend.supports_compute_capability(compat.DeviceCapability(10, 0))
    builder = backend.get_builder_cls()
    assert builder._cudagraph_support is compat.AttentionCGSupport.UNIFORM_BATCH
    assert builder.query_len_support is compat.QueryLenSupport.VARLEN  # mixed draft lengths
    assert not backend.supports_pcp()
