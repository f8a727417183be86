"""The vLLM MLA attention backend whose decode runs on mla_backend's kernels.

vLLM's triad, built on its common MLA classes: prefill, chunked prefill and the MLA layer glue
(q/k up-projections, KV-cache writes, v up-projection) stay vLLM's; only ``forward_mqa``, the
decode attention over the latent cache, is ours. The builder owns the kernel's metadata and
workspace buffers, allocated once, so decode steps (and CUDA-graph replays) allocate nothing
for them and never sync with the host.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from mla_backend import ops
from mla_backend.reference import HEAD_DIM_QK, HEAD_DIM_V, PAGE_SIZE
from mla_backend.vllm.compat import (
    AttentionCGSupport,
    AttentionType,
    MLACommonBackend,
    MLACommonDecodeMetadata,
    MLACommonImpl,
    MLACommonMetadata,
    MLACommonMetadataBuilder,
    QueryLenSupport,
    get_current_vllm_config,
    get_logger,
)
from mla_backend.vllm.plan import DecodeArgs, allocate_decode_buffers, decode_query_view, map_decode

logger = get_logger()


class MlaBackendAttentionBackend(MLACommonBackend):
    supported_dtypes: ClassVar[list[torch.dtype]] = [torch.bfloat16]
    supported_kv_cache_dtypes: ClassVar[list[str]] = ["auto", "bfloat16"]

    @staticmethod
    def get_name() -> str:
        # The AttentionBackendEnum member we are registered as (vLLM maps names to members).
        return "CUSTOM"

    @staticmethod
    def get_builder_cls() -> type[MlaBackendMetadataBuilder]:
        return MlaBackendMetadataBuilder

    @staticmethod
    def get_impl_cls() -> type[MlaBackendImpl]:
        return MlaBackendImpl

    @staticmethod
    def get_supported_kernel_block_sizes() -> list[int]:
        # With no --block-size, vLLM then sets the KV-cache block size to 64 itself.
        return [PAGE_SIZE]

    @classmethod
    def get_supported_head_sizes(cls) -> list[int]:
        return [HEAD_DIM_QK]

    @classmethod
    def supports_compute_capability(cls, capability) -> bool:
        return capability.major == 9

    @classmethod
    def supports_combination(cls, *args, **kwargs) -> str | None:
        # Everything the class attributes cannot say: is the extension loaded, is this sm_90?
        supported, reason = ops.is_supported()
        return None if supported else f"mla_backend kernels unavailable: {reason}"


@dataclass
class MlaBackendDecodeMetadata(MLACommonDecodeMetadata):
    kernel: DecodeArgs


@dataclass
class MlaBackendMetadata(MLACommonMetadata[MlaBackendDecodeMetadata]):
    pass


class MlaBackendMetadataBuilder(MLACommonMetadataBuilder[MlaBackendMetadata]):
    # Full CUDA graphs for decode batches of one query length: 1, or 1 + speculative tokens.
    _cudagraph_support: ClassVar[AttentionCGSupport] = AttentionCGSupport.UNIFORM_BATCH
    # Makes the common builder raise reorder_batch_threshold to 1 + speculative tokens and keep
    # requests of different query lengths (up to it) in the decode batch: varlen decode.
    query_len_support: ClassVar[QueryLenSupport] = QueryLenSupport.VARLEN
    reorder_batch_threshold: int = 1

    def __init__(self, kv_cache_spec, layer_names, vllm_config, device):
        super().__init__(kv_cache_spec, layer_names, vllm_config, device, MlaBackendMetadata)
        max_s_q = self.reorder_batch_threshold
        if max_s_q > ops.MAX_S_Q:
            raise ValueError(
                f"mla_backend decodes at most {ops.MAX_S_Q} query tokens per "
                f"request; this configuration needs {max_s_q}"
            )
        # The heads of the layers this builder serves (a draft model's may differ from the
        # target's; vLLM gives each head count its own builder).
        self._num_heads = self.compilation_config.static_forward_context[layer_names[0]].num_heads
        self._buffers = allocate_decode_buffers(
            max_batch=vllm_config.scheduler_config.max_num_seqs,
            max_s_q=max_s_q,
            num_heads=self._num_heads,
            num_parts_for_rows=lambda rows: ops.num_decode_parts(rows, device),
            device=device,
            varlen_num_parts=ops.num_varlen_decode_parts(device),
        )
        self._seen_s_q: set[tuple[int, bool]] = set()  # (s_q, varlen) already logged

    def _build_decode(
        self,
        block_table_tensor: torch.Tensor,
        seq_lens_device: torch.Tensor,
        max_seq_len: int,
        query_start_loc_cpu: torch.Tensor,
        query_start_loc_device: torch.Tensor,
        num_decode_tokens: int,
        dcp_tot_seq_lens_device: torch.Tensor | None,
    ) -> MlaBackendDecodeMetadata:
        args = map_decode(
            block_table_tensor,
            seq_lens_device,
            num_decode_tokens,
            self._buffers,
            query_start_loc_cpu,
            query_start_loc_device,
        )
        # Into the builder's buffers, on the GPU: what a captured decode graph reads on replay.
        ops.get_decode_metadata(args.seq_lens, args.part_meta, args.batch_meta, args.rows)
        varlen = args.q_start is not None
        if (args.s_q, varlen) not in self._seen_s_q:
            self._seen_s_q.add((args.s_q, varlen))
            logger.info(
                "mla_backend: %sdecode batch with %s%d query token(s) per request, "
                "%d heads, %d split-KV parts",
                "varlen " if varlen else "",
                "up to " if varlen else "",
                args.s_q,
                self._num_heads,
                args.part_meta.shape[0],
            )
        return MlaBackendDecodeMetadata(
            block_table=args.block_table,
            seq_lens=args.seq_lens,
            dcp_tot_seq_lens=dcp_tot_seq_lens_device,
            kernel=args,
        )


class MlaBackendImpl(MLACommonImpl[MlaBackendMetadata]):
    can_return_lse_for_decode: bool = True  # natural log, as vLLM expects (lse_base_on_e)
    supports_pcp: bool = False
    supports_dcp: bool = False

    def __init__(
        self,
        num_heads: int,
        head_size: int,
        scale: float,
        num_kv_heads: int,
        alibi_slopes: list[float] | None,
        sliding_window: int | None,
        kv_cache_dtype: str,
        logits_soft_cap: float | None,
        attn_type: str,
        kv_sharing_target_layer_name: str | None,
        **mla_args,
    ) -> None:
        super().__init__(
            num_heads,
            head_size,
            scale,
            num_kv_heads,
            alibi_slopes,
            sliding_window,
            kv_cache_dtype,
            logits_soft_cap,
            attn_type,
            kv_sharing_target_layer_name,
            **mla_args,
        )
        if any((alibi_slopes, sliding_window, logits_soft_cap)):
            raise NotImplementedError(
                "mla_backend supports no alibi slopes, sliding window or logits soft cap"
            )
        if attn_type != AttentionType.DECODER:
            raise NotImplementedError(
                f"mla_backend supports decoder attention only, got {attn_type}"
            )
        if kv_cache_dtype not in MlaBackendAttentionBackend.supported_kv_cache_dtypes:
            raise NotImplementedError(f"mla_backend needs a bf16 KV cache, got {kv_cache_dtype}")
        if num_heads > ops.MAX_HEADS:
            raise NotImplementedError(
                f"mla_backend takes at most {ops.MAX_HEADS} query heads per rank, got {num_heads}"
            )
        if get_current_vllm_config().parallel_config.decode_context_parallel_size > 1:
            raise NotImplementedError("mla_backend does not support decode context parallelism")
        self.supports_quant_query_input = False  # bf16 queries only (no fp8 KV cache)

    def forward_mqa(self, q, kv_c_and_k_pe_cache, attn_metadata, layer):
        """Decode attention: q ``[T, h, 576]`` (``T = B * s_q``, or the requests' varying query
        lengths summed) -> (out ``[T, h, 512]``, lse ``[T, h]``)."""
        assert attn_metadata.decode is not None
        args = attn_metadata.decode.kernel
        q_pe = None
        if isinstance(q, tuple):  # (q_nope absorbed into the latent space, q_pe): read in place
            q, q_pe = q
            q_pe = decode_query_view(q_pe, args, HEAD_DIM_QK - HEAD_DIM_V)
            q = decode_query_view(q, args, HEAD_DIM_V)
        else:
            q = decode_query_view(q, args)
        # Outputs sized to this batch from the caching allocator (no cudaMalloc once warm; the
        # graph pool under capture), as vLLM's MLA backends do: a preallocated buffer would
        # pin max_num_seqs * s_q * heads * 1 KiB for the worst case.
        out = q.new_empty((*q.shape[:-1], HEAD_DIM_V))
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ops.mla_decode(
            q,
            kv_c_and_k_pe_cache,
            args.block_table,
            args.seq_lens,
            args.part_meta,
            args.batch_meta,
            self.scale,
            args.causal,
            out,
            lse,
            args.o_accum,
            args.lse_accum,
            q_pe,
            args.q_start,
            args.s_q if args.q_start is not None else 0,
        )
        return out.flatten(0, -3), lse.flatten(0, -2)
