"""The Python surface without a GPU: light imports, the plugin entry point, the schedule sizes,
and clear errors when the extension is unavailable."""

import importlib.metadata
import subprocess
import sys

import pytest
import torch

import mla_backend
from mla_backend import _ext, ops

H200_SMS = 132


def run_python(code: str) -> None:
    subprocess.run([sys.executable, "-c", code], check=True)


def test_import_is_light():
    # vLLM imports every plugin package in every process: no torch, no CUDA, no extension.
    run_python(
        "import sys, mla_backend\n"
        "assert callable(mla_backend.register)\n"
        "heavy = {'torch', 'mla_backend._C', 'mla_backend.ops', 'mla_backend.vllm'}\n"
        "assert not heavy & set(sys.modules), heavy & set(sys.modules)\n"
    )


def test_ops_import_without_extension():
    # A mismatched build record makes the loader refuse; every wrapper still imports.
    run_python(
        "import mla_backend._ext as e\n"
        "e._built_against = lambda: ('0.0.0', '0.0')\n"
        "import mla_backend.ops as ops, mla_backend\n"
        "ok, reason = ops.is_supported()\n"
        "assert not ok and ('built against torch 0.0.0' in reason or 'not built' in reason)\n"
        "assert mla_backend.mla_decode is ops.mla_decode\n"
        "import torch\n"
        "assert not torch.cuda.is_initialized()\n"
    )


def test_lazy_exports():
    for name in mla_backend._OPS:
        assert getattr(mla_backend, name) is getattr(ops, name)
    with pytest.raises(AttributeError):
        mla_backend.no_such_op  # noqa: B018


def test_version():
    assert mla_backend.__version__ == "0.1.0"


def test_entry_point_declared():
    try:
        dist = importlib.metadata.distribution("mla_backend")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("mla_backend is not installed")
    points = [ep for ep in dist.entry_points if ep.group == "vllm.general_plugins"]
    assert [(ep.name, ep.value) for ep in points] == [("mla_backend", "mla_backend:register")]


@pytest.fixture
def unavailable(monkeypatch):
    monkeypatch.setattr(_ext, "_loaded", False)
    monkeypatch.setattr(_ext, "_reason", "extension not built; run `pip install ...`")


def test_wrappers_raise_the_reason(unavailable):
    seqlens = torch.zeros(2, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="extension not built"):
        ops.get_mla_metadata(seqlens, 16, num_parts=4)
    with pytest.raises(RuntimeError, match="extension not built"):
        ops.mla_decode(*[seqlens] * 6, 1.0, True, *[seqlens] * 4)
    ok, reason = ops.is_supported()
    assert not ok and reason.startswith("extension not built")


def test_is_supported_rejects_cpu_device(monkeypatch):
    monkeypatch.setattr(_ext, "_loaded", True)
    ok, reason = ops.is_supported("cpu")
    assert not ok and "not a CUDA device" in reason


@pytest.mark.parametrize("rows", [1, 16, 17, 32, 33, 64, 65, 2048])
def test_rows_per_cta(rows):
    # One kernel, tiles of 64 rows, whatever the row count (docs/perf.md v9).
    assert ops.rows_per_cta(rows) == 64


def test_rows_per_cta_needs_rows():
    with pytest.raises(ValueError, match="num_q_rows"):
        ops.rows_per_cta(0)


@pytest.mark.parametrize(
    ("rows", "parts"),
    [(1, 132), (16, 132), (32, 132), (64, 132), (128, 66), (512, 16), (2048, 4), (9000, 1)],
)
def test_num_decode_parts(monkeypatch, rows, parts):
    monkeypatch.setattr(ops, "_num_sms", lambda index: H200_SMS)
    monkeypatch.setattr(ops, "_device_index", lambda device: 0)
    assert ops.num_decode_parts(rows) == parts


@pytest.mark.parametrize(
    ("rows", "batch", "parts"),
    [(1, 1, 66), (16, 1, 66), (17, 1, 66), (32, 1, 66), (64, 1, 66), (65, 1, 66), (128, 1, 66),
     (16, 2, 132), (32, 2, 132), (64, 8, 132), (16, None, 132), (32, None, 132)],
)  # fmt: skip
def test_num_decode_parts_for_batch(monkeypatch, rows, batch, parts):
    # One sequence on one 64-row tile takes half the parts (measured, docs/perf.md v8, v9).
    monkeypatch.setattr(ops, "_num_sms", lambda index: H200_SMS)
    monkeypatch.setattr(ops, "_device_index", lambda device: 0)
    assert ops.num_decode_parts(rows, batch=batch) == parts


def test_num_varlen_decode_parts_is_one_per_sm(monkeypatch):
    monkeypatch.setattr(ops, "_num_sms", lambda index: H200_SMS)
    monkeypatch.setattr(ops, "_device_index", lambda device: 0)
    assert ops.num_varlen_decode_parts() == H200_SMS
    assert mla_backend.num_varlen_decode_parts is ops.num_varlen_decode_parts


def test_num_decode_parts_needs_rows():
    with pytest.raises(ValueError, match="num_q_rows"):
        ops.num_decode_parts(0)


def test_decode_workspace():
    o_accum, lse_accum = ops.decode_workspace(5, 48, "cpu")
    assert o_accum.shape == (10, 48, 512) and o_accum.dtype == torch.bfloat16
    assert lse_accum.shape == (10, 48) and lse_accum.dtype == torch.float32


def test_flash_mla_with_kvcache_needs_v_dim_512():
    q = torch.empty(1, 1, 16, 576, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="head_dim_v must be 512"):
        ops.flash_mla_with_kvcache(q, q, q, q, head_dim_v=128)
