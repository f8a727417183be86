"""vLLM plugin entry points: discoverable, light, idempotent; the MLA_BACKEND_VLLM switch."""

import os
import subprocess
import sys
from importlib import metadata

import pytest

pytest.importorskip("vllm")

import mla_backend  # noqa: E402
from mla_backend.vllm import compat, registration  # noqa: E402
from mla_backend.vllm.registration import (  # noqa: E402
    BACKEND_QUALNAME,
    ENV_VAR,
    PLATFORM_QUALNAME,
    Mode,
    platform_plugin,
    selection_mode,
)

ENTRY_POINTS = {
    "vllm.general_plugins": "mla_backend:register",
    "vllm.platform_plugins": "mla_backend.vllm.registration:platform_plugin",
}


@pytest.fixture
def custom_unregistered():
    custom = compat.AttentionBackendEnum.CUSTOM
    custom.clear_override()
    yield custom
    custom.clear_override()


@pytest.mark.parametrize("group", sorted(ENTRY_POINTS))
def test_entry_point_is_discoverable(group):
    try:
        metadata.distribution("mla_backend")
    except metadata.PackageNotFoundError:
        pytest.skip("mla_backend is not pip-installed (pip install --no-build-isolation -e .)")
    ours = [ep for ep in metadata.entry_points(group=group) if ep.name == "mla_backend"]
    assert [ep.value for ep in ours] == [ENTRY_POINTS[group]]
    assert callable(ours[0].load())


def test_register_is_idempotent(custom_unregistered):
    mla_backend.register()
    mla_backend.register()
    assert custom_unregistered.get_path() == BACKEND_QUALNAME
    assert compat.AttentionBackendEnum["CUSTOM"].get_class().__name__ == (
        "MlaBackendAttentionBackend"
    )


def test_register_keeps_another_custom_backend(custom_unregistered, monkeypatch):
    warnings = []

    class Logger:
        def warning(self, *args):
            warnings.append(args)

    monkeypatch.setattr(compat, "get_logger", Logger)
    compat.register_backend(custom_unregistered, "someone.else.Backend")
    registration.register()
    assert custom_unregistered.get_path() == "someone.else.Backend"
    assert len(warnings) == 1


def test_entry_points_are_light():
    # vLLM calls them in every process: no CUDA, no attention stack, no kernels.
    code = (
        "import sys, torch, mla_backend\n"
        "from mla_backend.vllm.registration import platform_plugin\n"
        "mla_backend.register(); platform_plugin()\n"
        "heavy = [m for m in ('mla_backend.ops', 'mla_backend.vllm.backend',\n"
        "         'vllm.model_executor.layers.attention.mla_attention') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert not torch.cuda.is_initialized()\n"
    )
    env = dict(os.environ, **{ENV_VAR: "1"})
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize(
    ("value", "mode"),
    [
        (None, Mode.OFF),
        ("", Mode.OFF),
        ("0", Mode.OFF),
        ("off", Mode.OFF),
        ("1", Mode.ON),
        ("true", Mode.ON),
        (" Force ", Mode.FORCE),
    ],
)
def test_selection_mode(monkeypatch, value, mode):
    if value is None:
        monkeypatch.delenv(ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(ENV_VAR, value)
    assert selection_mode() is mode


def test_selection_mode_rejects_typos(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "yes please")
    with pytest.raises(ValueError, match=ENV_VAR):
        selection_mode()


@pytest.mark.parametrize(
    ("value", "cuda", "expected"),
    [
        (None, True, None),  # unset: vLLM picks its platform as before
        ("0", True, None),
        ("1", True, PLATFORM_QUALNAME),
        ("force", True, PLATFORM_QUALNAME),
        ("1", False, None),  # no CUDA GPU: nothing to replace
        ("bogus", True, None),  # logged, not raised (vLLM would swallow it)
    ],
)
def test_platform_plugin(monkeypatch, value, cuda, expected):
    if value is None:
        monkeypatch.delenv(ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(ENV_VAR, value)
    monkeypatch.setattr(
        compat, "cuda_platform_plugin", lambda: "vllm.platforms.cuda.CudaPlatform" if cuda else None
    )
    assert platform_plugin() == expected
