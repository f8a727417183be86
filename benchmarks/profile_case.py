"""One decode shape, run a few times: a target for ncu (per-kernel times) or nsys.

    ncu --clock-control none --metrics gpu__time_duration.sum \\
        python benchmarks/profile_case.py --heads 128 --batch 1 --ctx 4096

Uniform lengths, random N(0, 1) inputs, pages scattered over the pool, metadata + decode per
repetition (the whole per-step cost the benchmark times), no checks: bench_decode.py checks.
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parents[1]))

from mla_backend import ops  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--ctx", type=int, default=4096)
    p.add_argument("--sq", type=int, default=1)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--parts", type=int, default=0, help="num_parts (0: num_decode_parts)")
    args = p.parse_args()

    dev = "cuda"
    pages_per_seq = (args.ctx + 63) // 64
    num_pages = args.batch * pages_per_seq
    kv = torch.randn(num_pages, 64, 576, device=dev).to(torch.bfloat16)
    block_table = torch.randperm(num_pages, device=dev, dtype=torch.int32).view(args.batch, -1)
    seqlens = torch.full((args.batch,), args.ctx, dtype=torch.int32, device=dev)
    q = torch.randn(args.batch, args.sq, args.heads, 576, device=dev).to(torch.bfloat16)
    rows = args.sq * args.heads
    num_parts = args.parts or ops.num_decode_parts(rows, dev, batch=args.batch)
    part_meta = torch.empty(num_parts, 4, dtype=torch.int32, device=dev)
    batch_meta = torch.empty(args.batch, 4, dtype=torch.int32, device=dev)
    o_accum, lse_accum = ops.decode_workspace(num_parts, rows, dev)
    out = torch.empty(args.batch, args.sq, args.heads, 512, dtype=torch.bfloat16, device=dev)
    lse = torch.empty(args.batch, args.sq, args.heads, device=dev)
    for _ in range(args.reps):
        ops.get_decode_metadata(seqlens, part_meta, batch_meta, rows)
        ops.mla_decode(
            q, kv, block_table, seqlens, part_meta, batch_meta, 192**-0.5, args.sq > 1,
            out, lse, o_accum, lse_accum,
        )  # fmt: skip
    torch.cuda.synchronize()
    print(f"heads={args.heads} batch={args.batch} ctx={args.ctx} s_q={args.sq} parts={num_parts}")


if __name__ == "__main__":
    main()
