"""Host-side input checks of the ops, reached with CPU tensors (the C++ checks dtypes and shapes
before the device): every bad input raises RuntimeError naming the tensor, and writes nothing."""

import pytest
import torch

from mla_backend import _ext
from mla_backend.ops import MAX_HEADS, MAX_S_Q

pytestmark = pytest.mark.skipif(not _ext.load(), reason=str(_ext.unavailable_reason()))

BATCH, S_Q, H_Q, PAGES, MAX_PAGES, PARTS = 2, 1, 16, 4, 2, 3
SENTINEL = 7.0


def valid_args(batch=BATCH, s_q=S_Q, h_q=H_Q) -> dict:
    """Arguments of mla_backend::decode that pass every shape and dtype check (on CPU)."""
    rows = s_q * h_q
    return {
        "q": torch.zeros(batch, s_q, h_q, 576, dtype=torch.bfloat16),
        "kv_cache": torch.zeros(PAGES, 64, 576, dtype=torch.bfloat16),
        "block_table": torch.zeros(batch, MAX_PAGES, dtype=torch.int32),
        "seqlens": torch.zeros(batch, dtype=torch.int32),
        "part_meta": torch.zeros(PARTS, 4, dtype=torch.int32),
        "batch_meta": torch.zeros(batch, 4, dtype=torch.int32),
        "softmax_scale": 576**-0.5,
        "causal": True,
        "out": torch.full((batch, s_q, h_q, 512), SENTINEL, dtype=torch.bfloat16),
        "lse": torch.full((batch, s_q, h_q), SENTINEL),
        "o_accum": torch.full((2 * PARTS, rows, 512), SENTINEL, dtype=torch.bfloat16),
        "lse_accum": torch.full((2 * PARTS, rows), SENTINEL),
    }


def bf16(*shape):
    return torch.zeros(*shape, dtype=torch.bfloat16)


def int32(*shape):
    return torch.zeros(*shape, dtype=torch.int32)


def int64(*shape):
    return torch.zeros(*shape, dtype=torch.int64)


def fp32(*shape):
    return torch.zeros(*shape)


# (case id, argument to replace, bad value, regex the message must match)
DECODE_CASES = [
    ("q_fp16", "q", torch.zeros(BATCH, S_Q, H_Q, 576, dtype=torch.half), r"\bq\b"),
    ("q_fp32", "q", fp32(BATCH, S_Q, H_Q, 576), r"\bq\b"),
    ("q_rank3", "q", bf16(BATCH, H_Q, 576), r"\bq\b"),
    ("q_rank5", "q", bf16(BATCH, S_Q, H_Q, 1, 576), r"\bq\b"),
    ("q_dim512", "q", bf16(BATCH, S_Q, H_Q, 512), r"\bq\b"),
    ("q_last_dim_strided", "q", bf16(BATCH, S_Q, H_Q, 1152)[..., ::2], r"\bq\b"),
    ("kv_fp16", "kv_cache", torch.zeros(PAGES, 64, 576, dtype=torch.half), "kv_cache"),
    ("kv_fp32", "kv_cache", fp32(PAGES, 64, 576), "kv_cache"),
    ("kv_block32", "kv_cache", bf16(PAGES, 32, 576), "kv_cache"),
    ("kv_block16_4d", "kv_cache", bf16(PAGES, 16, 1, 576), "kv_cache"),
    ("kv_dim512", "kv_cache", bf16(PAGES, 64, 512), "kv_cache"),
    ("kv_two_heads", "kv_cache", bf16(PAGES, 64, 2, 576), "kv_cache"),
    ("kv_rank2", "kv_cache", bf16(PAGES * 64, 576), "kv_cache"),
    ("block_table_int64", "block_table", int64(BATCH, MAX_PAGES), "block_table"),
    ("block_table_batch", "block_table", int32(BATCH + 1, MAX_PAGES), "block_table"),
    ("block_table_rank1", "block_table", int32(BATCH * MAX_PAGES), "block_table"),
    ("seqlens_int64", "seqlens", int64(BATCH), "seqlens"),
    ("seqlens_batch", "seqlens", int32(BATCH + 1), "seqlens"),
    ("seqlens_rank2", "seqlens", int32(BATCH, 1), "seqlens"),
    ("part_meta_int64", "part_meta", int64(PARTS, 4), "part_meta"),
    ("part_meta_cols", "part_meta", int32(PARTS, 3), "part_meta"),
    ("part_meta_empty", "part_meta", int32(0, 4), "part_meta"),
    ("batch_meta_int64", "batch_meta", int64(BATCH, 4), "batch_meta"),
    ("batch_meta_batch", "batch_meta", int32(BATCH + 1, 4), "batch_meta"),
    ("batch_meta_cols", "batch_meta", int32(BATCH, 5), "batch_meta"),
    ("out_fp32", "out", fp32(BATCH, S_Q, H_Q, 512), r"\bout\b"),
    ("out_dim576", "out", bf16(BATCH, S_Q, H_Q, 576), r"\bout\b"),
    ("out_heads", "out", bf16(BATCH, S_Q, H_Q + 1, 512), r"\bout\b"),
    ("out_rank3", "out", bf16(BATCH, H_Q, 512), r"\bout\b"),
    ("lse_bf16", "lse", bf16(BATCH, S_Q, H_Q), r"\blse\b"),
    ("lse_transposed_shape", "lse", fp32(BATCH, H_Q, S_Q + 1), r"\blse\b"),
    ("lse_rank2", "lse", fp32(BATCH, H_Q), r"\blse\b"),
    ("o_accum_fp32", "o_accum", fp32(2 * PARTS, S_Q * H_Q, 512), "o_accum"),
    ("o_accum_slots", "o_accum", bf16(2 * PARTS - 1, S_Q * H_Q, 512), "o_accum"),
    ("o_accum_rows", "o_accum", bf16(2 * PARTS, S_Q * H_Q - 1, 512), "o_accum"),
    ("o_accum_dim", "o_accum", bf16(2 * PARTS, S_Q * H_Q, 576), "o_accum"),
    ("lse_accum_bf16", "lse_accum", bf16(2 * PARTS, S_Q * H_Q), "lse_accum"),
    ("lse_accum_slots", "lse_accum", fp32(2 * PARTS - 1, S_Q * H_Q), "lse_accum"),
    ("lse_accum_rows", "lse_accum", fp32(2 * PARTS, S_Q * H_Q + 1), "lse_accum"),
    ("out_head_stride_not_16B", "out", bf16(BATCH, S_Q, H_Q, 516)[..., :512], r"\bout\b"),
    ("q_head_stride_not_16B", "q", bf16(BATCH, S_Q, H_Q, 580)[..., :576], r"\bq\b"),
    ("scale_zero", "softmax_scale", 0.0, "softmax_scale"),
    ("scale_nan", "softmax_scale", float("nan"), "softmax_scale"),
    ("scale_negative", "softmax_scale", -0.1, "softmax_scale"),
]


def split_args() -> dict:
    """valid_args with the queries in two halves: q [.., 512] and q_pe [.., 64]."""
    args = valid_args()
    args["q"] = bf16(BATCH, S_Q, H_Q, 512)
    args["q_pe"] = bf16(BATCH, S_Q, H_Q, 64)
    return args


# (case id, argument to replace in split_args, bad value, regex the message must match)
SPLIT_CASES = [
    ("q_dim576_with_q_pe", "q", bf16(BATCH, S_Q, H_Q, 576), r"\bq\b.*512.*q_pe"),
    ("q_pe_dim128", "q_pe", bf16(BATCH, S_Q, H_Q, 128), "q_pe"),
    ("q_pe_fp16", "q_pe", torch.zeros(BATCH, S_Q, H_Q, 64, dtype=torch.half), "q_pe"),
    ("q_pe_heads", "q_pe", bf16(BATCH, S_Q, H_Q + 1, 64), "q_pe"),
    ("q_pe_batch", "q_pe", bf16(BATCH + 1, S_Q, H_Q, 64), "q_pe"),
    ("q_pe_rank3", "q_pe", bf16(BATCH, H_Q, 64), "q_pe"),
    ("q_pe_last_dim_strided", "q_pe", bf16(BATCH, S_Q, H_Q, 128)[..., ::2], "q_pe"),
    ("q_pe_head_stride_not_16B", "q_pe", bf16(BATCH, S_Q, H_Q, 68)[..., :64], "q_pe"),
    ("q_pe_base_not_16B", "q_pe", bf16(BATCH, S_Q, H_Q, 72)[..., 4:68], "q_pe"),
    ("q_half_head_stride_not_16B", "q", bf16(BATCH, S_Q, H_Q, 516)[..., :512], r"\bq\b"),
]


def call_decode(args: dict) -> None:
    torch.ops.mla_backend.decode(**args)


def assert_nothing_written(args: dict, replaced: str = "") -> None:
    for name in {"out", "lse", "o_accum", "lse_accum"} - {replaced}:
        assert (args[name] == SENTINEL).all(), f"{name} was written"


# Every case on the whole-q arguments, then the split ones on q [.., 512] + q_pe [.., 64].
REJECT_CASES = [(valid_args, *c) for c in DECODE_CASES] + [(split_args, *c) for c in SPLIT_CASES]


@pytest.mark.parametrize(
    ("base", "name", "bad", "match"),
    [(c[0], *c[2:]) for c in REJECT_CASES],
    ids=[c[1] for c in REJECT_CASES],
)
def test_decode_rejects(base, name, bad, match):
    args = base()
    args[name] = bad
    with pytest.raises(RuntimeError, match=match):
        call_decode(args)
    assert_nothing_written(args, replaced=name)


@pytest.mark.parametrize(
    ("s_q", "h_q", "match"),
    [(MAX_S_Q + 1, 1, r"s_q"), (1, MAX_HEADS + 1, r"h_q"), (1, 0, "h_q")],
)
def test_decode_rejects_unsupported_sizes(s_q, h_q, match):
    args = valid_args(s_q=s_q, h_q=h_q)
    with pytest.raises(RuntimeError, match=match):
        call_decode(args)
    assert_nothing_written(args)


@pytest.mark.parametrize(("s_q", "h_q"), [(MAX_S_Q, 1), (1, MAX_HEADS), (4, 3)])
def test_decode_accepts_supported_sizes_up_to_the_device_check(s_q, h_q):
    args = valid_args(s_q=s_q, h_q=h_q)
    with pytest.raises(RuntimeError, match="CUDA"):
        call_decode(args)
    assert_nothing_written(args)


def test_decode_split_query_accepted_up_to_the_device_check():
    args = split_args()
    with pytest.raises(RuntimeError, match=r"\bq\b.*CUDA"):
        call_decode(args)
    assert_nothing_written(args)
    args["q"] = bf16(BATCH, S_Q, H_Q, 576)[..., :512]  # a view of a whole q works too
    args["q_pe"] = bf16(BATCH, S_Q, H_Q, 576)[..., 512:]
    with pytest.raises(RuntimeError, match=r"\bq\b.*CUDA"):
        call_decode(args)


TOKENS = 5  # varlen: sequence 0 has 2 query tokens, sequence 1 has 3


def varlen_args() -> dict:
    """valid_args with varlen queries: q [T, h, 576], q_start [B + 1], max_q_len 3."""
    args = valid_args()
    rows = 3 * H_Q
    args.update(
        q=bf16(TOKENS, H_Q, 576),
        q_start=torch.tensor([0, 2, TOKENS], dtype=torch.int32),
        max_q_len=3,
        out=torch.full((TOKENS, H_Q, 512), SENTINEL, dtype=torch.bfloat16),
        lse=torch.full((TOKENS, H_Q), SENTINEL),
        o_accum=torch.full((2 * PARTS, rows, 512), SENTINEL, dtype=torch.bfloat16),
        lse_accum=torch.full((2 * PARTS, rows), SENTINEL),
    )
    return args


# (case id, argument to replace in varlen_args, bad value, regex the message must match)
VARLEN_CASES = [
    ("q_4d", "q", bf16(BATCH, 3, H_Q, 576), r"\bq\b.*3-D"),
    ("q_dim512", "q", bf16(TOKENS, H_Q, 512), r"\bq\b"),
    ("q_start_int64", "q_start", torch.tensor([0, 2, TOKENS]), "q_start"),
    ("q_start_short", "q_start", torch.tensor([0, TOKENS], dtype=torch.int32), "q_start"),
    ("q_start_strided", "q_start", torch.zeros(6, dtype=torch.int32)[::2], "q_start"),
    ("max_q_len_zero", "max_q_len", 0, "max_q_len"),
    ("max_q_len_17", "max_q_len", 17, "max_q_len"),
    ("out_4d", "out", bf16(BATCH, 3, H_Q, 512), r"\bout\b"),
    ("out_tokens", "out", bf16(TOKENS + 1, H_Q, 512), r"\bout\b"),
    ("lse_3d", "lse", fp32(BATCH, 3, H_Q), r"\blse\b"),
    ("o_accum_rows", "o_accum", bf16(2 * PARTS, 2 * H_Q, 512), "o_accum"),
    ("q_pe_4d", "q_pe", bf16(BATCH, 3, H_Q, 64), "q_pe"),
]


@pytest.mark.parametrize(
    ("name", "bad", "match"), [c[1:] for c in VARLEN_CASES], ids=[c[0] for c in VARLEN_CASES]
)
def test_decode_varlen_rejects(name, bad, match):
    args = varlen_args()
    if name == "q_pe_4d":
        args["q"] = bf16(TOKENS, H_Q, 512)
    args[name] = bad
    with pytest.raises(RuntimeError, match=match):
        call_decode(args)
    assert_nothing_written(args, replaced=name)


def test_decode_varlen_accepted_up_to_the_device_check():
    args = varlen_args()
    with pytest.raises(RuntimeError, match=r"\bq\b.*CUDA"):
        call_decode(args)
    args["q"] = bf16(TOKENS, H_Q, 512)
    args["q_pe"] = bf16(TOKENS, H_Q, 64)
    with pytest.raises(RuntimeError, match=r"\bq\b.*CUDA"):
        call_decode(args)
    assert_nothing_written(args)


def test_decode_accepts_4d_kv_cache_up_to_the_device_check():
    args = valid_args()
    args["kv_cache"] = bf16(PAGES, 64, 1, 576)
    with pytest.raises(RuntimeError, match="CUDA"):
        call_decode(args)


def test_decode_rejects_cpu_tensors():
    args = valid_args()
    with pytest.raises(RuntimeError, match=r"\bq\b.*CUDA"):
        call_decode(args)
    assert_nothing_written(args)


def metadata_args(batch=BATCH) -> dict:
    return {
        "seqlens": int32(batch),
        "part_meta": torch.full((PARTS, 4), -7, dtype=torch.int32),
        "batch_meta": torch.full((batch, 4), -7, dtype=torch.int32),
    }


METADATA_CASES = [
    ("seqlens_int64", "seqlens", int64(BATCH), "seqlens"),
    ("seqlens_rank2", "seqlens", int32(BATCH, 1), "seqlens"),
    ("part_meta_int64", "part_meta", int64(PARTS, 4), "part_meta"),
    ("part_meta_cols", "part_meta", int32(PARTS, 2), "part_meta"),
    ("part_meta_empty", "part_meta", int32(0, 4), "part_meta"),
    ("batch_meta_int64", "batch_meta", int64(BATCH, 4), "batch_meta"),
    ("batch_meta_batch", "batch_meta", int32(BATCH - 1, 4), "batch_meta"),
    ("batch_meta_rank1", "batch_meta", int32(BATCH * 4), "batch_meta"),
    ("rows_negative", "rows", -1, "rows"),
    ("rows_too_many", "rows", 16 * 128 + 1, "rows"),
]


@pytest.mark.parametrize(
    ("name", "bad", "match"), [c[1:] for c in METADATA_CASES], ids=[c[0] for c in METADATA_CASES]
)
def test_metadata_rejects(name, bad, match):
    args = metadata_args()
    args[name] = bad
    with pytest.raises(RuntimeError, match=match):
        torch.ops.mla_backend.get_decode_metadata(**args)
    for out in {"part_meta", "batch_meta"} - {name}:
        assert (args[out] == -7).all(), f"{out} was written"


def test_metadata_rejects_cpu_tensors():
    args = metadata_args()
    with pytest.raises(RuntimeError, match="seqlens.*CUDA"):
        torch.ops.mla_backend.get_decode_metadata(**args)
    assert (args["part_meta"] == -7).all() and (args["batch_meta"] == -7).all()
