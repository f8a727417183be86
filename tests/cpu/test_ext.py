"""The extension loader: a missing or mismatched build is never loaded and says how to fix it."""

import pytest
import torch

from mla_backend import _ext

FAKE_SO = "/nonexistent/mla_backend/_C.abi3.so"


@pytest.fixture
def fresh_loader(monkeypatch):
    """A loader that has not tried yet and must not dlopen anything."""
    monkeypatch.setattr(_ext, "_loaded", None)
    monkeypatch.setattr(_ext, "_reason", None)
    loaded = []
    monkeypatch.setattr(torch.ops, "load_library", loaded.append)
    return loaded


def test_not_built(monkeypatch, fresh_loader):
    monkeypatch.setattr(_ext, "_extension_path", lambda: None)
    assert _ext.load() is False
    reason = _ext.unavailable_reason()
    assert reason == "extension not built; run `pip install --no-build-isolation -e .`"
    with pytest.raises(RuntimeError, match="extension not built"):
        _ext.require()
    assert fresh_loader == []


def test_version_mismatch_is_not_loaded(monkeypatch, fresh_loader):
    monkeypatch.setattr(_ext, "_extension_path", lambda: FAKE_SO)
    monkeypatch.setattr(_ext, "_built_against", lambda: ("2.9.0+cu128", "12.8"))
    assert _ext.load() is False
    assert fresh_loader == []  # a mismatched .so can crash on load: never dlopen it
    expected = (
        f"mla_backend was built against torch 2.9.0+cu128 / CUDA 12.8 but torch "
        f"{torch.__version__} / CUDA {torch.version.cuda} is installed; "
        "rebuild with `pip install --no-build-isolation -e .`"
    )
    assert _ext.unavailable_reason() == expected
    with pytest.raises(RuntimeError, match="built against torch 2.9.0"):
        _ext.require()


def test_cuda_mismatch_alone_is_caught(monkeypatch, fresh_loader):
    monkeypatch.setattr(_ext, "_extension_path", lambda: FAKE_SO)
    monkeypatch.setattr(_ext, "_built_against", lambda: (torch.__version__, "0.1"))
    assert _ext.load() is False
    assert "CUDA 0.1 but" in _ext.unavailable_reason()
    assert fresh_loader == []


def test_missing_build_record(monkeypatch, fresh_loader):
    monkeypatch.setattr(_ext, "_extension_path", lambda: FAKE_SO)
    monkeypatch.setattr(_ext, "_built_against", lambda: None)
    assert _ext.load() is False
    assert "no build record" in _ext.unavailable_reason()
    assert fresh_loader == []


def test_matching_versions_are_loaded(monkeypatch, fresh_loader):
    monkeypatch.setattr(_ext, "_extension_path", lambda: FAKE_SO)
    monkeypatch.setattr(_ext, "_built_against", _ext._running)
    _ext.load()
    assert fresh_loader == [FAKE_SO]


def test_load_result_is_cached(monkeypatch, fresh_loader):
    calls = []
    monkeypatch.setattr(_ext, "_extension_path", lambda: calls.append(1))
    assert _ext.load() is False
    assert _ext.load() is False
    assert calls == [1]
