"""The vLLM metadata builder's flow on the GPU, without vLLM: buffers from
`plan.allocate_decode_buffers`, one decode captured in a CUDA graph, then per step (as vLLM
builds metadata before every replay) `plan.map_decode` + `get_decode_metadata` outside the
graph on new batch contents, including CUDA-graph padding (seq len 0, null block-table rows)."""

import pytest
import torch

from mla_backend import ops
from mla_backend.reference import check_decode_output, make_decode_inputs
from mla_backend.vllm.plan import allocate_decode_buffers, map_decode

pytestmark = pytest.mark.gpu

SCALE = 192**-0.5
MAX_PAGES = 40
NUM_PAGES = 6 * MAX_PAGES
NULL_BLOCK_ID = 0
# 4 real requests, then 2 of CUDA-graph padding; real ones hold at least their s_q new tokens
ROUNDS = [[100, 4, 2000, 64], [65, 2500, 63, 4], [4, 4, 4, 4], [64 * MAX_PAGES, 7, 129, 1000]]
PADDING = 2


def batch_inputs(seqlens, s_q, h_q, seed):
    inputs = make_decode_inputs(
        seqlens + [0] * PADDING, s_q, h_q, device="cuda", num_pages=NUM_PAGES,
        max_pages=MAX_PAGES, generator=torch.Generator(device="cuda").manual_seed(seed),
    )  # fmt: skip
    inputs.block_table[len(seqlens) :] = NULL_BLOCK_ID
    return inputs


@pytest.mark.parametrize(("s_q", "h_q"), [(1, 16), (4, 16), (2, 128), (4, 128)])
def test_builder_flow_under_cuda_graph(s_q, h_q):
    bufs = allocate_decode_buffers(
        max_batch=8,
        max_s_q=4,
        num_heads=h_q,
        num_parts_for_rows=ops.num_decode_parts,
        device="cuda",
    )
    static = batch_inputs(ROUNDS[0], s_q, h_q, seed=0)
    batch, num_real = len(ROUNDS[0]) + PADDING, len(ROUNDS[0])

    def build():  # what MlaBackendMetadataBuilder._build_decode does
        args = map_decode(static.block_table, static.seqlens, batch * s_q, bufs)
        ops.get_decode_metadata(args.seq_lens, args.part_meta, args.batch_meta, args.rows)
        return args

    args = build()
    out = torch.empty(batch, s_q, h_q, 512, dtype=torch.bfloat16, device="cuda")
    lse = torch.empty(batch, s_q, h_q, device="cuda")

    def decode():  # what MlaBackendImpl.forward_mqa does, inside the captured graph
        ops.mla_decode(static.q, static.kv_cache, args.block_table, args.seq_lens,
                       args.part_meta, args.batch_meta, SCALE, args.causal, out, lse,
                       args.o_accum, args.lse_accum)  # fmt: skip

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        decode()  # warm-up outside capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        decode()

    for seed, seqlens in enumerate(ROUNDS, start=1):
        fresh = batch_inputs(seqlens, s_q, h_q, seed)
        for name in ("q", "kv_cache", "block_table", "seqlens"):
            getattr(static, name).copy_(getattr(fresh, name))
        step = build()
        assert step.part_meta.data_ptr() == args.part_meta.data_ptr()
        assert step.batch_meta.data_ptr() == args.batch_meta.data_ptr()
        assert step.o_accum.data_ptr() == args.o_accum.data_ptr()
        out.fill_(float("nan"))
        lse.fill_(float("nan"))
        graph.replay()
        check_decode_output(out, lse, fresh.q, fresh.kv_cache, fresh.block_table,
                            fresh.seqlens, SCALE, args.causal)  # fmt: skip
        assert torch.all(out[num_real:] == 0) and torch.all(lse[num_real:] == float("-inf"))
