"""The fp32 PyTorch reference for paged MLA decode: the single source of truth for semantics.

Also the accuracy rule a kernel's output is held to, the naive dense attention the reference is
tested against, and the input builder that makes bugs loud (NaN in unused cache slots, permuted
pages, out-of-range unused page ids).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

HEAD_DIM_QK = 576  # K: the whole latent vector (512 compressed KV + 64 rope)
HEAD_DIM_V = 512  # V: the first 512 dims of the same vector
PAGE_SIZE = 64  # tokens per KV-cache page
# Written into block-table entries past ceil(seqlen / 64): reading one faults or shows NaN.
OUT_OF_RANGE_PAGE = 1_000_000_000


def mla_decode_reference(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    block_table: torch.Tensor,
    seqlens: torch.Tensor,
    softmax_scale: float,
    causal: bool = True,
    *,
    compute_dtype: torch.dtype = torch.float32,
    q_start: Sequence[int] | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paged MLA decode, computed plainly (reads ``seqlens`` on the host; not for the hot path).

    Args:
        q: ``[B, s_q, h_q, 576]``, any float dtype, any strides.
        kv_cache: ``[num_pages, 64, 576]`` or ``[num_pages, 64, 1, 576]``; K is all 576 dims of a
            token's vector, V its first 512.
        block_table: ``[B, max_pages]`` integer page ids; only the first ``ceil(L / 64)`` entries
            of row ``b`` are read, so the rest may hold anything.
        seqlens: ``[B]`` integer cache length ``L`` per sequence, the ``s_q`` new tokens included.
        softmax_scale: multiplies ``q . k`` before the softmax.
        causal: query token ``i`` sees cache positions ``< L - s_q + i + 1``; otherwise all ``< L``.
        compute_dtype: dtype of the arithmetic; fp32 is the reference, bf16 gives the
            same-precision baseline of the tests' error rule.
        q_start: varlen queries: ``[B + 1]`` token offsets, sequence ``b``'s query tokens are
            ``q[q_start[b]:q_start[b + 1]]`` of a ``[T, h_q, 576]`` q (``q_len`` of them; causal:
            token ``i`` sees positions ``< L - q_len + i + 1``); out and lse are then
            ``[T, h_q, 512]`` and ``[T, h_q]``. Tokens of no sequence get ``0`` / ``-inf`` here
            as placeholders; ``ops.mla_decode`` leaves them unwritten (compare sequences' tokens).

    Returns:
        ``out`` fp32 ``[B, s_q, h_q, 512]`` and ``lse`` fp32 ``[B, s_q, h_q]``, the natural-log
        sum of exp of the scaled scores. A row that sees no position gets ``out = 0`` and
        ``lse = -inf``. Cache slots at positions ``>= L`` are never read, so NaN there is harmless.
    """
    if q_start is not None:
        starts = [int(x) for x in (q_start.tolist() if torch.is_tensor(q_start) else q_start)]
        if len(starts) != seqlens.shape[0] + 1:
            raise ValueError(f"q_start needs {seqlens.shape[0] + 1} offsets, got {len(starts)}")
        out = torch.zeros(*q.shape[:-1], HEAD_DIM_V, dtype=torch.float32, device=q.device)
        lse = torch.full(q.shape[:-1], -math.inf, dtype=torch.float32, device=q.device)
        for b in range(seqlens.shape[0]):
            lo, hi = starts[b], starts[b + 1]
            if hi <= lo:
                continue
            o, s = mla_decode_reference(
                q[None, lo:hi], kv_cache, block_table[b : b + 1], seqlens[b : b + 1],
                softmax_scale, causal, compute_dtype=compute_dtype,
            )  # fmt: skip
            out[lo:hi], lse[lo:hi] = o[0], s[0]
        return out, lse
    batch, s_q, h_q, head_dim = q.shape
    if head_dim != HEAD_DIM_QK:
        raise ValueError(f"q last dim must be {HEAD_DIM_QK}, got {head_dim}")
    out = torch.zeros(batch, s_q, h_q, HEAD_DIM_V, dtype=torch.float32, device=q.device)
    lse = torch.full((batch, s_q, h_q), -math.inf, dtype=torch.float32, device=q.device)
    for b, length in enumerate(seqlens.tolist()):
        if length < 0:
            raise ValueError(f"seqlens[{b}] = {length} is negative")
        if length == 0:
            continue
        num_pages = math.ceil(length / PAGE_SIZE)
        page_ids = block_table[b, :num_pages].long()
        kv = kv_cache[page_ids].reshape(num_pages * PAGE_SIZE, HEAD_DIM_QK)[:length]
        out[b], lse[b] = _attend(q[b], kv, softmax_scale, causal, compute_dtype)
    return out, lse


CUT_COST_PAGES = 4  # kCutCostPages: what the planner charges a part boundary inside a sequence
PLAN_SEARCH_MAX_SEQS = 4096  # kSmemSeqs: larger batches take the equal part size
MAX_PLAN_UNITS = 1 << 30  # kMaxPlanUnits: the planner's unit sums stay in int32


def plan_charge(batch: int, rows: int) -> tuple[int, int]:
    """What the planner charges a sequence besides its pages, in page units: ``(head, tail)``,
    before and after its pages (params.h ``plan_charge``, measured in docs/perf.md v17-v18).

    ``rows`` is ``s_q * h_q`` of the decode (0: not known). A batch of one sequence: (1, 0); up
    to 32 rows: (2, 1); 33-64 rows or not known: (4, 0); more (two or more 64-row tiles): (2, 2).
    """
    if batch <= 1:
        return 1, 0
    if rows <= 0:
        return 4, 0
    if rows <= 32:
        return 2, 1
    if rows <= 64:
        return 4, 0
    return 2, 2


def split_kv_plan(
    seqlens: Sequence[int], num_parts: int, rows: int = 0
) -> tuple[list[list[int]], list[list[int]]]:
    """The split-KV plan ``get_decode_metadata(..., rows)`` computes, in Python (docs/design.md).

    Returns ``(part_meta, batch_meta)`` as lists of ``[b_begin, b_end, S_p, E_p]`` per part and
    ``[page0_off, first_part, num_splits, split_slot]`` per sequence, the values the GPU writes.
    """
    if num_parts < 1:
        raise ValueError(f"num_parts must be >= 1, got {num_parts}")
    # Sequence b takes `head` units, its pages, then `tail` units (plan_charge). Planned pages:
    # capped so that the batch's units fit MAX_PLAN_UNITS (only garbage lengths, over 2^36
    # tokens in all, reach the cap; the kernel still runs each sequence to its end).
    head, tail = plan_charge(len(seqlens), rows)
    fixed = head + tail
    cap = max(MAX_PLAN_UNITS // max(len(seqlens), 1) - fixed, 1)
    pages = [min(math.ceil(max(n, 0) / PAGE_SIZE), cap) for n in seqlens]
    ends, unit = [], 0  # ends: the end of each sequence's pages
    for p in pages:
        unit += p + fixed
        ends.append(unit - tail)
    total = unit
    # The unit of a sequence's first page, or the unit before its end when it has none.
    firsts = [e - p if p > 0 else e - head for e, p in zip(ends, pages, strict=True)]
    per_part = max(-(-total // num_parts), 1)
    if len(seqlens) <= PLAN_SEARCH_MAX_SEQS and 4 * len(seqlens) >= num_parts:

        def price(t: int) -> tuple[int, int, int]:
            cuts = sum((e - 1) // t - f // t for e, f in zip(ends, firsts, strict=True))
            return t + CUT_COST_PAGES * -(-cuts // -(-total // t)), cuts, t

        per_part = min(range(per_part, per_part + 16), key=price)
    batch_meta, spans, slot = [], [], 0
    for e, f, p in zip(ends, firsts, pages, strict=True):
        first, last = f // per_part, (e - 1) // per_part
        splits = last - first + 1
        batch_meta.append([e - p, first, splits, slot])
        slot += splits if splits > 1 else 0
        spans.append((first, last))
    part_meta = []
    for q in range(num_parts):
        touching = [b for b, (lo, hi) in enumerate(spans) if lo <= q <= hi]
        b_range = [touching[0], touching[-1] + 1] if touching else [0, 0]
        part_meta.append(b_range + [min(q * per_part, total), min((q + 1) * per_part, total)])
    return part_meta, batch_meta


def check_decode_output(
    out: torch.Tensor,
    lse: torch.Tensor,
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    block_table: torch.Tensor,
    seqlens: torch.Tensor,
    softmax_scale: float,
    causal: bool,
    *,
    out_atol: float = 1e-3,
    mean_atol: float = 1e-4,
    lse_rtol: float = 1e-3,
    min_cosine: float = 0.999,
    q_start: Sequence[int] | torch.Tensor | None = None,
) -> None:
    """Raise AssertionError unless a kernel's ``out`` / ``lse`` (``[B, s_q, h_q]``) are right
    (``[T, h_q]`` with ``q_start``: varlen, as in ``mla_decode_reference``).

    FlashAttention-3's rule: the max error against the fp32 reference is at most twice that of
    the same computation in bf16 PyTorch, plus ``out_atol`` (and likewise the mean error, plus
    ``mean_atol``, which catches a small error spread over many elements); each row's cosine
    similarity with the reference exceeds ``min_cosine``; and
    ``|lse - ref| <= lse_rtol * (1 + |ref|)``. Empty rows must be exactly ``out = 0``,
    ``lse = -inf``, and nothing may be NaN (fill the outputs with NaN before the call to catch
    unwritten elements).
    """
    args = (q, kv_cache, block_table, seqlens, softmax_scale, causal)
    ref_out, ref_lse = mla_decode_reference(*args, q_start=q_start)
    low_out, _ = mla_decode_reference(*args, compute_dtype=torch.bfloat16, q_start=q_start)

    assert not out.isnan().any(), "out has NaN: an element was not written, or NaN leaked in"
    assert not lse.isnan().any(), "lse has NaN: an element was not written, or NaN leaked in"
    empty = torch.isneginf(ref_lse)
    assert torch.equal(torch.isneginf(lse), empty), "lse = -inf must mark exactly the empty rows"
    assert (out[empty] == 0).all(), "rows that see no position must be 0"
    if empty.all():
        return

    err = (out.float() - ref_out).abs()
    baseline = (low_out - ref_out).abs()
    assert err.max() <= 2 * baseline.max() + out_atol, (
        f"max error {err.max().item():.3g}, bf16 PyTorch {baseline.max().item():.3g}"
    )
    assert err.mean() <= 2 * baseline.mean() + mean_atol, (
        f"mean error {err.mean().item():.3g}, bf16 PyTorch {baseline.mean().item():.3g}"
    )
    cosine = torch.nn.functional.cosine_similarity(
        out[~empty].float(), ref_out[~empty], dim=-1
    ).min()
    assert cosine.item() > min_cosine, f"min row cosine similarity {cosine.item():.6f}"
    lse_err = ((lse - ref_lse)[~empty].abs() / (1 + ref_lse[~empty].abs())).max()
    assert lse_err.item() <= lse_rtol, f"lse relative error {lse_err.item():.3g}"


def _attend(
    q: torch.Tensor, kv: torch.Tensor, scale: float, causal: bool, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """One sequence: q ``[s_q, h_q, 576]``, kv ``[L, 576]`` -> out ``[s_q, h_q, 512]``, lse."""
    s_q, length = q.shape[0], kv.shape[0]
    k, v = kv.to(dtype), kv[:, :HEAD_DIM_V].to(dtype)
    scores = torch.einsum("shd,ld->shl", q.to(dtype), k) * scale
    visible = visible_positions(s_q, length, causal, q.device)[:, None, :]  # [s_q, 1, L]
    scores = scores.masked_fill(~visible, -math.inf)
    lse = torch.logsumexp(scores, dim=-1)
    # A row with nothing visible has lse = -inf and exp(-inf - -inf) = NaN: mask after the exp.
    probs = torch.exp(scores - lse[..., None]).masked_fill(~visible, 0.0)
    out = torch.einsum("shl,lv->shv", probs, v)
    return out.float(), lse.float()


def varlen_queries(q: torch.Tensor, q_lens: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``q_lens[b]`` query tokens of each sequence of a ``[B, s_q, h_q, D]`` q, as the
    varlen layout: ``q`` ``[T, h_q, D]`` (contiguous) and ``q_start`` ``[B + 1]`` int32."""
    if len(q_lens) != q.shape[0] or any(n < 0 or n > q.shape[1] for n in q_lens):
        raise ValueError(f"q_lens {list(q_lens)} do not fit q {tuple(q.shape)}")
    flat = torch.cat([q[b, :n] for b, n in enumerate(q_lens)]).contiguous()
    starts = [0]
    for n in q_lens:
        starts.append(starts[-1] + n)
    return flat, torch.tensor(starts, dtype=torch.int32, device=q.device)


def visible_positions(s_q: int, length: int, causal: bool, device=None) -> torch.Tensor:
    """Bool ``[s_q, L]``: which cache positions each query token of the sequence sees."""
    pos = torch.arange(length, device=device)
    if not causal:
        return (pos < length).expand(s_q, length)
    limit = length - s_q + 1 + torch.arange(s_q, device=device)
    return pos[None, :] < limit[:, None]


def naive_dense_attention(
    q: torch.Tensor, kv: torch.Tensor, softmax_scale: float, causal: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fp64 attention of one sequence over its dense cache, one query token at a time.

    q ``[s_q, h_q, 576]``, kv ``[L, 576]`` -> out fp64 ``[s_q, h_q, 512]``, lse fp64
    ``[s_q, h_q]``. Written independently of the paged reference (prefix slices and softmax
    instead of masks and logsumexp) so the tests can check one against the other.
    """
    s_q, h_q, _ = q.shape
    length = kv.shape[0]
    out = torch.zeros(s_q, h_q, HEAD_DIM_V, dtype=torch.float64, device=q.device)
    lse = torch.full((s_q, h_q), -math.inf, dtype=torch.float64, device=q.device)
    for i in range(s_q):
        seen = length - s_q + i + 1 if causal else length
        if seen <= 0:
            continue
        keys = kv[:seen].double()
        scores = q[i].double() @ keys.T * softmax_scale  # [h_q, seen]
        lse[i] = torch.logsumexp(scores, dim=-1)
        out[i] = torch.softmax(scores, dim=-1) @ keys[:, :HEAD_DIM_V]
    return out, lse


@dataclass
class DecodeInputs:
    """Inputs of one decode call, plus each sequence's cache contents in dense form."""

    q: torch.Tensor  # [B, s_q, h_q, 576]
    kv_cache: torch.Tensor  # [num_pages, 64, 576] or [num_pages, 64, 1, 576]
    block_table: torch.Tensor  # [B, max_pages] int32
    seqlens: torch.Tensor  # [B] int32
    kv: list[torch.Tensor]  # per sequence b: [seqlens[b], 576], what the pages hold


def make_decode_inputs(
    seqlens: Sequence[int],
    s_q: int,
    h_q: int,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    kv_4d: bool = False,
    q_strided: bool = False,
    num_pages: int | None = None,
    max_pages: int | None = None,
    generator: torch.Generator | None = None,
) -> DecodeInputs:
    """Random decode inputs built to make bugs loud.

    Every cache slot that belongs to no sequence (past ``L`` in a last page, or in a page no
    sequence uses) holds NaN; pages are drawn in random order from the whole pool; block-table
    entries past ``ceil(L / 64)`` hold ``OUT_OF_RANGE_PAGE``.

    Args:
        seqlens: cache length per sequence.
        kv_4d: give ``kv_cache`` the ``[num_pages, 64, 1, 576]`` layout.
        q_strided: make ``q`` a non-contiguous view (padded rows, heads and tokens swapped in
            memory); its last dim stays contiguous.
        num_pages: pool size; default: the pages needed plus a few spare.
        max_pages: block-table width; default: one more than the longest sequence needs.
        generator: random source, on ``device``.
    """
    pages_per_seq = [math.ceil(length / PAGE_SIZE) for length in seqlens]
    needed = sum(pages_per_seq)
    num_pages = needed + 3 if num_pages is None else num_pages
    max_pages = max(pages_per_seq, default=0) + 1 if max_pages is None else max_pages
    if num_pages < needed or max_pages < max(pages_per_seq, default=0):
        raise ValueError("num_pages or max_pages too small for seqlens")

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, device=device).to(dtype)

    batch = len(seqlens)
    if q_strided:
        q = randn(batch, h_q, s_q, HEAD_DIM_QK + 64)[..., 32 : 32 + HEAD_DIM_QK].transpose(1, 2)
    else:
        q = randn(batch, s_q, h_q, HEAD_DIM_QK)

    cache = torch.full((num_pages * PAGE_SIZE, HEAD_DIM_QK), math.nan, dtype=dtype, device=device)
    block_table = torch.full(
        (batch, max_pages), OUT_OF_RANGE_PAGE, dtype=torch.int32, device=device
    )
    order = torch.randperm(num_pages, generator=generator, device=device)
    kv, first = [], 0
    for b, (length, n) in enumerate(zip(seqlens, pages_per_seq, strict=True)):
        pages = order[first : first + n]
        first += n
        block_table[b, :n] = pages.int()
        dense = randn(length, HEAD_DIM_QK)
        pos = torch.arange(length, device=device)
        cache[pages[pos // PAGE_SIZE] * PAGE_SIZE + pos % PAGE_SIZE] = dense
        kv.append(dense)

    kv_cache = cache.view(num_pages, PAGE_SIZE, HEAD_DIM_QK)
    if kv_4d:
        kv_cache = kv_cache.unsqueeze(2)
    seqlens_t = torch.tensor(list(seqlens), dtype=torch.int32, device=device)
    return DecodeInputs(q, kv_cache, block_table, seqlens_t, kv)
