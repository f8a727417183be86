"""Typed wrappers over torch.ops.mla_backend.*, their fake (meta) kernels, and availability.

Importing this module needs neither the extension nor a GPU; the wrappers raise RuntimeError
with the reason when the extension is unavailable. Semantics: docs/design.md and reference.py.
"""

from __future__ import annotations

import functools
import math

import torch

from mla_backend import _ext
from mla_backend.reference import HEAD_DIM_QK, HEAD_DIM_V

Tensor = torch.Tensor
DeviceLike = torch.device | str | int | None

MAX_S_Q = 16  # query tokens per sequence and step
MAX_HEADS = 128  # query heads (one latent KV head)


def is_supported(device: DeviceLike = None) -> tuple[bool, str]:
    """Whether the kernels can run on ``device`` (default: the current CUDA device).

    Returns ``(True, "")``, or ``(False, reason)`` when the extension is not loaded or the device
    is not an sm_90 (compute capability 9.x) GPU. Initialises CUDA only if a device exists.
    """
    if not _ext.load():
        return False, str(_ext.unavailable_reason())
    if device is not None and torch.device(device).type != "cuda":
        return False, f"{device} is not a CUDA device"
    if not torch.cuda.is_available():
        return False, "no CUDA device is visible"
    major, minor = torch.cuda.get_device_capability(device)
    if major != 9:
        return False, f"needs an sm_90 (Hopper) GPU, found compute capability {major}.{minor}"
    return True, ""


def rows_per_cta(num_q_rows: int) -> int:
    """Query rows one CTA of the decode kernel handles, for ``num_q_rows = s_q * h_q``.

    Mirrors ``kDecodeRowsPerCta`` in csrc/include/mla/api.h: every row count runs tiles of 64
    rows (fewer rows are padded; on an H200 that measured faster than the swap-AB tile of 16 rows
    it replaced, docs/perf.md v9). ``num_q_rows`` must be >= 1.
    """
    if num_q_rows < 1:
        raise ValueError(f"num_q_rows must be >= 1, got {num_q_rows}")
    return 64


@functools.cache
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _device_index(device: DeviceLike) -> int:
    index = None if device is None else torch.device(device).index
    return torch.cuda.current_device() if index is None else index


def num_decode_parts(num_q_rows: int, device: DeviceLike = None, batch: int | None = None) -> int:
    """Split-KV parts that fill the GPU once: ``max(1, num_sms // row_tiles)``.

    ``row_tiles = ceil(num_q_rows / rows_per_cta(num_q_rows))`` CTAs run per part. With
    ``batch`` given, ``parts_for_batch`` adjusts it for that batch size. Any value >= 1 is
    correct; this one is the fast default. The SM count is cached per device.
    """
    if num_q_rows < 1:
        raise ValueError(f"num_q_rows must be >= 1, got {num_q_rows}")
    row_tiles = math.ceil(num_q_rows / rows_per_cta(num_q_rows))
    parts = max(1, _num_sms(_device_index(device)) // row_tiles)
    return parts if batch is None else parts_for_batch(parts, num_q_rows, batch)


def num_varlen_decode_parts(device: DeviceLike = None) -> int:
    """Split-KV parts for a varlen decode (``mla_decode`` with ``q_start``): one per SM.

    The grid is ``row tiles of max_q_len * h_q`` x parts, and a CTA skips the sequences whose
    rows end before its tile, so with ``num_decode_parts(max_q_len * h_q)`` parts (one wave of
    CTAs) the first tiles' CTAs hold every sequence's pages and the call costs what the padded
    batch costs. With a part per SM the CTAs are small and many (several waves), the hardware
    schedules them as SMs free up, and the call costs about the real rows' work: on an H200, 1-4
    query tokens per request, 128 heads, B=64 L=4k 511 -> 398 µs, B=32 L=8k 479 -> 354 µs, 1-2
    tokens B=128 L=4k 548 -> 396 µs; 64 heads 253 -> 230 µs; at 16-32 heads level (docs/perf.md,
    v14). The workspace grows with it (``decode_workspace(parts, max_q_len * h_q)``).
    """
    return _num_sms(_device_index(device))


def parts_for_batch(num_parts: int, num_q_rows: int, batch: int) -> int:
    """``num_parts`` (``num_decode_parts`` without a batch) for a batch of ``batch`` sequences.

    Half of it for a single sequence whose query rows make one 64-row tile (at most 64): its
    pieces are expensive (64 rows each to write and to combine) and half as many measured
    0.99-1.2x faster on an H200 at every context length with 17-64 rows (docs/perf.md, v8) and
    1.00-1.10x with 8-16 rows at 1k-16k tokens, 0.97x at 32k (v9), with fp32 pieces; with the
    bf16 pieces of v10, the full count 0.89-1.01x (geomean 0.97x, 12 cases of 16-64 rows); with
    more sequences or more rows the full count was faster or level. Host-only: no tensor is
    read.
    """
    if batch == 1 and num_q_rows <= rows_per_cta(num_q_rows):
        return max(1, num_parts // 2)
    return num_parts


def get_decode_metadata(
    seqlens: Tensor, part_meta: Tensor, batch_meta: Tensor, rows: int = 0
) -> None:
    """Fill the split-KV schedule on the GPU, with no host sync (safe in CUDA graphs).

    Args:
        seqlens: ``[B]`` int32 CUDA, tokens in the cache per sequence (0 allowed).
        part_meta: ``[num_parts, 4]`` int32 CUDA, written: ``b_begin, b_end, S_p, E_p``.
            ``num_parts = part_meta.size(0)`` (any value >= 1; ``num_decode_parts`` is fast).
        batch_meta: ``[B, 4]`` int32 CUDA, written: ``page0_off, first_part, num_splits,
            split_slot``.
        rows: query rows per sequence of the decode this plan is for, ``s_q * h_q`` (a varlen
            decode: its longest request's); 0 if not known. It sets what the planner charges a
            sequence besides its pages (``reference.plan_charge``): any value gives a correct
            plan, the decode's own the faster one.

    The caller allocates both outputs (``get_mla_metadata`` does it for you).
    """
    _ext.require()
    torch.ops.mla_backend.get_decode_metadata(seqlens, part_meta, batch_meta, rows)


def _get_decode_metadata_fake(
    seqlens: Tensor, part_meta: Tensor, batch_meta: Tensor, rows: int = 0
) -> None:
    return None


def get_mla_metadata(
    cache_seqlens: Tensor,
    num_q_tokens_per_head_k: int,
    num_heads_k: int = 1,
    *,
    num_parts: int | None = None,
) -> tuple[Tensor, Tensor]:
    """FlashMLA-shaped metadata call: allocate and fill ``(part_meta, batch_meta)``.

    Args:
        cache_seqlens: ``[B]`` int32 CUDA cache lengths.
        num_q_tokens_per_head_k: ``s_q * h_q / num_heads_k``; rows per sequence are
            ``num_q_tokens_per_head_k * num_heads_k``.
        num_heads_k: KV heads (1 for MLA).
        num_parts: split-KV parts; default ``num_decode_parts(rows, cache_seqlens.device, B)``.

    Returns ``part_meta [num_parts, 4]`` and ``batch_meta [B, 4]``, int32 on the device of
    ``cache_seqlens``; pass them to ``flash_mla_with_kvcache`` as
    ``(tile_scheduler_metadata, num_splits)``. Allocates; not for CUDA-graph capture.
    """
    rows = num_q_tokens_per_head_k * num_heads_k
    part_meta, batch_meta = _metadata_buffers(
        cache_seqlens.size(0), rows, cache_seqlens.device, num_parts
    )
    get_decode_metadata(cache_seqlens, part_meta, batch_meta, rows)
    return part_meta, batch_meta


def _metadata_buffers(
    batch: int, rows: int, device: DeviceLike, num_parts: int | None = None
) -> tuple[Tensor, Tensor]:
    """Uninitialised ``part_meta [num_parts, 4]`` and ``batch_meta [batch, 4]`` int32 (default
    ``num_parts``: ``num_decode_parts``)."""
    if num_parts is None:
        num_parts = num_decode_parts(rows, device, batch=batch)
    part_meta = torch.empty((num_parts, 4), dtype=torch.int32, device=device)
    batch_meta = torch.empty((batch, 4), dtype=torch.int32, device=device)
    return part_meta, batch_meta


def decode_workspace(num_parts: int, num_q_rows: int, device: DeviceLike) -> tuple[Tensor, Tensor]:
    """Allocate the split-KV workspace (uninitialised; the kernels write before they read).

    Returns ``o_accum`` bf16 ``[2 * num_parts, num_q_rows, 512]`` (each split piece's normalised
    partial output, merged in fp32 by the combine) and ``lse_accum`` fp32
    ``[2 * num_parts, num_q_rows]``: every part holds at most two split pieces, so the size does
    not depend on the batch. ``num_q_rows = s_q * h_q``; allocate for the largest you will run.
    """
    slots = 2 * num_parts
    o_accum = torch.empty((slots, num_q_rows, HEAD_DIM_V), dtype=torch.bfloat16, device=device)
    lse_accum = torch.empty((slots, num_q_rows), dtype=torch.float32, device=device)
    return o_accum, lse_accum


def mla_decode(
    q: Tensor,
    kv_cache: Tensor,
    block_table: Tensor,
    seqlens: Tensor,
    part_meta: Tensor,
    batch_meta: Tensor,
    softmax_scale: float,
    causal: bool,
    out: Tensor,
    lse: Tensor,
    o_accum: Tensor,
    lse_accum: Tensor,
    q_pe: Tensor | None = None,
    q_start: Tensor | None = None,
    max_q_len: int = 0,
    plan: bool = False,
) -> None:
    """Paged MLA decode into caller-owned buffers: no allocation, no host sync (graph-safe).

    Args:
        q: ``[B, s_q, h_q, 576]`` bf16 CUDA (``[B, s_q, h_q, 512]``, the latent dims only, when
            ``q_pe`` is given); last dim contiguous, other strides multiples of 8 elements (a
            strided view works), 16-byte aligned. ``1 <= s_q <= 16``, ``1 <= h_q <= 128``.
        kv_cache: ``[num_pages, 64, 576]`` or ``[num_pages, 64, 1, 576]`` bf16; K is all 576 dims,
            V the first 512; last dim contiguous.
        block_table: ``[B, max_pages]`` int32 page ids; entries past ``ceil(L / 64)`` are never
            read.
        seqlens: ``[B]`` int32 cache lengths ``L``, the ``s_q`` new tokens included; 0 allowed.
        part_meta, batch_meta: from ``get_decode_metadata`` on the same ``seqlens``; with
            ``plan=True``, written instead (any contents on entry).
        softmax_scale: multiplies ``q . k`` (usually ``1 / sqrt(192)`` for DeepSeek models).
        causal: query token ``i`` sees positions ``< L - s_q + i + 1``; otherwise all ``< L``.
        out: ``[B, s_q, h_q, 512]`` bf16, written; last dim contiguous, other strides multiples
            of 8 elements, 16-byte aligned.
        lse: ``[B, s_q, h_q]`` fp32, written: natural-log sum of exp of the scaled scores.
        o_accum, lse_accum: workspace from ``decode_workspace(part_meta.size(0), s_q * h_q)``.
        q_pe: optional ``[B, s_q, h_q, 64]`` bf16, the rope dims of the queries, with the same
            layout rules as ``q``: the two halves are read where they are, so a caller that
            holds them apart (vLLM's ``(q_nope, q_pe)``) needs no ``torch.cat``.
        q_start, max_q_len: varlen queries (speculative decoding with drafts of different
            lengths). ``q_start`` ``[B + 1]`` int32 on the device: sequence ``b``'s query tokens
            are ``q_start[b] .. q_start[b + 1] - 1`` (vLLM's ``query_start_loc``); ``q`` is then
            ``[T, h_q, 576]`` (``q_pe`` ``[T, h_q, 64]``), ``out`` ``[T, h_q, 512]`` and ``lse``
            ``[T, h_q]``. ``max_q_len`` (1 to 16, on the host) must be at least every sequence's
            query count: it sizes the grid and the workspace (``s_q * h_q`` rows with
            ``s_q = max_q_len``); tokens of a sequence past it are not written. Causal: token
            ``i`` of a sequence with ``q_len`` tokens sees positions ``< L - q_len + i + 1``.
        plan: compute the split-KV plan in this call and write it to ``part_meta`` and
            ``batch_meta``: the same plan as ``get_decode_metadata(seqlens, part_meta,
            batch_meta, s_q * h_q)``, which a later call on the same ``seqlens`` and rows may
            reuse with ``plan=False``. Up to 32 sequences and 2048 query rows in all
            (``B * s_q * h_q``), with ``4 * B`` below the part count, the decode and combine
            kernels plan for themselves (one kernel launch fewer than the metadata kernel
            first); other calls run the metadata kernel inside the call.

    A query row that sees no position (``L == 0`` or ``L - s_q + i + 1 <= 0``) gets ``out = 0``
    and ``lse = -inf``.
    """
    _ext.require()
    torch.ops.mla_backend.decode(
        q,
        kv_cache,
        block_table,
        seqlens,
        part_meta,
        batch_meta,
        softmax_scale,
        causal,
        out,
        lse,
        o_accum,
        lse_accum,
        q_pe,
        q_start,
        max_q_len,
        plan,
    )


def _decode_fake(
    q: Tensor,
    kv_cache: Tensor,
    block_table: Tensor,
    seqlens: Tensor,
    part_meta: Tensor,
    batch_meta: Tensor,
    softmax_scale: float,
    causal: bool,
    out: Tensor,
    lse: Tensor,
    o_accum: Tensor,
    lse_accum: Tensor,
    q_pe: Tensor | None = None,
    q_start: Tensor | None = None,
    max_q_len: int = 0,
    plan: bool = False,
) -> None:
    return None


def flash_mla_with_kvcache(
    q: Tensor,
    k_cache: Tensor,
    block_table: Tensor,
    cache_seqlens: Tensor,
    head_dim_v: int,
    tile_scheduler_metadata: Tensor | None = None,
    num_splits: Tensor | None = None,
    softmax_scale: float | None = None,
    causal: bool = False,
) -> tuple[Tensor, Tensor]:
    """Drop-in for FlashMLA's ``flash_mla_with_kvcache``; allocates its outputs.

    Arguments as in ``mla_decode`` (``k_cache`` is ``kv_cache``, ``cache_seqlens`` is
    ``seqlens``); ``tile_scheduler_metadata`` and ``num_splits`` are the two tensors of
    ``get_mla_metadata`` and are computed by this call when either is None (``plan=True``).
    ``head_dim_v`` must be 512;
    ``softmax_scale`` defaults to ``576 ** -0.5``.

    Returns ``out`` bf16 ``[B, s_q, h_q, 512]`` and ``lse`` fp32 in FlashMLA's layout
    ``[B, h_q, s_q]`` (a transposed view of a ``[B, s_q, h_q]`` tensor).
    """
    if head_dim_v != HEAD_DIM_V:
        raise ValueError(f"head_dim_v must be {HEAD_DIM_V}, got {head_dim_v}")
    batch, s_q, h_q, _ = q.shape
    if softmax_scale is None:
        softmax_scale = HEAD_DIM_QK**-0.5
    plan = tile_scheduler_metadata is None or num_splits is None
    if plan:
        tile_scheduler_metadata, num_splits = _metadata_buffers(batch, s_q * h_q, q.device)
    out = torch.empty((batch, s_q, h_q, HEAD_DIM_V), dtype=torch.bfloat16, device=q.device)
    lse = torch.empty((batch, s_q, h_q), dtype=torch.float32, device=q.device)
    o_accum, lse_accum = decode_workspace(tile_scheduler_metadata.size(0), s_q * h_q, q.device)
    mla_decode(
        q,
        k_cache,
        block_table,
        cache_seqlens,
        tile_scheduler_metadata,
        num_splits,
        softmax_scale,
        causal,
        out,
        lse,
        o_accum,
        lse_accum,
        plan=plan,
    )
    return out, lse.transpose(1, 2)


if _ext.load():
    torch.library.register_fake("mla_backend::get_decode_metadata", _get_decode_metadata_fake)
    torch.library.register_fake("mla_backend::decode", _decode_fake)
