"""Metadata + decode captured once in a CUDA graph follow new contents of q, the cache,
seqlens and the block table on every replay: the ops read them on the device, never the host."""

import pytest
import torch

from mla_backend import ops
from mla_backend.reference import check_decode_output, make_decode_inputs

pytestmark = pytest.mark.gpu

MAX_PAGES = 80  # up to 5120 tokens per sequence
NUM_PAGES = 4 * MAX_PAGES + 8
SCALE = 192**-0.5
# One batch of 4 per replay: longer, shorter, empty, page edges, the full block table.
ROUNDS = [
    [100, 0, 4000, 64],
    [5000, 1, 63, 65],
    [0, 0, 0, 0],
    [1, 2, 3, 4],
    [64 * MAX_PAGES, 7, 0, 4097],
]


def new_inputs(seqlens, s_q, h_q, seed):
    return make_decode_inputs(
        seqlens, s_q, h_q, device="cuda", num_pages=NUM_PAGES, max_pages=MAX_PAGES,
        generator=torch.Generator(device="cuda").manual_seed(seed),
    )  # fmt: skip


@pytest.mark.parametrize(("s_q", "h_q"), [(1, 16), (2, 128), (4, 3)])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("plan", [False, True])  # True: the decode call plans for itself
def test_replay_follows_new_contents(s_q, h_q, causal, plan):
    rows = s_q * h_q
    static = new_inputs(ROUNDS[0], s_q, h_q, seed=0)
    batch = len(ROUNDS[0])
    num_parts = ops.num_decode_parts(rows)
    part_meta = torch.empty(num_parts, 4, dtype=torch.int32, device="cuda")
    batch_meta = torch.empty(batch, 4, dtype=torch.int32, device="cuda")
    out = torch.empty(batch, s_q, h_q, 512, dtype=torch.bfloat16, device="cuda")
    lse = torch.empty(batch, s_q, h_q, device="cuda")
    o_accum, lse_accum = ops.decode_workspace(num_parts, rows, "cuda")

    def step():
        if not plan:
            ops.get_decode_metadata(static.seqlens, part_meta, batch_meta, rows)
        ops.mla_decode(
            static.q, static.kv_cache, static.block_table, static.seqlens, part_meta, batch_meta,
            SCALE, causal, out, lse, o_accum, lse_accum, plan=plan,
        )  # fmt: skip

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # warm-up outside capture (lazy module loading, smem attributes)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()

    for seed, seqlens in enumerate(ROUNDS, start=1):
        fresh = new_inputs(seqlens, s_q, h_q, seed)
        for name in ("q", "kv_cache", "block_table", "seqlens"):
            getattr(static, name).copy_(getattr(fresh, name))
        out.fill_(float("nan"))
        lse.fill_(float("nan"))
        o_accum.fill_(float("nan"))
        graph.replay()
        check_decode_output(
            out, lse, fresh.q, fresh.kv_cache, fresh.block_table, fresh.seqlens, SCALE, causal
        )
