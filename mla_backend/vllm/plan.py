"""What the decode kernel gets from vLLM's decode metadata: pure shape logic and buffer views.

No vLLM and no GPU here, so the mapping is testable on CPU tensors. The metadata builder
allocates `DecodeBuffers` once and calls `map_decode` every step; the impl reshapes q with
`decode_query_view`. Every tensor `map_decode` returns is a view (no copy, no allocation, no
host sync), and views of the same buffers start at the same address, which is what a CUDA
graph replay needs.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass

import torch

from mla_backend.ops import parts_for_batch
from mla_backend.reference import HEAD_DIM_QK, HEAD_DIM_V

Tensor = torch.Tensor

# The most the split-KV workspace of a varlen decode may take (allocate_decode_buffers).
VARLEN_WORKSPACE_BYTES = 256 << 20


@dataclass(frozen=True)
class DecodeBuffers:
    """Preallocated kernel inputs, sized for the largest decode batch of a builder."""

    num_heads: int
    max_batch: int
    num_parts: tuple[int, ...]  # split-KV parts for s_q = 1, 2, ..., max_s_q (a batch of one
    # may take fewer: ops.parts_for_batch)
    varlen_num_parts: int  # split-KV parts of a varlen decode (ops.num_varlen_decode_parts);
    # a varlen decode takes the larger of it and its longest request's uniform count
    part_meta: Tensor  # int32 [most parts, 4]
    batch_meta: Tensor  # int32 [max_batch, 4]
    o_accum: Tensor  # bf16, flat, the largest 2 * parts * rows * 512 over s_q (uniform, varlen)
    lse_accum: Tensor  # fp32, flat, the largest 2 * parts * rows over s_q

    @property
    def max_s_q(self) -> int:
        return len(self.num_parts)


@dataclass(frozen=True)
class DecodeArgs:
    """Everything `mla_backend.ops.mla_decode` takes besides q, the cache and the outputs."""

    s_q: int  # query tokens per request
    rows: int  # query rows per request, s_q * h_q: get_decode_metadata's rows
    causal: bool
    block_table: Tensor  # int32 [B, max_pages], vLLM's rows 0..B-1
    seq_lens: Tensor  # int32 [B], vLLM's; 0 for CUDA-graph padding
    part_meta: Tensor  # int32 [num_parts, 4] view
    batch_meta: Tensor  # int32 [B, 4] view
    o_accum: Tensor  # bf16 [2 * num_parts, s_q * h_q, 512] view
    lse_accum: Tensor  # fp32 [2 * num_parts, s_q * h_q] view
    # Varlen decode (requests of different query lengths, s_q their most): vLLM's
    # query_start_loc [B + 1] on the device; None when every request has s_q tokens.
    q_start: Tensor | None = None

    @property
    def batch(self) -> int:
        return self.seq_lens.shape[0]


def allocate_decode_buffers(
    *,
    max_batch: int,
    max_s_q: int,
    num_heads: int,
    num_parts_for_rows: Callable[[int], int],
    device: torch.device | str,
    varlen_num_parts: int | None = None,
    varlen_workspace_bytes: int = VARLEN_WORKSPACE_BYTES,
) -> DecodeBuffers:
    """Allocate the metadata and split-KV workspace for every s_q in ``1..max_s_q``, uniform
    and (with ``max_s_q > 1``) varlen.

    Args:
        max_batch: most decode requests in one step (vLLM's ``max_num_seqs``; CUDA-graph padding
            never exceeds it).
        max_s_q: most query tokens per decode request (1 + speculative tokens).
        num_heads: query heads of the model on this rank.
        num_parts_for_rows: split-KV parts for ``rows = s_q * num_heads`` query rows
            (``mla_backend.ops.num_decode_parts``).
        varlen_num_parts: split-KV parts of a varlen decode, whatever its longest request
            (``mla_backend.ops.num_varlen_decode_parts``); None: those of a uniform batch of
            its longest request's s_q. Sizes the workspace when larger: at 128 heads and
            ``max_s_q = 4`` with 132 parts, 2 * 132 * 512 rows of 512 bf16 (138 MB) against
            17 MB for the uniform counts.
        varlen_workspace_bytes: most bytes the varlen workspace may take; fewer varlen parts
            (not fewer than the uniform count of ``max_s_q``) when ``varlen_num_parts`` would
            need more. A varlen decode takes the larger of the varlen and its s_q's uniform
            count.
    """
    if max_batch < 1 or max_s_q < 1 or num_heads < 1:
        raise ValueError(
            f"need max_batch, max_s_q, num_heads >= 1, got {max_batch}, {max_s_q}, {num_heads}"
        )
    num_parts = tuple(num_parts_for_rows(s_q * num_heads) for s_q in range(1, max_s_q + 1))
    # A decode batch is varlen only when its requests' query counts differ, so max_s_q > 1 (its
    # longest request may still have one token: the others none).
    varlen = varlen_num_parts if varlen_num_parts is not None and max_s_q > 1 else 0
    if varlen_num_parts is not None and varlen_num_parts < 1:
        raise ValueError(f"need varlen_num_parts >= 1, got {varlen_num_parts}")
    bytes_per_part = 2 * max_s_q * num_heads * (HEAD_DIM_V * 2 + 4)  # two pieces of every row
    varlen = min(varlen, max(num_parts[-1], varlen_workspace_bytes // bytes_per_part))
    slots_times_rows = max(
        2 * max(p, varlen) * s_q * num_heads for s_q, p in enumerate(num_parts, start=1)
    )
    return DecodeBuffers(
        num_heads=num_heads,
        max_batch=max_batch,
        num_parts=num_parts,
        varlen_num_parts=varlen,
        part_meta=torch.zeros((max(*num_parts, varlen), 4), dtype=torch.int32, device=device),
        batch_meta=torch.zeros((max_batch, 4), dtype=torch.int32, device=device),
        o_accum=torch.empty(slots_times_rows * HEAD_DIM_V, dtype=torch.bfloat16, device=device),
        lse_accum=torch.empty(slots_times_rows, dtype=torch.float32, device=device),
    )


def uniform_query_len(num_decodes: int, num_decode_tokens: int) -> int:
    """Query tokens per decode request: vLLM's decode batches are uniform, padding included."""
    if num_decodes < 1 or num_decode_tokens % num_decodes:
        raise ValueError(
            f"{num_decode_tokens} decode tokens do not split evenly over "
            f"{num_decodes} decode requests"
        )
    return num_decode_tokens // num_decodes


def decode_query_lens(
    query_start_loc_cpu: Tensor | None, batch: int, num_decode_tokens: int
) -> list[int] | None:
    """The requests' query lengths when they differ (a varlen decode), else None.

    None also for a CUDA-graph-padded uniform batch: its padding requests have query length 0
    while the runner pads the tokens to ``batch * s_q``, which the uniform kernel reads as
    inert requests. Host-only: ``query_start_loc_cpu`` is vLLM's CPU copy.
    """
    if query_start_loc_cpu is None or batch == 0:
        return None
    # Once per step, so builtins that loop in C (map, max, set): 1.3-2x faster than a
    # comprehension and a generator on CPU at B = 8-1024; numpy was slower below B ~ 128.
    starts = query_start_loc_cpu[: batch + 1].tolist()
    lens = list(map(operator.sub, starts[1:], starts))
    if num_decode_tokens % batch == 0:
        s_q = num_decode_tokens // batch
        if max(lens) == s_q and set(lens) <= {0, s_q}:
            return None
    return lens


def map_decode(
    block_table: Tensor,
    seq_lens: Tensor,
    num_decode_tokens: int,
    buffers: DecodeBuffers,
    query_start_loc_cpu: Tensor | None = None,
    query_start_loc: Tensor | None = None,
) -> DecodeArgs:
    """Map the decode part of a vLLM batch onto the kernel's arguments.

    Args: as vLLM's MLA builder hands them to ``_build_decode``, i.e. already cut to the
    ``B`` decode requests at the front of the batch (CUDA-graph padding included):
        block_table: int32 ``[B, max_pages]`` (page ids in kernel blocks of 64 tokens).
        seq_lens: int32 ``[B]``, context plus new tokens; padded requests have 0.
        num_decode_tokens: query tokens of the B requests, padding included.
        buffers: from `allocate_decode_buffers`.
        query_start_loc_cpu, query_start_loc: vLLM's ``[B + 1]`` query offsets (CPU copy and
            device tensor): when the requests' query lengths differ (the builder declares
            ``QueryLenSupport.VARLEN``: speculative decoding with drafts of different lengths,
            short prefill chunks), the kernel runs varlen on ``query_start_loc``.

    A uniform batch (every request ``s_q`` tokens; CUDA-graph padding adds requests of seq len 0
    at the end, the runner pads the tokens to ``B * s_q``) maps request ``b``'s tokens to
    ``b * s_q ... b * s_q + s_q - 1`` (tests/cpu/test_vllm_plan.py checks this against vLLM's
    batch split); any other maps to a varlen decode with ``s_q`` the longest request. Host-only
    integer work: no device tensor is read.

    The caller fills ``part_meta``/``batch_meta`` with ``get_decode_metadata(seq_lens, ..., rows)``.
    """
    batch = seq_lens.shape[0]
    if block_table.shape[0] != batch:
        raise ValueError(f"block_table has {block_table.shape[0]} rows for {batch} seq_lens")
    if seq_lens.dtype != torch.int32 or block_table.dtype != torch.int32:
        raise ValueError(
            f"seq_lens and block_table must be int32, got {seq_lens.dtype} and {block_table.dtype}"
        )
    lens = decode_query_lens(query_start_loc_cpu, batch, num_decode_tokens)
    q_start = None
    if lens is None:
        s_q = uniform_query_len(batch, num_decode_tokens)
    else:
        if query_start_loc is None or query_start_loc.dtype != torch.int32:
            raise ValueError("a varlen decode needs vLLM's int32 query_start_loc on the device")
        s_q = max(lens)
        q_start = query_start_loc[: batch + 1]
    if s_q > buffers.max_s_q or batch > buffers.max_batch:
        raise ValueError(
            f"decode batch of {batch} x {s_q} query tokens exceeds the buffers "
            f"({buffers.max_batch} x {buffers.max_s_q})"
        )
    rows = s_q * buffers.num_heads
    num_parts = parts_for_batch(buffers.num_parts[s_q - 1], rows, batch)
    if q_start is not None:
        num_parts = max(num_parts, buffers.varlen_num_parts)
    slots = 2 * num_parts
    return DecodeArgs(
        s_q=s_q,
        rows=rows,
        # Causality only matters with several query tokens: with one, both see all < L.
        causal=s_q > 1,
        block_table=block_table,
        seq_lens=seq_lens,
        part_meta=buffers.part_meta[:num_parts],
        batch_meta=buffers.batch_meta[:batch],
        o_accum=buffers.o_accum[: slots * rows * HEAD_DIM_V].view(slots, rows, HEAD_DIM_V),
        lse_accum=buffers.lse_accum[: slots * rows].view(slots, rows),
        q_start=q_start,
    )


def decode_query_view(q: Tensor, args: DecodeArgs, dim: int = HEAD_DIM_QK) -> Tensor:
    """vLLM's decode queries ``[B * s_q, h_q, dim]`` (request-major) as ``[B, s_q, h_q, dim]``;
    a varlen decode's (``args.q_start``) stay ``[T, h_q, dim]``.

    ``dim`` is 576 for whole queries, 512 and 64 for the halves vLLM passes as a tuple. A strided
    view stays a view (vLLM's absorbed ``q_nope`` is a transpose of a ``[h_q, B * s_q, 512]``
    bmm output): only the token dim is split, which any stride allows.
    """
    tokens, heads, d = q.shape
    if args.q_start is not None:
        if d != dim:
            raise ValueError(f"q {tuple(q.shape)} does not hold queries of dim {dim}")
        return q
    if d != dim or tokens != args.batch * args.s_q:
        raise ValueError(
            f"q {tuple(q.shape)} does not hold {args.batch} x {args.s_q} tokens of dim {dim}"
        )
    return q.unflatten(0, (args.batch, args.s_q))
