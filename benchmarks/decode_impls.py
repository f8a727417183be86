"""The decode implementations the benchmark compares, each called the way its vLLM 0.26 backend
calls it: ours (mla_backend.ops), FlashMLA (FLASHMLA), FA3 with q_v (FLASH_ATTN_MLA) and the
Triton split-KV decode (TRITON_MLA).

Every adapter offers ``run(i)`` (outputs of input set ``i`` in our layout, for the check),
``whole(i)`` (the per-step cost: scheduler metadata + kernel) and ``kernel(i)`` (kernel alone,
metadata precomputed). ``whole`` and ``kernel`` never sync with the host, so CUDA graphs can
capture them. Importing this module needs neither CUDA nor vLLM; each adapter imports its
kernels in ``probe()``.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
from bench_utils import HEAD_DIM_QK, HEAD_DIM_V, PAGE_SIZE, Case

Tensor = torch.Tensor
ROPE_DIM = HEAD_DIM_QK - HEAD_DIM_V  # 64


class Unavailable(Exception):
    """The implementation cannot run in this process (not installed, not built, wrong GPU)."""


class Unsupported(Exception):
    """The implementation cannot run this case (shape or workspace out of its range)."""


@dataclass
class CaseData:
    """Device inputs of one case: ``n_sets`` input sets sharing one page pool and ``seqlens``.

    Each set has its own q, block table (disjoint pages of the pool) and outputs, so cycling
    through the sets keeps the L2 cold.
    """

    case: Case
    q: list[Tensor]  # per set: [B, s_q, h_q, 576] bf16, contiguous
    kv_cache: Tensor  # [num_pages, 64, 576] bf16, random
    block_tables: list[Tensor]  # per set: [B, max_pages] int32
    seqlens: Tensor  # [B] int32, the same for every set
    softmax_scale: float
    mem_budget: int  # bytes an adapter's workspace may take

    @property
    def n_sets(self) -> int:
        return len(self.q)

    @property
    def device(self) -> torch.device:
        return self.kv_cache.device


@dataclass
class ImplOptions:
    fa3_num_splits: int = 32
    triton_multi_token: str = "flatten"  # or "skip"
    num_sms: int = 132  # the GPU's; Triton's num_kv_splits depends on it


class DecodeImpl:
    """Base of the adapters; ``note`` goes to the CSV (the knobs the adapter chose)."""

    name = ""
    note = ""

    @classmethod
    def probe(cls) -> None:
        """Import the kernels; raise Unavailable with the reason when they cannot run."""
        raise NotImplementedError

    def run(self, i: int) -> tuple[Tensor, Tensor]:
        """Outputs of set ``i``: out ``[B, s_q, h_q, 512]``, lse ``[B, s_q, h_q]`` (any float)."""
        raise NotImplementedError

    def whole(self, i: int) -> None:
        raise NotImplementedError

    def kernel(self, i: int) -> None:
        raise NotImplementedError


def _need_cuda_sm90(what: str) -> None:
    if not torch.cuda.is_available():
        raise Unavailable(f"{what}: no CUDA device")
    major, minor = torch.cuda.get_device_capability()
    if major != 9:
        raise Unavailable(f"{what}: needs sm_90, found sm_{major}{minor}")


# ---------------------------------------------------------------------------------------------
# ours


class Ours(DecodeImpl):
    """mla_backend.ops. whole: one ``mla_decode(..., plan=True)`` per step (small calls plan
    inside the decode and combine kernels, larger ones run the metadata kernel in the call);
    with ``MLA_BENCH_WHOLE=metadata`` in the environment when the step is built,
    ``get_decode_metadata`` then ``mla_decode`` (two calls, the metadata kernel at every batch
    size); with ``MLA_BENCH_WHOLE=kernel``, ``mla_decode`` on the plan computed once (the path of
    vLLM's backend, whose layers share a step's plan: for in-process A/B of that path). kernel:
    ``mla_decode`` on a plan computed once."""

    name = "ours"
    _ops = None

    @classmethod
    def probe(cls) -> None:
        try:
            from mla_backend import ops
        except ImportError as e:
            raise Unavailable(f"mla_backend not importable: {e}") from e
        ok, reason = ops.is_supported()
        if not ok:
            raise Unavailable(reason)
        cls._ops = ops

    def __init__(self, data: CaseData, opts: ImplOptions):
        ops, c, dev = self._ops, data.case, data.device
        self.d = data
        self.causal = c.s_q > 1
        num_parts = self._num_parts(c, dev)
        self.meta = self._meta_buffers(num_parts, c.batch, dev)  # kernel-only: filled once
        self.meta_step = self._meta_buffers(num_parts, c.batch, dev)  # whole: refilled per call
        ops.get_decode_metadata(data.seqlens, *self.meta, c.rows)
        self.o_accum, self.lse_accum = ops.decode_workspace(num_parts, c.rows, dev)
        shape = (c.batch, c.s_q, c.heads)
        self.out = [
            torch.empty(*shape, HEAD_DIM_V, dtype=torch.bfloat16, device=dev)
            for _ in range(data.n_sets)
        ]
        self.lse = [torch.empty(shape, dtype=torch.float32, device=dev) for _ in range(data.n_sets)]
        self.note = f"num_parts={num_parts}"

    def _num_parts(self, case: Case, dev: torch.device) -> int:
        """The split-KV part count (the library's default; benchmarks/ab_variants.py varies it)."""
        return self._ops.num_decode_parts(case.rows, dev, batch=case.batch)

    @staticmethod
    def _meta_buffers(num_parts: int, batch: int, dev: torch.device) -> tuple[Tensor, Tensor]:
        return (
            torch.empty((num_parts, 4), dtype=torch.int32, device=dev),
            torch.empty((batch, 4), dtype=torch.int32, device=dev),
        )

    def _decode(self, i: int, meta: tuple[Tensor, Tensor], plan: bool = False) -> None:
        d = self.d
        self._ops.mla_decode(
            d.q[i],
            d.kv_cache,
            d.block_tables[i],
            d.seqlens,
            *meta,
            d.softmax_scale,
            self.causal,
            self.out[i],
            self.lse[i],
            self.o_accum,
            self.lse_accum,
            plan=plan,
        )

    def whole(self, i: int) -> None:
        mode = os.environ.get("MLA_BENCH_WHOLE")
        if mode == "metadata":
            self._ops.get_decode_metadata(self.d.seqlens, *self.meta_step, self.d.case.rows)
            self._decode(i, self.meta_step)
        elif mode == "kernel":
            self._decode(i, self.meta)
        else:
            self._decode(i, self.meta_step, plan=True)

    def kernel(self, i: int) -> None:
        self._decode(i, self.meta)

    def run(self, i: int) -> tuple[Tensor, Tensor]:
        self.whole(i)
        return self.out[i], self.lse[i]


# ---------------------------------------------------------------------------------------------
# FlashMLA (vllm.v1.attention.ops.flashmla), as vllm/v1/attention/backends/mla/flashmla.py


class FlashMLA(DecodeImpl):
    """vLLM 0.26 bundles the FlashMLA whose ``get_mla_metadata`` returns an empty
    ``FlashMLASchedMeta``; the first ``flash_mla_with_kvcache`` on it runs the scheduler kernel
    and stores the plan in it, later calls (vLLM: the other layers of the step) reuse it.
    So: whole = fresh sched meta per call (scheduler + split-KV kernel + combine), kernel =
    one sched meta initialised at setup and reused."""

    name = "flashmla"
    _fm = None

    @classmethod
    def probe(cls) -> None:
        _need_cuda_sm90("FlashMLA")
        try:
            from vllm.v1.attention.ops import flashmla as fm
        except ImportError as e:
            raise Unavailable(f"vllm FlashMLA not importable: {e}") from e
        ok, reason = fm.is_flashmla_dense_supported()
        if not ok:
            raise Unavailable(reason)
        cls._fm = fm

    def __init__(self, data: CaseData, opts: ImplOptions):
        c = data.case
        self.d = data
        self.k_cache = data.kv_cache.unsqueeze(-2)  # [num_pages, 64, 1, 576], as the backend
        self.q_tokens_per_head_k = c.s_q * c.heads  # num_heads_k = 1
        self.sched = self._new_sched()
        self._call(0, self.sched)  # fills self.sched's plan outside any graph capture

    def _new_sched(self):
        sched, _ = self._fm.get_mla_metadata(
            self.d.seqlens, self.q_tokens_per_head_k, 1, is_fp8_kvcache=False
        )
        return sched

    def _call(self, i: int, sched) -> tuple[Tensor, Tensor]:
        d = self.d
        return self._fm.flash_mla_with_kvcache(
            q=d.q[i],
            k_cache=self.k_cache,
            block_table=d.block_tables[i],
            cache_seqlens=d.seqlens,
            head_dim_v=HEAD_DIM_V,
            tile_scheduler_metadata=sched,
            softmax_scale=d.softmax_scale,
            causal=True,
            is_fp8_kvcache=False,
        )

    def whole(self, i: int) -> None:
        self._call(i, self._new_sched())

    def kernel(self, i: int) -> None:
        self._call(i, self.sched)

    def run(self, i: int) -> tuple[Tensor, Tensor]:
        out, lse = self._call(i, self._new_sched())  # lse: [B, h_q, s_q]
        return out, lse.transpose(1, 2)


# ---------------------------------------------------------------------------------------------
# FA3 with q_v (vllm.vllm_flash_attn), as vllm/v1/attention/backends/mla/flashattn_mla.py


class FA3(DecodeImpl):
    """q split into q_pe (64, passed as ``q``) and q_nope (512, passed as ``q_v``); K is the
    rope part and V the latent part of the same paged cache, both ``[num_pages, 64, 1, d]``
    strided views. whole = ``get_scheduler_metadata`` + ``flash_attn_varlen_func``; kernel =
    the latter with the metadata precomputed. ``num_splits`` goes to both, as vLLM does:
    32 (``flash_attn_max_num_splits_for_cuda_graph``) under full CUDA graphs, 0 (FA3's
    heuristic) in eager mode."""

    name = "fa3"
    _fa = None

    @classmethod
    def probe(cls) -> None:
        _need_cuda_sm90("FA3")
        try:
            from vllm import vllm_flash_attn as fa
            from vllm.vllm_flash_attn.flash_attn_interface import fa_version_unsupported_reason
        except ImportError as e:
            raise Unavailable(f"vllm.vllm_flash_attn not importable: {e}") from e
        reason = fa_version_unsupported_reason(3)
        if reason:
            raise Unavailable(reason)
        cls._fa = fa

    def __init__(self, data: CaseData, opts: ImplOptions):
        c, dev = data.case, data.device
        self.d = data
        tokens = c.batch * c.s_q
        self.num_splits = opts.fa3_num_splits
        if self.num_splits > 1:
            # FA3 allocates out_accum [num_splits, h, tokens, 512] fp32 per call.
            accum = self.num_splits * c.heads * tokens * HEAD_DIM_V * 4
            if accum > data.mem_budget:
                raise Unsupported(f"FA3 split workspace {accum / 1e9:.1f} GB over budget")
        kv = data.kv_cache
        self.k = kv[..., HEAD_DIM_V:].unsqueeze(-2)  # [num_pages, 64, 1, 64]
        self.v = kv[..., :HEAD_DIM_V].unsqueeze(-2)  # [num_pages, 64, 1, 512]
        self.cu_seqlens_q = torch.arange(0, c.batch + 1, dtype=torch.int32, device=dev) * c.s_q
        flat = [q.view(tokens, c.heads, HEAD_DIM_QK) for q in data.q]
        self.q_pe = [x[..., HEAD_DIM_V:] for x in flat]
        self.q_nope = [x[..., :HEAD_DIM_V] for x in flat]
        self.sched = self._schedule()
        self.note = f"num_splits={self.num_splits}"

    def _schedule(self) -> Tensor:
        c = self.d.case
        return self._fa.get_scheduler_metadata(
            batch_size=c.batch,
            max_seqlen_q=c.s_q,
            max_seqlen_k=c.max_len,
            num_heads_q=c.heads,
            num_heads_kv=1,
            headdim=ROPE_DIM,
            cache_seqlens=self.d.seqlens,
            qkv_dtype=torch.bfloat16,
            headdim_v=HEAD_DIM_V,
            page_size=PAGE_SIZE,
            cu_seqlens_q=self.cu_seqlens_q,
            causal=True,
            num_splits=self.num_splits,
        )

    def _call(self, i: int, sched: Tensor) -> tuple[Tensor, Tensor]:
        d, c = self.d, self.d.case
        return self._fa.flash_attn_varlen_func(
            q=self.q_pe[i],
            k=self.k,
            v=self.v,
            q_v=self.q_nope[i],
            max_seqlen_q=c.s_q,
            cu_seqlens_q=self.cu_seqlens_q,
            max_seqlen_k=c.max_len,
            seqused_k=d.seqlens,
            block_table=d.block_tables[i],
            softmax_scale=d.softmax_scale,
            causal=True,
            return_softmax_lse=True,
            fa_version=3,
            scheduler_metadata=sched,
            num_splits=self.num_splits,
        )

    def whole(self, i: int) -> None:
        self._call(i, self._schedule())

    def kernel(self, i: int) -> None:
        self._call(i, self.sched)

    def run(self, i: int) -> tuple[Tensor, Tensor]:
        c = self.d.case
        out, lse = self._call(i, self._schedule())  # out [tokens, h, 512], lse [h, tokens]
        return (
            out.view(c.batch, c.s_q, c.heads, HEAD_DIM_V),
            lse.transpose(0, 1).reshape(c.batch, c.s_q, c.heads),
        )


# ---------------------------------------------------------------------------------------------
# Triton split-KV decode, as vllm/v1/attention/backends/mla/triton_mla.py


@functools.cache
def _vllm_num_kv_splits_rule():
    """vLLM's ``_compute_num_kv_splits``, or None when its module does not import here."""
    try:
        from vllm.v1.attention.backends.mla.triton_mla import _compute_num_kv_splits
    except Exception:  # any import-time failure: use our copy of the rule
        return None
    return _compute_num_kv_splits


def _triton_num_kv_splits(max_seq_len: int, sm_count: int) -> int:
    """vLLM's choice; our own copy of the rule only if its helper cannot be imported: a power
    of two near max_seq_len / 512, at most twice the SM count."""
    rule = _vllm_num_kv_splits_rule()
    if rule is not None:
        return rule(max_seq_len, sm_count)
    ideal = 1 << max(0, (max(1, max_seq_len // 512) - 1).bit_length())
    return min(ideal, 2 * sm_count)


class Triton(DecodeImpl):
    """``decode_attention_fwd(..., is_mla=True)`` with vLLM's num_kv_splits, an
    ``attn_logits [tokens, h, splits, 513]`` fp32 scratch, bf16 ``o`` and ``lse`` (vLLM
    allocates both with torch.zeros in the step: counted in whole, not in kernel).

    The kernel takes one query token per sequence (vLLM routes multi-token decodes of this
    backend to its prefill path). With ``triton_multi_token="flatten"`` an ``s_q > 1`` case runs
    as ``B * s_q`` single-token rows, row ``(b, i)`` with length ``L_b - s_q + i + 1`` and
    ``b``'s block table: the causal result, at the cost of reading the KV ``s_q`` times."""

    name = "triton"
    _fwd = None

    @classmethod
    def probe(cls) -> None:
        if not torch.cuda.is_available():
            raise Unavailable("Triton MLA: no CUDA device")
        try:
            from vllm.v1.attention.ops.triton_decode_attention import decode_attention_fwd
        except ImportError as e:
            raise Unavailable(f"vllm triton decode not importable: {e}") from e
        cls._fwd = staticmethod(decode_attention_fwd)

    def __init__(self, data: CaseData, opts: ImplOptions):
        c, dev = data.case, data.device
        if c.s_q > 1 and opts.triton_multi_token != "flatten":
            raise Unsupported("single-token decode only")
        self.d = data
        self.tokens = c.batch * c.s_q
        self.num_kv_splits = _triton_num_kv_splits(c.max_len, opts.num_sms)
        logits_bytes = self.tokens * c.heads * self.num_kv_splits * (HEAD_DIM_V + 1) * 4
        if logits_bytes > data.mem_budget:
            raise Unsupported(f"attn_logits {logits_bytes / 1e9:.1f} GB over budget")
        kv = data.kv_cache.unsqueeze(2)  # [num_pages, 64, 1, 576]: add the head dim of 1
        self.k_buffer, self.v_buffer = kv, kv[..., :HEAD_DIM_V]
        self.q = [q.view(self.tokens, c.heads, HEAD_DIM_QK) for q in data.q]
        if c.s_q == 1:
            self.seqlens, self.block_tables = data.seqlens, data.block_tables
        else:
            step = torch.arange(c.s_q, dtype=torch.int32, device=dev)
            self.seqlens = (data.seqlens[:, None] - c.s_q + 1 + step).reshape(-1).contiguous()
            self.block_tables = [bt.repeat_interleave(c.s_q, dim=0) for bt in data.block_tables]
        self.attn_logits = torch.empty(
            (self.tokens, c.heads, self.num_kv_splits, HEAD_DIM_V + 1),
            dtype=torch.float32,
            device=dev,
        )
        self.o = [self._zeros_o() for _ in range(data.n_sets)]
        self.lse = [self._zeros_lse() for _ in range(data.n_sets)]
        self.scale_one = torch.ones((), dtype=torch.float32, device=dev)  # layer._k_scale
        flat = ", flattened" if c.s_q > 1 else ""
        self.note = f"num_kv_splits={self.num_kv_splits}{flat}"

    def _zeros_o(self) -> Tensor:
        c = self.d.case
        return torch.zeros(
            (self.tokens, c.heads, HEAD_DIM_V), dtype=torch.bfloat16, device=self.d.device
        )

    def _zeros_lse(self) -> Tensor:
        c = self.d.case
        return torch.zeros((self.tokens, c.heads), dtype=torch.bfloat16, device=self.d.device)

    def _call(self, i: int, o: Tensor, lse: Tensor) -> None:
        self._fwd(
            self.q[i],
            self.k_buffer,
            self.v_buffer,
            o,
            lse,
            self.block_tables[i],
            self.seqlens,
            self.attn_logits,
            self.num_kv_splits,
            self.d.softmax_scale,
            PAGE_SIZE,
            k_scale=self.scale_one,
            v_scale=self.scale_one,
            is_mla=True,
        )

    def whole(self, i: int) -> None:
        self._call(i, self._zeros_o(), self._zeros_lse())

    def kernel(self, i: int) -> None:
        self._call(i, self.o[i], self.lse[i])

    def run(self, i: int) -> tuple[Tensor, Tensor]:
        c = self.d.case
        self._call(i, self.o[i], self.lse[i])
        return (
            self.o[i].view(c.batch, c.s_q, c.heads, HEAD_DIM_V),
            self.lse[i].view(c.batch, c.s_q, c.heads),
        )


IMPLS: dict[str, type[DecodeImpl]] = {cls.name: cls for cls in (Ours, FlashMLA, FA3, Triton)}
