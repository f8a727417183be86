"""A few decode calls for compute-sanitizer: every kernel path on small, awkward shapes.

    compute-sanitizer --tool memcheck python benchmarks/sanitize_decode.py
    compute-sanitizer --tool racecheck python benchmarks/sanitize_decode.py --no-check

Each case runs metadata + decode once, or a decode that plans for itself (``plan=True``), on
3 to 128 query rows, one or several 64-row tiles, split and unsplit sequences, partial pages,
empty sequences, s_q > 1 with causal masking, the planner's part-size search and its
global-memory path over 4096 sequences, varlen queries; it
checks the result against the fp32 reference, so a run that the tool passes also computed the
right thing. Exit status 1 if a check fails. ``--no-check`` (for racecheck) skips the reference,
which is slow under racecheck and whose cuBLAS matmuls draw reports that are not ours, and the
cases of more than 64 sequences (the 4101-sequence one outlasts a 4-minute cap there).
"""

import sys
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parents[1]))

from mla_backend import ops  # noqa: E402
from mla_backend.reference import (  # noqa: E402
    check_decode_output,
    make_decode_inputs,
    varlen_queries,
)

SCALE = 192**-0.5
# (seqlens, s_q, h_q, num_parts): None = the default split.
CASES = [
    ([130, 0, 64, 1], 1, 16, None),
    ([700, 65], 1, 16, 7),
    ([300], 2, 16, 3),
    ([130, 0, 64, 1], 1, 128, None),
    ([700, 65], 2, 64, 5),
    ([200, 3], 4, 32, 2),
    ([129], 1, 3, 1),
    ([700] * 40 + [5, 0], 1, 16, None),  # batch * 4 >= num_parts: the part-size search runs
    ([300, 2000] * 20, 2, 64, None),
    ([1, 70, 0, 130] * 1025 + [3000], 1, 16, None),  # 4101 sequences: the metadata kernel
    # The combine's per-(sequence, row) kernels with their first pass before the wait (<4>, <2>,
    # <1> on an H200) and one without (<1>, 512 CTAs); see tests/gpu/test_decode.py.
    ([8192], 1, 16, None),
    ([1024], 1, 32, None),
    ([1024, 700, 1000, 900, 1024, 513, 1024, 64], 1, 16, None),
    ([1024, 700, 1000, 900, 1024, 513, 1024, 64], 1, 64, None),
]
# The same kernels planning for themselves (mla_decode(..., plan=True), small calls): the
# warp plan in the decode kernel and in each combine kernel (<4>, <1> warm, <1> cold), and a
# call whose part size is priced (42 sequences: the metadata kernel inside the call).
PLAN_CASES = [
    ([130, 0, 64, 1], 1, 16, None),
    ([8192], 1, 16, None),
    ([1024, 700, 1000, 900, 1024, 513, 1024, 64], 1, 16, None),
    ([1024, 700, 1000, 900, 1024, 513, 1024, 64], 2, 64, None),
    ([700] * 40 + [5, 0], 1, 16, None),
]
# Varlen (q_start): (seqlens, query tokens per sequence, max_q_len, h_q, num_parts); the row
# tiles past a short sequence's rows are skipped by the main kernel and the combine.
VARLEN_CASES = [
    ([700, 65, 0, 200], [3, 1, 2, 4], 4, 32, 5, False),
    ([300, 129], [1, 2], 3, 128, None, False),
    ([700, 65, 0, 200], [3, 1, 2, 4], 4, 32, None, True),
]


def run_varlen(
    seed: int, seqlens, q_lens, max_q_len, h_q, num_parts, plan: bool, check: bool
) -> str:
    gen = torch.Generator(device="cuda").manual_seed(seed)
    inputs = make_decode_inputs(seqlens, max_q_len, h_q, device="cuda", generator=gen)
    q, q_start = varlen_queries(inputs.q, q_lens)
    rows = max_q_len * h_q
    part_meta, batch_meta = ops.get_mla_metadata(inputs.seqlens, rows, num_parts=num_parts)
    out = torch.full((q.shape[0], h_q, 512), float("nan"), dtype=torch.bfloat16, device="cuda")
    lse = torch.full((q.shape[0], h_q), float("nan"), device="cuda")
    o_accum, lse_accum = ops.decode_workspace(part_meta.size(0), rows, "cuda")
    ops.mla_decode(
        q, inputs.kv_cache, inputs.block_table, inputs.seqlens, part_meta, batch_meta, SCALE,
        True, out, lse, o_accum, lse_accum, q_start=q_start, max_q_len=max_q_len, plan=plan,
    )  # fmt: skip
    torch.cuda.synchronize()
    if not check:
        return "ran, not checked"
    check_decode_output(
        out, lse, q, inputs.kv_cache, inputs.block_table, inputs.seqlens, SCALE, True,
        q_start=q_start,
    )  # fmt: skip
    return "ok"


def main() -> int:
    check = "--no-check" not in sys.argv[1:]
    failures = 0
    cases = [(*c, False) for c in CASES] + [(*c, True) for c in PLAN_CASES]
    for seed, (seqlens, s_q, h_q, num_parts, plan) in enumerate(cases):
        if not check and len(seqlens) > 64:
            continue
        gen = torch.Generator(device="cuda").manual_seed(seed)
        inputs = make_decode_inputs(seqlens, s_q, h_q, device="cuda", generator=gen)
        rows = s_q * h_q
        part_meta, batch_meta = ops.get_mla_metadata(inputs.seqlens, rows, num_parts=num_parts)
        batch = len(seqlens)
        out = torch.full((batch, s_q, h_q, 512), float("nan"), dtype=torch.bfloat16, device="cuda")
        lse = torch.full((batch, s_q, h_q), float("nan"), device="cuda")
        o_accum, lse_accum = ops.decode_workspace(part_meta.size(0), rows, "cuda")
        causal = s_q > 1
        ops.mla_decode(
            inputs.q, inputs.kv_cache, inputs.block_table, inputs.seqlens, part_meta, batch_meta,
            SCALE, causal, out, lse, o_accum, lse_accum, plan=plan,
        )  # fmt: skip
        torch.cuda.synchronize()
        status = "ran, not checked"
        if check:
            # Large batches: a sample of sequences (the reference runs per sequence, slowly under
            # the sanitizers), the last one among them.
            keep = sorted(set(range(0, batch, max(1, batch // 24))) | {batch - 1})
            try:
                check_decode_output(
                    out[keep], lse[keep], inputs.q[keep], inputs.kv_cache,
                    inputs.block_table[keep], inputs.seqlens[keep], SCALE, causal,
                )  # fmt: skip
                status = "ok"
            except AssertionError as err:
                failures += 1
                status = f"FAIL {str(err).splitlines()[0]}"
        shown = seqlens if batch <= 8 else f"{batch} sequences"
        print(
            f"seqlens={shown} s_q={s_q} h_q={h_q} num_parts={num_parts} plan={plan}: {status}",
            flush=True,
        )
    for seed, (seqlens, q_lens, max_q_len, h_q, num_parts, plan) in enumerate(
        VARLEN_CASES, start=100
    ):
        try:
            status = run_varlen(seed, seqlens, q_lens, max_q_len, h_q, num_parts, plan, check)
        except AssertionError as err:
            failures += 1
            status = f"FAIL {str(err).splitlines()[0]}"
        shown = f"varlen seqlens={seqlens} q_lens={q_lens} h_q={h_q} plan={plan}"
        print(f"{shown}: {status}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
