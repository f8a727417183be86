"""Speculative-decoding steps whose requests have different query counts: ours in varlen mode
against FA3's varlen call (how vLLM's default FLASH_ATTN_MLA backend runs such a step) and
against ours in uniform mode on the batch padded to max_q_len (the best a backend with uniform
query counts only can do: vLLM sends such steps to its prefill path instead).

    python benchmarks/varlen_decode.py            # add --no-fa3 without vLLM

Per shape (heads, batch, context, max_q_len): query counts drawn from 1..max_q_len (seeded),
every sequence with `context` tokens in the cache; one input set (the KV stream, B x context x
1152 bytes, is several times the L2). Each variant is metadata + decode, timed in a CUDA graph
by bench_decode's time_calls; the padded variant's time leaves out building the padded q.
Ours in varlen mode runs on one split-KV part per SM (ops.num_varlen_decode_parts, what the
vLLM backend uses), and also on the uniform count of max_q_len (v13's). Checks ours (varlen)
against FA3 (max difference relative to the largest output).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.append(str(Path(__file__).resolve().parents[1]))

from bench_decode import graph_us  # noqa: E402

from mla_backend import ops  # noqa: E402

SHAPES = [(128, 64, 4096, 4), (128, 32, 8192, 4), (128, 128, 4096, 2), (64, 64, 4096, 4),
          (32, 128, 4096, 4), (16, 64, 4096, 4), (16, 128, 8192, 3)]  # fmt: skip
SCALE = 192**-0.5
FA3_SPLITS = 32  # vLLM's flash_attn_max_num_splits_for_cuda_graph


def query_counts(batch: int, max_q_len: int, seed: int) -> list[int]:
    """Query tokens per request, 1..max_q_len, at least one request with max_q_len."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, max_q_len + 1, (batch,), generator=g).tolist()
    counts[0] = max_q_len
    return counts


def run(heads: int, batch: int, ctx: int, max_q_len: int, fa) -> str:
    dev = "cuda"
    counts = query_counts(batch, max_q_len, seed=heads * 7919 + batch * 31 + ctx)
    tokens = sum(counts)
    q_start = torch.tensor([0] + counts, dtype=torch.int32).cumsum(0).to(torch.int32).to(dev)
    pages = (ctx + 63) // 64
    kv = torch.randn(batch * pages, 64, 576, device=dev).to(torch.bfloat16)
    block_table = torch.randperm(batch * pages, device=dev, dtype=torch.int32).view(batch, -1)
    seqlens = torch.full((batch,), ctx, dtype=torch.int32, device=dev)
    q = torch.randn(tokens, heads, 576, device=dev).to(torch.bfloat16)
    q_pad = torch.zeros(batch, max_q_len, heads, 576, device=dev, dtype=torch.bfloat16)
    for b, (start, n) in enumerate(zip(q_start.tolist(), counts, strict=False)):
        q_pad[b, max_q_len - n :] = q[start : start + n]  # the real tokens are the last ones

    rows = max_q_len * heads
    # Varlen on one part per SM (what the vLLM backend runs); the padded batch, and varlen on the
    # same parts as it (the v13 backend), on the uniform count.
    parts_v = ops.num_varlen_decode_parts(dev)
    parts = ops.num_decode_parts(rows, dev, batch=batch)
    part_meta_v = torch.empty(parts_v, 4, dtype=torch.int32, device=dev)
    part_meta = torch.empty(parts, 4, dtype=torch.int32, device=dev)
    batch_meta = torch.empty(batch, 4, dtype=torch.int32, device=dev)
    o_accum_v, lse_accum_v = ops.decode_workspace(parts_v, rows, dev)
    o_accum, lse_accum = ops.decode_workspace(parts, rows, dev)
    out = torch.empty(tokens, heads, 512, dtype=torch.bfloat16, device=dev)
    lse = torch.empty(tokens, heads, device=dev)
    out_pad = torch.empty(batch, max_q_len, heads, 512, dtype=torch.bfloat16, device=dev)
    lse_pad = torch.empty(batch, max_q_len, heads, device=dev)

    def ours_varlen():
        ops.get_decode_metadata(seqlens, part_meta_v, batch_meta, rows)
        ops.mla_decode(q, kv, block_table, seqlens, part_meta_v, batch_meta, SCALE, True,
                       out, lse, o_accum_v, lse_accum_v, q_start=q_start,
                       max_q_len=max_q_len)  # fmt: skip

    def ours_varlen_uniform_parts():
        ops.get_decode_metadata(seqlens, part_meta, batch_meta, rows)
        ops.mla_decode(q, kv, block_table, seqlens, part_meta, batch_meta, SCALE, True, out, lse,
                       o_accum, lse_accum, q_start=q_start, max_q_len=max_q_len)  # fmt: skip

    def ours_padded():
        ops.get_decode_metadata(seqlens, part_meta, batch_meta, rows)
        ops.mla_decode(q_pad, kv, block_table, seqlens, part_meta, batch_meta, SCALE, True,
                       out_pad, lse_pad, o_accum, lse_accum)  # fmt: skip

    times = {
        f"ours varlen ({parts_v} parts)": graph_us(ours_varlen),
        f"ours varlen ({parts} parts)": graph_us(ours_varlen_uniform_parts),
        "ours padded": graph_us(ours_padded),
    }
    ours = times[f"ours varlen ({parts_v} parts)"]
    check = ""
    if fa is not None:
        k = kv[..., 512:].unsqueeze(-2)
        v = kv[..., :512].unsqueeze(-2)

        def fa3():
            sched = fa.get_scheduler_metadata(
                batch_size=batch, max_seqlen_q=max_q_len, max_seqlen_k=ctx, num_heads_q=heads,
                num_heads_kv=1, headdim=64, cache_seqlens=seqlens, qkv_dtype=torch.bfloat16,
                headdim_v=512, page_size=64, cu_seqlens_q=q_start, causal=True,
                num_splits=FA3_SPLITS,
            )  # fmt: skip
            return fa.flash_attn_varlen_func(
                q=q[..., 512:], k=k, v=v, q_v=q[..., :512], max_seqlen_q=max_q_len,
                cu_seqlens_q=q_start, max_seqlen_k=ctx, seqused_k=seqlens,
                block_table=block_table, softmax_scale=SCALE, causal=True,
                return_softmax_lse=True, fa_version=3, scheduler_metadata=sched,
                num_splits=FA3_SPLITS,
            )  # fmt: skip

        times["fa3 varlen"] = graph_us(fa3)
        fa_out = fa3()[0]
        ours_varlen()
        torch.cuda.synchronize()
        rel = ((out.float() - fa_out.float()).abs().max() / fa_out.float().abs().max()).item()
        check = f"  |ours - fa3| / max|fa3| = {rel:.2e}"
    cols = "  ".join(f"{name} {us:.1f} us" for name, us in times.items())
    ratios = f"  padded/varlen {times['ours padded'] / ours:.3f}x"
    if "fa3 varlen" in times:
        ratios += f"  fa3/ours {times['fa3 varlen'] / ours:.3f}x"
    shape = f"h={heads} B={batch} L={ctx} q_len 1..{max_q_len} ({tokens} tokens)"
    return f"{shape}: {cols}{ratios}{check}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-fa3", action="store_true", help="skip FA3 (needs vLLM 0.26)")
    args = ap.parse_args()
    fa = None
    if not args.no_fa3:
        from vllm import vllm_flash_attn as fa
    print(torch.cuda.get_device_name())
    for shape in SHAPES:
        print(run(*shape, fa), flush=True)


if __name__ == "__main__":
    main()
