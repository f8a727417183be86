"""Markers: `gpu` tests (everything under tests/gpu/ is one) skip unless an sm_90 GPU and the
built extension are present, with mla_backend.ops.is_supported's reason; `vllm` tests skip
unless vLLM is installed."""

import importlib.util

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.parent.name == "gpu":
            item.add_marker(pytest.mark.gpu)

    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if gpu_items:
        from mla_backend.ops import is_supported

        ok, reason = is_supported()
        if not ok:
            for item in gpu_items:
                item.add_marker(pytest.mark.skip(reason=f"needs an sm_90 GPU: {reason}"))

    if importlib.util.find_spec("vllm") is None:
        for item in items:
            if item.get_closest_marker("vllm"):
                item.add_marker(pytest.mark.skip(reason="vllm is not installed"))
