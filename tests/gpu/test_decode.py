"""The decode kernel against the fp32 reference on an sm_90 GPU.

Inputs make bugs loud: NaN in every unused cache slot, randomly permuted pages, out-of-range ids
in unused block-table entries, and NaN in out/lse/workspace before the call so an unwritten
element shows. Accuracy: reference.check_decode_output (FlashAttention-3's rule, cosine, LSE).
"""

import math
import random

import pytest
import torch

from mla_backend import ops
from mla_backend.reference import (
    HEAD_DIM_V,
    check_decode_output,
    make_decode_inputs,
    split_kv_plan,
    varlen_queries,
)

pytestmark = pytest.mark.gpu

HEADS = [1, 3, 16, 32, 64, 127, 128]
S_Q = [1, 2, 4]
CAUSAL = [True, False]
SEQLENS = [[0], [1], [63], [64], [65], [113], [4097], [0, 1, 63, 64, 65, 113, 4097, 700]]
SCALE = 192**-0.5  # DeepSeek-V3: 1 / sqrt(qk_nope 128 + qk_rope 64)


def gen(seed: int) -> torch.Generator:
    return torch.Generator(device="cuda").manual_seed(seed)


def run_decode(
    inputs, causal: bool, scale: float = SCALE, num_parts: int | None = None, q_halves=None,
    plan: bool = False, meta: list | None = None,
):  # fmt: skip
    """Metadata + decode into NaN-poisoned buffers; returns (out, lse). q_halves: (q, q_pe) to
    pass instead of inputs.q (the same values, split). plan: the decode call plans for itself,
    into metadata buffers of garbage (-7), which `meta` (a list) receives after the call."""
    batch, s_q, h_q, _ = inputs.q.shape
    rows = s_q * h_q
    if plan:
        if num_parts is None:
            num_parts = ops.num_decode_parts(rows, "cuda", batch=batch)
        part_meta = torch.full((num_parts, 4), -7, dtype=torch.int32, device="cuda")
        batch_meta = torch.full((batch, 4), -7, dtype=torch.int32, device="cuda")
    else:
        part_meta, batch_meta = ops.get_mla_metadata(inputs.seqlens, rows, num_parts=num_parts)
    nan = float("nan")
    out = torch.full((batch, s_q, h_q, HEAD_DIM_V), nan, dtype=torch.bfloat16, device="cuda")
    lse = torch.full((batch, s_q, h_q), nan, device="cuda")
    o_accum, lse_accum = ops.decode_workspace(part_meta.size(0), rows, "cuda")
    o_accum.fill_(nan)
    lse_accum.fill_(nan)
    q, q_pe = q_halves if q_halves is not None else (inputs.q, None)
    ops.mla_decode(
        q, inputs.kv_cache, inputs.block_table, inputs.seqlens, part_meta, batch_meta,
        scale, causal, out, lse, o_accum, lse_accum, q_pe=q_pe, plan=plan,
    )  # fmt: skip
    if meta is not None:
        meta.extend([part_meta, batch_meta])
    return out, lse


def check(out: torch.Tensor, lse: torch.Tensor, inputs, causal: bool, scale: float = SCALE):
    check_decode_output(
        out, lse, inputs.q, inputs.kv_cache, inputs.block_table, inputs.seqlens, scale, causal
    )


@pytest.mark.parametrize("seqlens", SEQLENS, ids=str)
@pytest.mark.parametrize("h_q", HEADS)
@pytest.mark.parametrize("s_q", S_Q)
@pytest.mark.parametrize("causal", CAUSAL)
def test_decode(seqlens, h_q, s_q, causal):
    inputs = make_decode_inputs(seqlens, s_q, h_q, device="cuda", generator=gen(0))
    out, lse = run_decode(inputs, causal)
    check(out, lse, inputs, causal)


def shape_scores(inputs, seqlens, pattern: str) -> None:
    """Make the rope dim 512 of every cached token a ramp over its position (q's dim 512 = 1), so
    that the row max moves by ~0.09 per token in log2 units (~5.8 per page): rising, it is raised
    every page or two; falling, the first page holds it."""
    step = 0.09 / (SCALE * math.log2(math.e))
    for b, length in enumerate(seqlens):
        t = torch.arange(length, device=inputs.kv_cache.device)
        ramp = (t if pattern == "rising" else length - 1 - t).float() * step
        pages = inputs.block_table[b, t // 64].long()
        inputs.kv_cache[pages, t % 64, 512] = ramp.to(inputs.kv_cache.dtype)
    inputs.q[..., 512] = 1.0


@pytest.mark.parametrize("pattern", ["rising", "falling", "large_scale"])
@pytest.mark.parametrize(("s_q", "h_q"), [(1, 16), (2, 128)])
def test_score_ranges(pattern, s_q, h_q):
    """Row maxima that move in small and large steps. The kernel raises a row's running max only
    when a page beats it by more than 2^8 (softmax.cuh, kMaxSlack), so P reaches 256 on the rising
    ramp; a softmax scale of 4 gives scores in the hundreds (nearly one-hot rows)."""
    seqlens = [4097, 700, 64]
    inputs = make_decode_inputs(seqlens, s_q, h_q, device="cuda", generator=gen(3))
    scale = 4.0 if pattern == "large_scale" else SCALE
    if pattern != "large_scale":
        shape_scores(inputs, seqlens, pattern)
    out, lse = run_decode(inputs, causal=True, scale=scale)
    check(out, lse, inputs, causal=True, scale=scale)


@pytest.mark.parametrize("kv_4d", [False, True])
@pytest.mark.parametrize("q_strided", [False, True])
@pytest.mark.parametrize(("s_q", "h_q"), [(1, 16), (4, 128), (2, 3)])
def test_layouts(kv_4d, q_strided, s_q, h_q):
    inputs = make_decode_inputs(
        [200, 0, 64, 1000], s_q, h_q, device="cuda", kv_4d=kv_4d, q_strided=q_strided,
        generator=gen(1),
    )  # fmt: skip
    out, lse = run_decode(inputs, causal=True)
    check(out, lse, inputs, causal=True)


@pytest.mark.parametrize(("s_q", "h_q"), [(1, 2), (3, 8), (1, 16), (2, 32), (1, 64), (4, 128)])
def test_q_tma_matches_cp_async(s_q, h_q):
    """Q tiles come by TMA where h_q divides 64 or is a multiple of it, else by cp.async
    (docs/design.md). A q whose heads are one head broadcast (head stride 0) takes the cp.async
    path, since no tensor map is made over a zero stride; the same values stored densely take
    TMA. Both put the same Q tile in shared memory, so the outputs must agree bit for bit."""
    seqlens = [200, 0, 64, 1000, 4097]
    inputs = make_decode_inputs(seqlens, s_q, h_q, device="cuda", generator=gen(11))
    broadcast = inputs.q[:, :, :1, :].expand(-1, -1, h_q, -1)
    assert broadcast.stride(2) == 0
    dense = broadcast.contiguous()
    out_tma, lse_tma = run_decode(inputs, causal=True, q_halves=(dense, None))
    out_cp, lse_cp = run_decode(inputs, causal=True, q_halves=(broadcast, None))
    check_decode_output(
        out_tma, lse_tma, dense, inputs.kv_cache, inputs.block_table, inputs.seqlens, SCALE, True
    )
    assert torch.equal(out_tma, out_cp)
    assert torch.equal(lse_tma, lse_cp)


def split_query(q: torch.Tensor, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    """q [B, s_q, h, 576] as (latent half, rope half) in a layout a caller may hold, with NaN
    in every element around them that the kernel must not read."""
    batch, s_q, h_q, _ = q.shape
    tokens = batch * s_q
    if layout == "vllm":
        # vLLM: the absorbed q_nope is a transpose of a [h, tokens, 512] bmm output; q_pe a slice
        # of the [tokens, h, 192] projection (nope 128, rope 64).
        nope = torch.full((h_q, tokens, 512), float("nan"), dtype=q.dtype, device=q.device)
        nope.copy_(q[..., :512].reshape(tokens, h_q, 512).transpose(0, 1))
        proj = torch.full((tokens, h_q, 192), float("nan"), dtype=q.dtype, device=q.device)
        proj[..., 128:] = q[..., 512:].reshape(tokens, h_q, 64)
        return (
            nope.transpose(0, 1).unflatten(0, (batch, s_q)),
            proj[..., 128:].unflatten(0, (batch, s_q)),
        )
    if layout == "separate":
        return q[..., :512].contiguous(), q[..., 512:].contiguous()
    assert layout == "views"  # both halves views of the whole q
    return q[..., :512], q[..., 512:]


@pytest.mark.parametrize("layout", ["vllm", "separate", "views"])
@pytest.mark.parametrize(("s_q", "h_q"), [(1, 16), (4, 128), (2, 3), (1, 128), (16, 127)])
def test_split_query(layout, s_q, h_q):
    """q's latent and rope dims passed apart (q_pe) give the result of the whole q."""
    inputs = make_decode_inputs([200, 0, 64, 1000], s_q, h_q, device="cuda", generator=gen(5))
    halves = split_query(inputs.q, layout)
    out, lse = run_decode(inputs, causal=True, q_halves=halves)
    check(out, lse, inputs, causal=True)
    whole_out, whole_lse = run_decode(inputs, causal=True)
    assert torch.equal(out, whole_out) and torch.equal(lse, whole_lse)


def run_varlen(inputs, q_lens, max_q_len, causal=True, num_parts=None, split_pe=False, plan=False):
    """Varlen decode of the first q_lens[b] tokens of each sequence of inputs.q into
    NaN-poisoned buffers; returns (q, q_start, out, lse). plan: as run_decode's."""
    q, q_start = varlen_queries(inputs.q, q_lens)
    tokens, h_q = q.shape[0], q.shape[1]
    rows = max_q_len * h_q
    part_meta, batch_meta = ops.get_mla_metadata(inputs.seqlens, rows, num_parts=num_parts)
    if plan:
        part_meta.fill_(-7)
        batch_meta.fill_(-7)
    nan = float("nan")
    out = torch.full((tokens, h_q, HEAD_DIM_V), nan, dtype=torch.bfloat16, device="cuda")
    lse = torch.full((tokens, h_q), nan, device="cuda")
    o_accum, lse_accum = ops.decode_workspace(part_meta.size(0), rows, "cuda")
    o_accum.fill_(nan)
    lse_accum.fill_(nan)
    halves = (q[..., :512], q[..., 512:]) if split_pe else (q, None)
    ops.mla_decode(
        halves[0], inputs.kv_cache, inputs.block_table, inputs.seqlens, part_meta, batch_meta,
        SCALE, causal, out, lse, o_accum, lse_accum, q_pe=halves[1], q_start=q_start,
        max_q_len=max_q_len, plan=plan,
    )  # fmt: skip
    return q, q_start, out, lse


VARLEN = [
    ([4097, 700, 0, 65, 1, 64], [3, 1, 2, 4, 0, 2], 4),
    ([300, 5000, 129], [1, 2, 1], 3),  # max_q_len above every sequence's count
    ([2000] * 5, [16, 1, 9, 16, 5], 16),
    # Many sequences of mixed query counts (0-4): at 128 heads the parts' sequences need
    # different numbers of row tiles, and many CTAs of the grid have nothing to do.
    ([(37 * i * i) % 3000 for i in range(40)], [(i * 7) % 5 for i in range(40)], 4),
]


@pytest.mark.parametrize(("seqlens", "q_lens", "max_q_len"), VARLEN, ids=str)
@pytest.mark.parametrize("h_q", [3, 16, 128])
@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("num_parts", [None, 1, 500])
def test_varlen(seqlens, q_lens, max_q_len, h_q, causal, num_parts):
    """Sequences with different query counts in one call (q_start): every token's rows are
    written (NaN-poisoned), token i of a sequence of q_len sees < L - q_len + i + 1."""
    inputs = make_decode_inputs(seqlens, max_q_len, h_q, device="cuda", generator=gen(6))
    q, q_start, out, lse = run_varlen(inputs, q_lens, max_q_len, causal, num_parts)
    check_decode_output(
        out, lse, q, inputs.kv_cache, inputs.block_table, inputs.seqlens, SCALE, causal,
        q_start=q_start,
    )  # fmt: skip
    _, _, out_pe, lse_pe = run_varlen(inputs, q_lens, max_q_len, causal, num_parts, split_pe=True)
    assert torch.equal(out, out_pe) and torch.equal(lse, lse_pe)


@pytest.mark.parametrize(
    ("offsets", "written"),
    [([0, 2, 2, 10_000], [1, 1, 1, 1, 0, 0]), ([0, 4, 2, 6], [1, 1, 1, 1, 0, 0])],
    ids=["past-the-end", "decreasing"],
)
def test_varlen_bad_offsets_stay_in_bounds(offsets, written):
    """q_start is device data the op cannot check: offsets out of [0, T] or decreasing are
    clamped (a sequence loses rows), never read or written outside q and out. past-the-end:
    sequence 2 is [2, 6), of which max_q_len = 2 tokens are computed; decreasing: sequence 1
    ([4, 2)) is empty, sequence 0 is [0, 4) and 2 is [2, 6), two tokens each."""
    seqlens, h_q = [300, 700, 90], 16
    inputs = make_decode_inputs(seqlens, 2, h_q, device="cuda", generator=gen(8))
    q, _ = varlen_queries(inputs.q, [2, 2, 2])
    q_start = torch.tensor(offsets, dtype=torch.int32, device="cuda")
    rows = 2 * h_q
    part_meta, batch_meta = ops.get_mla_metadata(inputs.seqlens, rows)
    out = torch.full((6, h_q, HEAD_DIM_V), float("nan"), dtype=torch.bfloat16, device="cuda")
    lse = torch.full((6, h_q), float("nan"), device="cuda")
    o_accum, lse_accum = ops.decode_workspace(part_meta.size(0), rows, "cuda")
    ops.mla_decode(
        q, inputs.kv_cache, inputs.block_table, inputs.seqlens, part_meta, batch_meta, SCALE,
        True, out, lse, o_accum, lse_accum, q_start=q_start, max_q_len=2,
    )  # fmt: skip
    torch.cuda.synchronize()
    assert [int(not t.isnan().any()) for t in out] == written
    if offsets[1] == 2:  # sequence 0 is well formed: its two tokens are right
        check_decode_output(
            out[:2], lse[:2], q[:2], inputs.kv_cache, inputs.block_table[:1],
            inputs.seqlens[:1], SCALE, True, q_start=[0, 2],
        )  # fmt: skip


@pytest.mark.parametrize(("s_q", "h_q"), [(1, 16), (4, 128), (2, 3)])
def test_varlen_with_equal_lengths_is_the_uniform_decode(s_q, h_q):
    seqlens = [200, 0, 64, 1000]
    inputs = make_decode_inputs(seqlens, s_q, h_q, device="cuda", generator=gen(7))
    _, _, out, lse = run_varlen(inputs, [s_q] * len(seqlens), s_q)
    uni_out, uni_lse = run_decode(inputs, causal=True)
    assert torch.equal(out, uni_out.flatten(0, 1)) and torch.equal(lse, uni_lse.flatten(0, 1))


@pytest.mark.parametrize("num_parts", [1, 2, 7, 33, 1000])
@pytest.mark.parametrize("h_q", [16, 128])
def test_any_num_parts_is_correct(num_parts, h_q):
    # More parts than work, one part for everything, and cuts at awkward places.
    seqlens = [5000, 0, 1, 64, 3000, 65, 129, 0, 2000, 7]
    inputs = make_decode_inputs(seqlens, 2, h_q, device="cuda", generator=gen(2))
    out, lse = run_decode(inputs, causal=True, num_parts=num_parts)
    check(out, lse, inputs, causal=True)


# Shapes for each combine kernel by run_combine's rule on an H200 (132 SMs): the per-(sequence,
# row) kernel with 1, 2 or 4 piece groups, with its first pass before the PDL wait (batch x rows
# x groups <= 256, "warm") and without. Expected pieces = min(num_parts / batch,
# (P + c) / ceil(B (P + c) / parts)) for a table of P pages (make_decode_inputs: one more than
# the longest sequence needs) and the plan's charge c (csrc/smxx/combine.cu, expected_pieces).
COMBINE_SHAPES = [
    ([8192], 16, None),  # 66 parts, 65 pieces: <4>, 16 CTAs, warm
    ([1024], 32, None),  # 66 parts, 18 pieces: <2>, 32 CTAs, warm
    ([1024, 700, 1000, 900, 1024, 513, 1024, 64], 16, None),  # 10 pieces: <1>, 128 CTAs, warm
    ([1024, 700, 1000, 900, 1024, 513, 1024, 64], 64, None),  # 10 pieces: <1>, 512 CTAs
    ([4096, 3000, 4096, 4000, 64, 4096, 2500, 4096], 64, None),  # 13 pieces: <2>, 512 CTAs
    ([32768, 20000, 32768, 9000, 32768], 64, 400),  # 73 pieces: <4>, 320 CTAs
]


@pytest.mark.parametrize(("seqlens", "h_q", "num_parts"), COMBINE_SHAPES, ids=str)
def test_combine_kernels(seqlens, h_q, num_parts):
    inputs = make_decode_inputs(seqlens, 1, h_q, device="cuda", generator=gen(9))
    out, lse = run_decode(inputs, causal=True, num_parts=num_parts)
    check(out, lse, inputs, causal=True)


def mixed_lengths(batch: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.choice([0, 1, 64, 65, rng.randrange(1, 3000), rng.randrange(1, 9000)])
            for _ in range(batch)]  # fmt: skip


# plan=True: up to 32 sequences, 2048 rows in all and batch * 4 < num_parts (the equal share) the
# decode and combine kernels plan for themselves; larger calls, and those whose part size the
# planner prices (batch * 4 >= num_parts), run the metadata kernel in the call. Both sides of each
# bound: 32 sequences on 132 parts (every lane of the warp plan) and on 128 parts, 33 sequences,
# 20 sequences on 40 parts.
PLAN_CASES = [
    ([700], 1, 16, None),
    ([1024, 700, 0, 900, 1, 513, 1024, 64], 1, 32, None),
    ([1024, 700, 0, 900, 1, 513, 1024, 64], 2, 128, None),
    ([4096, 3000, 4096, 4000, 64, 4096, 2500, 4096], 1, 64, None),
    ([0, 0, 0], 1, 16, None),
    (mixed_lengths(32, 7), 1, 16, None),
    (mixed_lengths(32, 8), 2, 32, 128),
    (mixed_lengths(33, 1), 1, 16, None),
    (mixed_lengths(64, 6), 1, 32, None),
    (mixed_lengths(64, 2), 2, 64, None),
    (mixed_lengths(64, 3), 1, 128, 7),
    (mixed_lengths(20, 4), 4, 16, 40),
    (mixed_lengths(65, 5), 1, 16, None),
]


@pytest.mark.parametrize(("seqlens", "s_q", "h_q", "num_parts"), PLAN_CASES, ids=str)
def test_plan_in_call(seqlens, s_q, h_q, num_parts):
    inputs = make_decode_inputs(seqlens, s_q, h_q, device="cuda", generator=gen(13))
    meta = []
    out, lse = run_decode(inputs, causal=True, num_parts=num_parts, plan=True, meta=meta)
    check(out, lse, inputs, causal=True)
    # The call wrote the plan get_decode_metadata would have, and the same output follows.
    part_meta, batch_meta = ops.get_mla_metadata(
        inputs.seqlens, s_q * h_q, num_parts=meta[0].size(0)
    )
    assert torch.equal(meta[0], part_meta) and torch.equal(meta[1], batch_meta)
    out2, lse2 = run_decode(inputs, causal=True, num_parts=meta[0].size(0))
    assert torch.equal(out, out2) and torch.equal(lse, lse2)


@pytest.mark.parametrize("h_q", [16, 128])
def test_plan_in_call_varlen(h_q):
    seqlens, q_lens, max_q_len = VARLEN[0]
    inputs = make_decode_inputs(seqlens, max_q_len, h_q, device="cuda", generator=gen(14))
    q, q_start, out, lse = run_varlen(inputs, q_lens, max_q_len, plan=True)
    check_decode_output(
        out, lse, q, inputs.kv_cache, inputs.block_table, inputs.seqlens, SCALE, True,
        q_start=q_start,
    )  # fmt: skip
    _, _, out2, lse2 = run_varlen(inputs, q_lens, max_q_len)
    assert torch.equal(out, out2) and torch.equal(lse, lse2)


@pytest.mark.parametrize("seqlens", [[8192], [0, 0, 0], [1] * 64, [100, 9000, 3, 4097]], ids=str)
def test_batches(seqlens):
    inputs = make_decode_inputs(seqlens, 1, 128, device="cuda", generator=gen(3))
    out, lse = run_decode(inputs, causal=True)
    check(out, lse, inputs, causal=True)


@pytest.mark.parametrize("num_parts", [None, 1])
@pytest.mark.parametrize("h_q", [16, 128])
@pytest.mark.parametrize(("bad_id", "bad_page"), [(-1, 2), (10**6, 2), (-1, 0), (10**6, 1)])
def test_unreadable_page_poisons_only_its_sequence(bad_id, bad_page, h_q, num_parts):
    # A used block-table entry outside the cache: that sequence's out and lse are NaN (split into
    # pieces by the default parts, or one CTA walking every sequence with num_parts=1, where the
    # flag must not leak into the sequences around it); the others are right. The bad page is a
    # sequence's first, second or third, after a sequence of a single page.
    inputs = make_decode_inputs([700, 60, 300, 130], 1, h_q, device="cuda", generator=gen(9))
    inputs.block_table[2, bad_page] = bad_id
    out, lse = run_decode(inputs, causal=True, num_parts=num_parts)
    assert out[2].float().isnan().all() and lse[2].isnan().all()
    keep = [0, 1, 3]
    check_decode_output(
        out[keep], lse[keep], inputs.q[keep], inputs.kv_cache, inputs.block_table[keep],
        inputs.seqlens[keep], SCALE, True,
    )  # fmt: skip


def test_max_query_tokens():
    inputs = make_decode_inputs([3, 16, 17, 500], ops.MAX_S_Q, 8, device="cuda", generator=gen(4))
    out, lse = run_decode(inputs, causal=True)
    check(out, lse, inputs, causal=True)


@pytest.mark.parametrize("num_parts", [None, 5])
def test_deterministic(num_parts):
    inputs = make_decode_inputs([4097, 30, 700], 2, 64, device="cuda", generator=gen(5))
    out1, lse1 = run_decode(inputs, causal=True, num_parts=num_parts)
    out2, lse2 = run_decode(inputs, causal=True, num_parts=num_parts)
    assert torch.equal(out1.view(torch.int16), out2.view(torch.int16))
    assert torch.equal(lse1.view(torch.int32), lse2.view(torch.int32))


def test_empty_batch():
    inputs = make_decode_inputs([], 1, 16, device="cuda")
    out, lse = ops.flash_mla_with_kvcache(
        inputs.q, inputs.kv_cache, inputs.block_table, inputs.seqlens, HEAD_DIM_V
    )
    assert out.shape == (0, 1, 16, HEAD_DIM_V) and lse.shape == (0, 16, 1)


@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("precomputed", [False, True])
def test_flash_mla_with_kvcache(causal, precomputed):
    inputs = make_decode_inputs([300, 5, 64], 2, 16, device="cuda", generator=gen(6))
    metadata = ops.get_mla_metadata(inputs.seqlens, 2 * 16, 1) if precomputed else (None, None)
    out, lse = ops.flash_mla_with_kvcache(
        inputs.q, inputs.kv_cache, inputs.block_table, inputs.seqlens, HEAD_DIM_V, *metadata,
        causal=causal,
    )  # fmt: skip
    assert out.dtype == torch.bfloat16 and out.shape == (3, 2, 16, HEAD_DIM_V)
    assert lse.shape == (3, 16, 2)  # FlashMLA's [B, h_q, s_q]
    check(out, lse.transpose(1, 2), inputs, causal, scale=576**-0.5)


def test_metadata_invariants():
    seqlens = [5000, 0, 1, 64, 3000, 65, 0]
    inputs = make_decode_inputs(seqlens, 1, 16, device="cuda")
    for num_parts in (1, 3, 16, 100):
        part_meta, batch_meta = ops.get_mla_metadata(inputs.seqlens, 16, num_parts=num_parts)
        parts, batches = part_meta.tolist(), batch_meta.tolist()
        assert parts[0][2] == 0, "the first part starts at unit 0"
        for p in range(num_parts - 1):
            assert parts[p][3] == parts[p + 1][2], "parts tile the work end to end"
        for b_begin, b_end, start, end in parts:
            assert 0 <= b_begin <= b_end <= len(seqlens) and start <= end
        for b, (_, first_part, num_splits, _) in enumerate(batches):
            touching = [p for p, part in enumerate(parts) if part[0] <= b < part[1]]
            assert touching == list(range(first_part, first_part + num_splits)), (num_parts, b)


@pytest.mark.parametrize("rows", [0, 16, 64, 128])  # the charges of reference.plan_charge
@pytest.mark.parametrize(
    ("batch", "num_parts"),
    [(1, 132), (7, 3), (8, 132), (33, 132), (40, 66), (64, 66), (64, 132), (65, 132), (300, 1000),
     (512, 132), (513, 132), (513, 3000), (4096, 132), (4097, 132), (5000, 7)],
)  # fmt: skip
def test_metadata_matches_reference(batch, num_parts, rows):
    # Up to 512 sequences the CTA plans with one per thread, up to 4096 with eight, more through
    # global memory: all three paths (test_plan_in_call holds the decode call's own warp plan to
    # this one).
    rng = random.Random(batch * 1000 + num_parts)
    seqlens = [rng.choice([0, 1, 64, 65, 128, rng.randrange(1, 40000)]) for _ in range(batch)]
    seqlens_t = torch.tensor(seqlens, dtype=torch.int32, device="cuda")
    part_meta = torch.full((num_parts, 4), -7, dtype=torch.int32, device="cuda")
    batch_meta = torch.full((batch, 4), -7, dtype=torch.int32, device="cuda")
    ops.get_decode_metadata(seqlens_t, part_meta, batch_meta, rows)
    ref_parts, ref_batches = split_kv_plan(seqlens, num_parts, rows)
    assert batch_meta.tolist() == ref_batches
    assert part_meta.tolist() == ref_parts


@pytest.mark.parametrize("rows", [0, 32, 512])
@pytest.mark.parametrize("batch", [64, 66, 600, 5000])
def test_metadata_garbage_lengths_match_reference(batch, rows):
    # Lengths near INT_MAX sum past int32 in pages: both planners cap the planned pages (through
    # shared memory up to 4096 sequences, global memory beyond) and agree.
    seqlens = ([2**31 - 1, 5, 2**31 - 64, 2**30] * batch)[:batch]
    seqlens_t = torch.tensor(seqlens, dtype=torch.int32, device="cuda")
    part_meta = torch.full((132, 4), -7, dtype=torch.int32, device="cuda")
    batch_meta = torch.full((batch, 4), -7, dtype=torch.int32, device="cuda")
    ops.get_decode_metadata(seqlens_t, part_meta, batch_meta, rows)
    ref_parts, ref_batches = split_kv_plan(seqlens, 132, rows)
    assert batch_meta.tolist() == ref_batches
    assert part_meta.tolist() == ref_parts


@pytest.mark.parametrize("h_q", [16, 128])
@pytest.mark.parametrize(("garbage", "plan"), [(70, False), (6, True)])
def test_garbage_lengths_poison_only_their_sequences(h_q, garbage, plan):
    # Lengths far past the block table (2^31 - 1 tokens, 2^25 pages, in all but two sequences):
    # the plan stays in range, no page past the table is read, the kernel stops at the table's
    # end instead of walking 2^25 pages, those sequences come out NaN and the others are right.
    # plan=True with 8 sequences: the decode call's warp plan caps the lengths as the metadata
    # kernel does (the same plan).
    seqlens = [700, 130] + [1] * garbage
    inputs = make_decode_inputs(seqlens, 1, h_q, device="cuda", generator=gen(12))
    inputs.seqlens[2:] = 2**31 - 1
    meta = []
    out, lse = run_decode(inputs, causal=True, plan=plan, meta=meta)
    if plan:
        part_meta, batch_meta = ops.get_mla_metadata(inputs.seqlens, h_q, num_parts=len(meta[0]))
        assert torch.equal(meta[0], part_meta) and torch.equal(meta[1], batch_meta)
    assert out[2:].float().isnan().all() and lse[2:].isnan().all()
    keep = [0, 1]
    check_decode_output(
        out[keep], lse[keep], inputs.q[keep], inputs.kv_cache, inputs.block_table[keep],
        inputs.seqlens[keep], SCALE, True,
    )  # fmt: skip


def test_opcheck():
    inputs = make_decode_inputs([100, 0, 70], 2, 16, device="cuda", generator=gen(7))
    part_meta, batch_meta = ops.get_mla_metadata(inputs.seqlens, 32)
    torch.library.opcheck(
        torch.ops.mla_backend.get_decode_metadata.default,
        (inputs.seqlens, part_meta.clone(), batch_meta.clone(), 32),
    )
    out = torch.empty(3, 2, 16, HEAD_DIM_V, dtype=torch.bfloat16, device="cuda")
    lse = torch.empty(3, 2, 16, device="cuda")
    o_accum, lse_accum = ops.decode_workspace(part_meta.size(0), 32, "cuda")
    torch.library.opcheck(
        torch.ops.mla_backend.decode.default,
        (inputs.q, inputs.kv_cache, inputs.block_table, inputs.seqlens, part_meta, batch_meta,
         SCALE, True, out, lse, o_accum, lse_accum),
    )  # fmt: skip
    torch.library.opcheck(
        torch.ops.mla_backend.decode.default,
        (inputs.q, inputs.kv_cache, inputs.block_table, inputs.seqlens, part_meta.clone(),
         batch_meta.clone(), SCALE, True, out, lse, o_accum, lse_accum),
        {"plan": True},
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(40))
def test_random_sweep(seed):
    rng = random.Random(seed)
    batch = rng.choice([1, 2, 7, 32, 64])
    seqlens = [
        rng.choice([0, 1, rng.randrange(1, 9000), rng.randrange(1, 600)]) for _ in range(batch)
    ]
    s_q = rng.choice([1, 1, 2, 3, 4, 8, 16])
    h_q = rng.choice([1, 5, 16, 16, 32, 64, 100, 128])
    causal = rng.random() < 0.8
    inputs = make_decode_inputs(
        seqlens, s_q, h_q, device="cuda", kv_4d=rng.random() < 0.5,
        q_strided=rng.random() < 0.3, generator=gen(seed),
    )  # fmt: skip
    scale = rng.choice([SCALE, 576**-0.5, 0.3])
    out, lse = run_decode(inputs, causal, scale=scale)
    check(out, lse, inputs, causal, scale=scale)
