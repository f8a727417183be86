"""What vLLM's (q_nope, q_pe) pair costs a decode step: torch.cat into a whole q, or q_pe.

    python benchmarks/q_split.py

vLLM hands an MLA backend's forward_mqa the absorbed q_nope as a transpose of its
[h, tokens, 512] bmm output and q_pe as a slice of the [tokens, h, 192] query projection. Per
shape: metadata + decode after torch.cat (what FlashMLA's backend does), metadata + decode with
q_pe (ours since v12), and the torch.cat alone; each timed in a CUDA graph by bench_decode's
time_calls. Checks that both give the same output bit for bit.
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.append(str(Path(__file__).resolve().parents[1]))

from bench_decode import graph_us  # noqa: E402

from mla_backend import ops  # noqa: E402

SHAPES = [(128, 64, 6144), (16, 64, 6144), (128, 8, 4096), (16, 128, 1024), (128, 128, 1024)]


def run(heads: int, batch: int, ctx: int) -> str:
    dev = "cuda"
    pages = (ctx + 63) // 64
    kv = torch.randn(batch * pages, 64, 576, device=dev).to(torch.bfloat16)
    block_table = torch.randperm(batch * pages, device=dev, dtype=torch.int32).view(batch, -1)
    seqlens = torch.full((batch,), ctx, dtype=torch.int32, device=dev)
    bmm_out = torch.randn(heads, batch, 512, device=dev).to(torch.bfloat16)
    proj = torch.randn(batch, heads, 192, device=dev).to(torch.bfloat16)
    q_nope = bmm_out.transpose(0, 1).unflatten(0, (batch, 1))
    q_pe = proj[..., 128:].unflatten(0, (batch, 1))
    parts = ops.num_decode_parts(heads, dev, batch=batch)
    part_meta = torch.empty(parts, 4, dtype=torch.int32, device=dev)
    batch_meta = torch.empty(batch, 4, dtype=torch.int32, device=dev)
    o_accum, lse_accum = ops.decode_workspace(parts, heads, dev)
    out = torch.empty(batch, 1, heads, 512, dtype=torch.bfloat16, device=dev)
    lse = torch.empty(batch, 1, heads, device=dev)

    def decode(q, pe=None):
        ops.get_decode_metadata(seqlens, part_meta, batch_meta, heads)
        ops.mla_decode(q, kv, block_table, seqlens, part_meta, batch_meta, 192**-0.5, False,
                       out, lse, o_accum, lse_accum, q_pe=pe)  # fmt: skip

    times = {
        "cat+decode": graph_us(lambda: decode(torch.cat((q_nope, q_pe), dim=-1))),
        "q_pe": graph_us(lambda: decode(q_nope, q_pe)),
        "cat": graph_us(lambda: torch.cat((q_nope, q_pe), dim=-1)),
    }
    decode(torch.cat((q_nope, q_pe), dim=-1))
    whole = out.clone()
    decode(q_nope, q_pe)
    same = torch.equal(whole, out)
    cols = "  ".join(f"{k} {v:.2f} us" for k, v in times.items())
    ratio = times["cat+decode"] / times["q_pe"]
    return f"h={heads} B={batch} L={ctx}: {cols}  q_pe {ratio:.3f}x faster  same={same}"


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    print(torch.cuda.get_device_name())
    for shape in SHAPES:
        print(run(*shape))


if __name__ == "__main__":
    main()
