"""The paged fp32 reference against a naive dense fp64 attention, on inputs built to make bugs
loud: NaN in every unused cache slot, permuted pages, out-of-range ids in unused entries."""

import math
import random

import pytest
import torch

from mla_backend.reference import (
    HEAD_DIM_V,
    OUT_OF_RANGE_PAGE,
    PAGE_SIZE,
    check_decode_output,
    make_decode_inputs,
    mla_decode_reference,
    naive_dense_attention,
    varlen_queries,
    visible_positions,
)

SEQLENS = [[0], [1], [63], [64], [65], [113], [0, 1, 63, 64, 65, 113, 130]]
S_Q = [1, 2, 4]
CAUSAL = [True, False]
SCALE = 576**-0.5


def check_against_naive(inputs, causal: bool, scale: float = SCALE) -> None:
    out, lse = mla_decode_reference(
        inputs.q, inputs.kv_cache, inputs.block_table, inputs.seqlens, scale, causal
    )
    assert out.dtype == lse.dtype == torch.float32
    assert out.shape == (*inputs.q.shape[:3], HEAD_DIM_V)
    assert lse.shape == inputs.q.shape[:3]
    assert not out.isnan().any() and not lse.isnan().any()
    for b, kv in enumerate(inputs.kv):
        ref_out, ref_lse = naive_dense_attention(inputs.q[b], kv, scale, causal)
        torch.testing.assert_close(out[b].double(), ref_out, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lse[b].double(), ref_lse, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("seqlens", SEQLENS, ids=str)
@pytest.mark.parametrize("s_q", S_Q)
@pytest.mark.parametrize("causal", CAUSAL)
def test_matches_naive_dense(seqlens, s_q, causal):
    gen = torch.Generator().manual_seed(0)
    inputs = make_decode_inputs(seqlens, s_q, 3, generator=gen)
    check_against_naive(inputs, causal)


@pytest.mark.parametrize("causal", CAUSAL)
def test_varlen_matches_naive_dense(causal):
    """Varlen queries: sequence b's q_len tokens see positions < L - q_len + i + 1 (causal)."""
    seqlens, q_lens = [130, 0, 65, 1, 64, 7], [3, 2, 1, 0, 4, 4]
    gen = torch.Generator().manual_seed(4)
    inputs = make_decode_inputs(seqlens, 4, 3, generator=gen)
    q, q_start = varlen_queries(inputs.q, q_lens)
    assert q.shape == (sum(q_lens), 3, 576) and q_start.tolist() == [0, 3, 5, 6, 6, 10, 14]
    out, lse = mla_decode_reference(
        q, inputs.kv_cache, inputs.block_table, inputs.seqlens, SCALE, causal, q_start=q_start
    )
    assert out.shape == (14, 3, HEAD_DIM_V) and lse.shape == (14, 3)
    for b, kv in enumerate(inputs.kv):
        lo, hi = q_start[b].item(), q_start[b + 1].item()
        ref_out, ref_lse = naive_dense_attention(q[lo:hi], kv, SCALE, causal)
        torch.testing.assert_close(out[lo:hi].double(), ref_out, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lse[lo:hi].double(), ref_lse, atol=1e-5, rtol=1e-5)
    # The same as the uniform reference on a sequence's first q_len tokens alone: a sequence of
    # 2 tokens (of 4 in the padded q) sees what a 2-token decode sees, not what tokens 0-1 of 4 do.
    uni_out, _ = mla_decode_reference(
        inputs.q[:1, :3], inputs.kv_cache, inputs.block_table[:1], inputs.seqlens[:1], SCALE, causal
    )
    torch.testing.assert_close(out[:3], uni_out[0])
    with pytest.raises(ValueError, match="q_start"):
        mla_decode_reference(
            q, inputs.kv_cache, inputs.block_table, inputs.seqlens, SCALE, causal,
            q_start=q_start[:-1],
        )  # fmt: skip


@pytest.mark.parametrize("kv_4d", [False, True])
@pytest.mark.parametrize("q_strided", [False, True])
def test_layouts(kv_4d, q_strided):
    gen = torch.Generator().manual_seed(1)
    inputs = make_decode_inputs([65, 7, 128], 2, 4, kv_4d=kv_4d, q_strided=q_strided, generator=gen)
    assert inputs.kv_cache.dim() == (4 if kv_4d else 3)
    assert inputs.q.is_contiguous() != q_strided
    check_against_naive(inputs, causal=True)


def test_random_shapes():
    rng = random.Random(2)
    gen = torch.Generator().manual_seed(2)
    for _ in range(12):
        seqlens = [rng.choice([0, 1, rng.randrange(300)]) for _ in range(rng.randint(1, 4))]
        inputs = make_decode_inputs(
            seqlens,
            rng.choice(S_Q),
            rng.choice([1, 3, 16]),
            kv_4d=rng.random() < 0.5,
            q_strided=rng.random() < 0.5,
            generator=gen,
        )
        check_against_naive(inputs, causal=rng.random() < 0.5, scale=rng.uniform(0.02, 0.2))


def test_inputs_are_poisoned():
    inputs = make_decode_inputs([65, 0, 3], 1, 2, generator=torch.Generator().manual_seed(3))
    cache = inputs.kv_cache.view(-1, PAGE_SIZE, inputs.kv_cache.shape[-1])
    used = 0
    for b, length in enumerate(inputs.seqlens.tolist()):
        pages = math.ceil(length / PAGE_SIZE)
        ids = inputs.block_table[b, :pages].long()
        tokens = cache[ids].flatten(0, 1)
        assert not tokens[:length].isnan().any()
        assert tokens[length:].isnan().all()  # the tail of the last page
        assert (inputs.block_table[b, pages:] == OUT_OF_RANGE_PAGE).all()
        used += pages
    assert cache.isnan().all(dim=(1, 2)).sum() == cache.shape[0] - used  # spare pages


def test_empty_rows_get_zero_and_neg_inf():
    # L = 2 and s_q = 4: under the causal rule query tokens 0 and 1 see nothing.
    gen = torch.Generator().manual_seed(4)
    inputs = make_decode_inputs([0, 2], 4, 3, generator=gen)
    out, lse = mla_decode_reference(
        inputs.q, inputs.kv_cache, inputs.block_table, inputs.seqlens, SCALE, causal=True
    )
    assert (out[0] == 0).all() and torch.isneginf(lse[0]).all()
    assert (out[1, :2] == 0).all() and torch.isneginf(lse[1, :2]).all()
    assert torch.isfinite(lse[1, 2:]).all() and (out[1, 2:] != 0).any()
    # Without the causal rule every row of the second sequence sees both tokens.
    out, lse = mla_decode_reference(
        inputs.q, inputs.kv_cache, inputs.block_table, inputs.seqlens, SCALE, causal=False
    )
    assert torch.isfinite(lse[1]).all()


def test_visible_positions():
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(visible_positions(3, 5, causal=True), expected)
    assert visible_positions(3, 5, causal=False).all()
    assert not visible_positions(4, 2, causal=True)[:2].any()


def test_single_token_is_exact():
    # One visible token: softmax weight 1, out = v, lse = the scaled score.
    gen = torch.Generator().manual_seed(5)
    inputs = make_decode_inputs([1], 1, 2, generator=gen)
    out, lse = mla_decode_reference(
        inputs.q, inputs.kv_cache, inputs.block_table, inputs.seqlens, SCALE, causal=True
    )
    kv = inputs.kv[0][0].float()
    torch.testing.assert_close(out[0, 0], kv[:HEAD_DIM_V].expand(2, -1))
    torch.testing.assert_close(lse[0, 0], inputs.q[0, 0].float() @ kv * SCALE)


def test_bf16_baseline_is_close_but_not_equal():
    gen = torch.Generator().manual_seed(6)
    inputs = make_decode_inputs([200], 2, 4, generator=gen)
    args = (inputs.q, inputs.kv_cache, inputs.block_table, inputs.seqlens, SCALE, True)
    out32, lse32 = mla_decode_reference(*args)
    out16, lse16 = mla_decode_reference(*args, compute_dtype=torch.bfloat16)
    assert out16.dtype == torch.float32
    assert not torch.equal(out16, out32)
    torch.testing.assert_close(out16, out32, atol=0.05, rtol=0.05)
    torch.testing.assert_close(lse16, lse32, atol=0.1, rtol=0.02)


def reference_as_kernel_output(inputs, causal=True):
    out, lse = mla_decode_reference(
        inputs.q, inputs.kv_cache, inputs.block_table, inputs.seqlens, SCALE, causal
    )
    return out.bfloat16(), lse


def run_check(out, lse, inputs, causal=True):
    check_decode_output(
        out, lse, inputs.q, inputs.kv_cache, inputs.block_table, inputs.seqlens, SCALE, causal
    )


@pytest.fixture
def checked_inputs():
    return make_decode_inputs([0, 3, 150], 2, 4, generator=torch.Generator().manual_seed(7))


def test_check_accepts_the_reference(checked_inputs):
    run_check(*reference_as_kernel_output(checked_inputs), checked_inputs)


def test_check_rejects_an_off_by_one_length(checked_inputs):
    # The kernel's answer for one cache token fewer in the last sequence.
    shorter = checked_inputs.seqlens.clone()
    shorter[2] -= 1
    out, lse = mla_decode_reference(
        checked_inputs.q, checked_inputs.kv_cache, checked_inputs.block_table, shorter, SCALE
    )
    with pytest.raises(AssertionError, match="error|cosine"):
        run_check(out.bfloat16(), lse, checked_inputs)


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda out, lse: out[2, 1, 3, 7].fill_(math.nan), "out has NaN"),
        (lambda out, lse: lse[1, 0, 0].fill_(math.nan), "lse has NaN"),
        (lambda out, lse: lse[0, 0, 0].fill_(0.0), "empty rows"),
        (lambda out, lse: out[0, 1, 2, 0].fill_(1.0), "must be 0"),
        (lambda out, lse: out[2, 0, 1].copy_(out[2, 0, 1].flip(0) * 0.01), "max error"),
        (lambda out, lse: lse[2, 1, 3].add_(0.05), "lse relative error"),
    ],
    ids=[
        "out_nan",
        "lse_nan",
        "lse_not_neg_inf",
        "empty_row_nonzero",
        "wrong_row",
        "lse",
    ],
)
def test_check_rejects(checked_inputs, corrupt, message):
    out, lse = reference_as_kernel_output(checked_inputs)
    corrupt(out, lse)
    with pytest.raises(AssertionError, match=message):
        run_check(out, lse, checked_inputs)
