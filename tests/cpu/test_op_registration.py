"""The ops the extension registers: exact schemas, build record, and fake kernels (what
torch.compile and CUDA-graph-aware tracing run instead of the kernels)."""

import re

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from mla_backend import _ext, ops

pytestmark = pytest.mark.skipif(not _ext.load(), reason=str(_ext.unavailable_reason()))

SCHEMAS = {
    "get_decode_metadata": (
        "mla_backend::get_decode_metadata(Tensor seqlens, Tensor(a!) part_meta, "
        "Tensor(b!) batch_meta, int rows=0) -> ()"
    ),
    "decode": (
        "mla_backend::decode(Tensor q, Tensor kv_cache, Tensor block_table, Tensor seqlens, "
        "Tensor(a!) part_meta, Tensor(b!) batch_meta, float softmax_scale, bool causal, "
        "Tensor(c!) out, Tensor(d!) lse, Tensor(e!) o_accum, Tensor(f!) lse_accum, "
        "Tensor? q_pe=None, Tensor? q_start=None, int max_q_len=0, bool plan=False) -> ()"
    ),
    "build_info": "mla_backend::build_info() -> str",
}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_schema(name):
    assert str(getattr(torch.ops.mla_backend, name).default._schema) == SCHEMAS[name]


def test_build_info_matches_running_torch():
    expected = f"torch={torch.__version__};cuda={torch.version.cuda}"
    assert torch.ops.mla_backend.build_info() == expected


def test_build_record_names_its_source():
    """setup.py records the commit the extension was built from (benchmarks put it in their
    CSVs); a build from a git checkout has a 12-digit sha, "-dirty" if csrc/ differed."""
    from mla_backend import _build_info

    sha = getattr(_build_info, "SOURCE_SHA", None)
    if sha is None:
        pytest.skip("a build from before SOURCE_SHA was recorded; rebuild to get it")
    assert re.fullmatch(r"[0-9a-f]{12}(-dirty)?|unknown", sha), sha


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_fakes_run_without_kernels(device):
    batch, s_q, h_q, parts = 3, 2, 16, 4
    rows = s_q * h_q
    with FakeTensorMode(allow_non_fake_inputs=False):
        seqlens = torch.empty(batch, dtype=torch.int32, device=device)
        part_meta = torch.empty(parts, 4, dtype=torch.int32, device=device)
        batch_meta = torch.empty(batch, 4, dtype=torch.int32, device=device)
        assert torch.ops.mla_backend.get_decode_metadata(seqlens, part_meta, batch_meta) is None
        assert ops.get_decode_metadata(seqlens, part_meta, batch_meta, rows) is None

        q = torch.empty(batch, s_q, h_q, 576, dtype=torch.bfloat16, device=device)
        kv_cache = torch.empty(10, 64, 576, dtype=torch.bfloat16, device=device)
        block_table = torch.empty(batch, 5, dtype=torch.int32, device=device)
        out = torch.empty(batch, s_q, h_q, 512, dtype=torch.bfloat16, device=device)
        lse = torch.empty(batch, s_q, h_q, device=device)
        o_accum, lse_accum = ops.decode_workspace(parts, rows, device)
        result = torch.ops.mla_backend.decode(
            q, kv_cache, block_table, seqlens, part_meta, batch_meta, 0.1, True,
            out, lse, o_accum, lse_accum,
        )  # fmt: skip
        assert result is None
        assert out.shape == (batch, s_q, h_q, 512)
        q_nope = torch.empty(batch, s_q, h_q, 512, dtype=torch.bfloat16, device=device)
        q_pe = torch.empty(batch, s_q, h_q, 64, dtype=torch.bfloat16, device=device)
        result = torch.ops.mla_backend.decode(
            q_nope, kv_cache, block_table, seqlens, part_meta, batch_meta, 0.1, True,
            out, lse, o_accum, lse_accum, q_pe,
        )  # fmt: skip
        assert result is None
