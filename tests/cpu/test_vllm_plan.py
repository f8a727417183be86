"""The metadata builder's mapping from vLLM's batch to the kernel's arguments, on CPU tensors.

Each case builds vLLM's CommonAttentionMetadata the way vLLM's GPU model runner does, splits
it with vLLM's own split_decodes_and_prefills and slices it as vLLM's MLA builder does before
it calls our ``_build_decode``; then checks what `plan.map_decode` gives the kernel, and runs
the fp32 reference on it where the result matters (CUDA-graph padding).
"""

import math

import pytest
import torch

pytest.importorskip("vllm")

from mla_backend import ops  # noqa: E402
from mla_backend.reference import make_decode_inputs, mla_decode_reference  # noqa: E402
from mla_backend.vllm import compat  # noqa: E402
from mla_backend.vllm.plan import (  # noqa: E402
    allocate_decode_buffers,
    decode_query_lens,
    decode_query_view,
    map_decode,
)

HEADS = 16
NUM_SMS = 8  # a small simulated GPU
NULL_BLOCK_ID = 0  # vLLM's block-table filler for CUDA-graph padding


def num_parts_for_rows(rows: int) -> int:
    """ops.num_decode_parts on a simulated GPU with NUM_SMS SMs."""
    return max(1, NUM_SMS // math.ceil(rows / ops.rows_per_cta(rows)))


def buffers(max_batch=8, max_s_q=4, heads=HEADS, varlen_num_parts=None):
    return allocate_decode_buffers(
        max_batch=max_batch,
        max_s_q=max_s_q,
        num_heads=heads,
        num_parts_for_rows=num_parts_for_rows,
        device="cpu",
        varlen_num_parts=varlen_num_parts,
    )


def vllm_decode_slice(
    query_lens, seq_lens, *, threshold, num_real=None, max_pages=4, require_uniform=True
):
    """What vLLM's MLA builder passes to ``_build_decode`` for this batch.

    ``num_real`` < len(query_lens) marks the rest as CUDA-graph padding (query length 0,
    seq len 0, null block-table rows), as the GPU model runner pads a full-graph batch.
    """
    num_reqs = len(query_lens)
    num_real = num_reqs if num_real is None else num_real
    qsl = torch.zeros(num_reqs + 1, dtype=torch.int32)
    qsl[1:] = torch.cumsum(torch.tensor(query_lens, dtype=torch.int32), 0)
    # The runner pads tokens too: a padded uniform batch has num_reqs * uniform_len tokens.
    num_tokens = num_reqs * query_lens[0] if num_real < num_reqs else int(qsl[-1])
    block_table = torch.arange(num_reqs * max_pages, dtype=torch.int32).view(num_reqs, max_pages)
    block_table[num_real:] = NULL_BLOCK_ID
    common = compat.CommonAttentionMetadata(
        query_start_loc=qsl,
        query_start_loc_cpu=qsl,
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        num_reqs=num_reqs,
        num_actual_tokens=num_tokens,
        max_query_len=max(query_lens),
        max_seq_len=max(seq_lens),
        block_table_tensor=block_table,
        slot_mapping=torch.zeros(num_tokens, dtype=torch.int64),
    )
    num_decodes, _, num_decode_tokens, _ = compat.split_decodes_and_prefills(
        common, decode_threshold=threshold, require_uniform=require_uniform
    )
    return (
        common.block_table_tensor[:num_decodes],
        common.seq_lens[:num_decodes],
        common.query_start_loc_cpu[: num_decodes + 1],
        num_decode_tokens,
    )


def check_views(args, bufs, batch, s_q):
    parts = ops.parts_for_batch(num_parts_for_rows(s_q * HEADS), s_q * HEADS, batch)
    assert args.batch == batch and args.s_q == s_q and args.causal == (s_q > 1)
    assert args.rows == s_q * HEADS  # what the builder hands get_decode_metadata
    assert args.part_meta.shape == (parts, 4)
    assert args.batch_meta.shape == (batch, 4)
    assert args.o_accum.shape == (2 * parts, s_q * HEADS, 512) and args.o_accum.is_contiguous()
    assert args.lse_accum.shape == (2 * parts, s_q * HEADS) and args.lse_accum.is_contiguous()
    for view, buf in [
        (args.part_meta, bufs.part_meta),
        (args.batch_meta, bufs.batch_meta),
        (args.o_accum, bufs.o_accum),
        (args.lse_accum, bufs.lse_accum),
    ]:
        assert view.data_ptr() == buf.data_ptr()  # same address every step: graph-safe


def test_decode_only():
    bufs = buffers()
    block_table, seq_lens, qsl, tokens = vllm_decode_slice([1, 1, 1], [5, 64, 130], threshold=1)
    args = map_decode(block_table, seq_lens, tokens, bufs)
    check_views(args, bufs, batch=3, s_q=1)
    assert args.block_table.data_ptr() == block_table.data_ptr()  # vLLM's tensors, no copies
    assert args.seq_lens.data_ptr() == seq_lens.data_ptr()


def test_mixed_prefill_and_decode():
    # vLLM reorders decodes to the front; the builder gets only them.
    query_lens, seq_lens = [1, 1, 7, 20], [9, 300, 7, 50]
    block_table, seq_lens_d, qsl, tokens = vllm_decode_slice(query_lens, seq_lens, threshold=1)
    args = map_decode(block_table, seq_lens_d, tokens, buffers())
    assert args.batch == 2 and args.s_q == 1
    assert args.seq_lens.tolist() == [9, 300]
    assert args.block_table.tolist() == torch.arange(8).view(2, 4).tolist()
    q = torch.randn(sum(query_lens), HEADS, 576)
    view = decode_query_view(q[:tokens], args)  # forward_impl gives forward_mqa q[:tokens]
    assert torch.equal(view[:, 0], q[:2])


def test_query_halves_stay_views():
    # forward_mqa gets (q_nope absorbed, q_pe) from vLLM: the absorbed half a transpose of the
    # [h, tokens, 512] bmm output, q_pe a slice of the [tokens, h, 192] projection.
    query_lens, seq_lens = [2, 2, 2], [9, 300, 70]
    block_table, seq_lens_d, qsl, tokens = vllm_decode_slice(query_lens, seq_lens, threshold=2)
    args = map_decode(block_table, seq_lens_d, tokens, buffers())
    nope = torch.randn(HEADS, tokens, 512).transpose(0, 1)
    proj = torch.randn(tokens, HEADS, 192)
    q_pe = proj[..., 128:]
    nope_view = decode_query_view(nope, args, 512)
    pe_view = decode_query_view(q_pe, args, 64)
    assert nope_view.shape == (3, 2, HEADS, 512) and pe_view.shape == (3, 2, HEADS, 64)
    assert nope_view.data_ptr() == nope.data_ptr() and pe_view.data_ptr() == q_pe.data_ptr()
    assert nope_view.stride()[2:] == nope.stride()[1:]  # heads and dims keep their strides
    for b in range(3):
        assert torch.equal(nope_view[b], nope[qsl[b] : qsl[b + 1]])
        assert torch.equal(pe_view[b], q_pe[qsl[b] : qsl[b + 1]])
    with pytest.raises(ValueError, match="dim 576"):
        decode_query_view(nope, args)  # a half is not a whole query


@pytest.mark.parametrize(
    ("query_lens", "num_decodes"),
    [([4, 4, 4], 3), ([4, 4, 1, 9], 2), ([3, 3, 4], 2), ([1, 1, 4], 2)],
    ids=["uniform", "then-short-and-prefill", "short-first", "single-then-spec"],
)
def test_several_query_tokens_per_request(query_lens, num_decodes):
    # speculative decoding with 3 draft tokens: decodes are up to 4 tokens, all the same length
    seq_lens = [40 + 30 * i for i in range(len(query_lens))]
    block_table, seq_lens_d, qsl, tokens = vllm_decode_slice(query_lens, seq_lens, threshold=4)
    bufs = buffers()
    args = map_decode(block_table, seq_lens_d, tokens, bufs)
    s_q = query_lens[0]
    check_views(args, bufs, batch=num_decodes, s_q=s_q)
    q = torch.randn(sum(query_lens), HEADS, 576)
    view = decode_query_view(q[:tokens], args)
    for b in range(num_decodes):
        assert torch.equal(view[b], q[qsl[b] : qsl[b + 1]])


def test_varlen_decode_batch():
    # ngram drafts of different lengths (QueryLenSupport.VARLEN): all four requests decode, on
    # vLLM's query_start_loc, with s_q the longest request; queries stay [T, h, 576].
    query_lens, seq_lens = [2, 4, 1, 3, 9], [40, 300, 7, 64, 90]
    block_table, seq_lens_d, qsl, tokens = vllm_decode_slice(
        query_lens, seq_lens, threshold=4, require_uniform=False
    )
    assert seq_lens_d.shape[0] == 4 and tokens == 10  # the 9-token request is a prefill
    bufs = buffers()
    args = map_decode(block_table, seq_lens_d, tokens, bufs, qsl, qsl)
    check_views(args, bufs, batch=4, s_q=4)
    assert args.q_start.tolist() == [0, 2, 6, 7, 10]
    assert args.q_start.data_ptr() == qsl.data_ptr()  # vLLM's tensor, no copy
    q = torch.randn(tokens, HEADS, 576)
    assert decode_query_view(q, args) is q
    with pytest.raises(ValueError, match="dim 512"):
        decode_query_view(q, args, 512)
    with pytest.raises(ValueError, match="query_start_loc"):
        map_decode(block_table, seq_lens_d, tokens, bufs, qsl, None)


@pytest.mark.parametrize(
    ("query_lens", "num_real", "varlen"),
    [
        ([4, 4, 4], None, False),
        ([4, 4, 0, 0], 2, False),
        ([1, 2], None, True),
        ([3, 1], None, True),
    ],
    ids=["uniform", "graph-padded", "short-first", "long-first"],
)
def test_uniform_batches_keep_the_uniform_kernel(query_lens, num_real, varlen):
    # Equal lengths, and a CUDA-graph-padded uniform batch (padding has query length 0, the
    # runner pads its tokens), map as before: the graph captured for s_q tokens per request.
    block_table, seq_lens_d, qsl, tokens = vllm_decode_slice(
        query_lens, [50] * len(query_lens), threshold=4, num_real=num_real, require_uniform=False
    )
    args = map_decode(block_table, seq_lens_d, tokens, buffers(), qsl, qsl)
    assert (args.q_start is not None) == varlen
    assert args.s_q == max(query_lens) and args.causal == (max(query_lens) > 1)
    assert args.rows == max(query_lens) * HEADS


def test_single_request_takes_half_the_parts():
    # One request of 2 tokens x 16 heads = 32 rows (one 64-row tile): half the parts, views of
    # the same buffers; two requests: all of them.
    bufs = buffers()
    for num in (1, 2):
        block_table, seq_lens_d, _, tokens = vllm_decode_slice([2] * num, [90] * num, threshold=2)
        args = map_decode(block_table, seq_lens_d, tokens, bufs)
        full = num_parts_for_rows(2 * HEADS)
        assert args.part_meta.shape[0] == (full // 2 if num == 1 else full)
        check_views(args, bufs, batch=num, s_q=2)


def test_padded_cuda_graph_batch():
    # 2 real requests of 4 query tokens, padded to the captured batch of 4.
    real_lens = [70, 9]
    block_table, seq_lens, qsl, tokens = vllm_decode_slice(
        [4, 4, 0, 0], real_lens + [0, 0], threshold=4, num_real=2
    )
    bufs = buffers()
    args = map_decode(block_table, seq_lens, tokens, bufs)
    check_views(args, bufs, batch=4, s_q=4)

    # The kernel's semantics (reference) on exactly these arguments: padding is inert.
    inputs = make_decode_inputs(
        real_lens + [0, 0],
        s_q=4,
        h_q=HEADS,
        dtype=torch.float32,
        generator=torch.Generator().manual_seed(0),
    )
    table = inputs.block_table.clone()
    table[2:] = NULL_BLOCK_ID
    out, lse = mla_decode_reference(
        inputs.q, inputs.kv_cache, table, args.seq_lens, 0.1, args.causal
    )
    assert torch.all(out[2:] == 0) and torch.all(lse[2:] == -math.inf)
    unpadded_out, unpadded_lse = mla_decode_reference(
        inputs.q[:2], inputs.kv_cache, inputs.block_table[:2], inputs.seqlens[:2], 0.1, True
    )
    torch.testing.assert_close(out[:2], unpadded_out)
    torch.testing.assert_close(lse[:2], unpadded_lse)


def test_buffers_cover_every_query_length():
    bufs = buffers(max_batch=5, max_s_q=4)
    assert bufs.max_s_q == 4 and bufs.batch_meta.shape == (5, 4)
    assert bufs.part_meta.shape[0] == max(num_parts_for_rows(s * HEADS) for s in range(1, 5))
    most = max(2 * num_parts_for_rows(s * HEADS) * s * HEADS for s in range(1, 5))
    assert bufs.o_accum.numel() == most * 512 and bufs.lse_accum.numel() == most


@pytest.mark.parametrize(
    ("query_lens", "tokens", "expected"),
    [
        ([3, 3, 3], 9, None),  # uniform
        ([3, 3, 0, 0], 12, None),  # CUDA-graph padded: the runner pads the tokens
        ([0, 0], 0, None),  # all padding
        ([3, 1, 3], 7, [3, 1, 3]),
        ([2, 2, 0], 4, [2, 2, 0]),  # not padded to 3 x 2 tokens: varlen
        ([1, 3, 2, 2], 8, [1, 3, 2, 2]),  # 8 tokens split evenly, yet not uniform
    ],
)
def test_decode_query_lens(query_lens, tokens, expected):
    qsl = torch.tensor([0, *query_lens], dtype=torch.int32).cumsum(0).to(torch.int32)
    assert decode_query_lens(qsl, len(query_lens), tokens) == expected
    assert decode_query_lens(None, len(query_lens), tokens) is None
    assert decode_query_lens(qsl, 0, 0) is None


def test_varlen_decode_takes_the_varlen_parts():
    # A varlen decode runs on one part per SM (ops.num_varlen_decode_parts), a uniform one on the
    # uniform count of its s_q (1 part for 4 x 128 rows on this 8-SM GPU); the buffers hold both.
    heads = 128
    bufs = buffers(heads=heads, varlen_num_parts=NUM_SMS)
    assert bufs.varlen_num_parts == NUM_SMS and bufs.part_meta.shape[0] == NUM_SMS
    most = 2 * NUM_SMS * 4 * heads
    assert bufs.o_accum.numel() == most * 512 and bufs.lse_accum.numel() == most
    for query_lens, varlen in [([2, 4, 1, 3], True), ([4, 4], False), ([1, 2], True)]:
        block_table, seq_lens_d, qsl, tokens = vllm_decode_slice(
            query_lens, [50] * len(query_lens), threshold=4, require_uniform=False
        )
        args = map_decode(block_table, seq_lens_d, tokens, bufs, qsl, qsl)
        assert (args.q_start is not None) == varlen
        parts = NUM_SMS if varlen else num_parts_for_rows(args.s_q * heads)
        rows = args.s_q * heads
        assert args.part_meta.shape == (parts, 4)
        assert args.o_accum.shape == (2 * parts, rows, 512)
        assert args.lse_accum.shape == (2 * parts, rows)
    # Longest request one token, the others none: varlen on s_q = 1, still in the buffers.
    qsl = torch.tensor([0, 1, 2, 2], dtype=torch.int32)
    args = map_decode(torch.zeros(3, 2, dtype=torch.int32), torch.full((3,), 9, dtype=torch.int32),
                      2, bufs, qsl, qsl)  # fmt: skip
    assert args.q_start is not None and args.s_q == 1
    assert args.o_accum.shape == (2 * NUM_SMS, heads, 512)


def test_varlen_parts_need_several_query_tokens():
    # max_s_q = 1: no decode batch is varlen, so no workspace for it.
    bufs = buffers(max_s_q=1, heads=128, varlen_num_parts=NUM_SMS)
    assert bufs.varlen_num_parts == 0 and bufs.part_meta.shape[0] == num_parts_for_rows(128)
    with pytest.raises(ValueError, match="varlen_num_parts"):
        buffers(varlen_num_parts=0)


def test_varlen_parts_fit_the_workspace_budget():
    # 16 query tokens x 128 heads: a part's two pieces of 2048 rows take 4.2 MB; a 10 MB budget
    # leaves 2 varlen parts, never fewer than the uniform count of s_q = 16 (1 here).
    per_part = 2 * 16 * 128 * (512 * 2 + 4)
    bufs = allocate_decode_buffers(
        max_batch=4, max_s_q=16, num_heads=128, num_parts_for_rows=num_parts_for_rows,
        device="cpu", varlen_num_parts=NUM_SMS, varlen_workspace_bytes=10 << 20,
    )  # fmt: skip
    assert bufs.varlen_num_parts == (10 << 20) // per_part == 2
    bufs = allocate_decode_buffers(
        max_batch=4, max_s_q=16, num_heads=128, num_parts_for_rows=num_parts_for_rows,
        device="cpu", varlen_num_parts=NUM_SMS, varlen_workspace_bytes=1,
    )  # fmt: skip
    assert bufs.varlen_num_parts == bufs.num_parts[-1] == 1
    # A varlen step of at most 2 tokens takes its uniform count: 2 parts for 2 x 128 rows.
    qsl = torch.tensor([0, 1, 3], dtype=torch.int32)
    args = map_decode(torch.zeros(2, 2, dtype=torch.int32), torch.full((2,), 9, dtype=torch.int32),
                      3, bufs, qsl, qsl)  # fmt: skip
    assert args.q_start is not None and args.part_meta.shape[0] == num_parts_for_rows(256) == 2


@pytest.mark.parametrize(
    ("batch", "tokens", "match"),
    [
        (9, 9, "exceeds the buffers"),  # batch > max_batch
        (2, 10, "exceeds the buffers"),  # s_q > max_s_q
        (2, 3, "do not split evenly"),
    ],
)
def test_rejects_what_the_buffers_cannot_take(batch, tokens, match):
    block_table = torch.zeros(batch, 2, dtype=torch.int32)
    seq_lens = torch.full((batch,), 5, dtype=torch.int32)
    with pytest.raises(ValueError, match=match):
        map_decode(block_table, seq_lens, tokens, buffers())


def test_rejects_int64_seq_lens():
    with pytest.raises(ValueError, match="int32"):
        map_decode(torch.zeros(1, 2, dtype=torch.int32), torch.tensor([5]), 1, buffers())
