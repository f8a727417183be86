"""CPU test of the adapters' plumbing: each vendor call is replaced by a fake that follows the
vendor's documented contract (argument names, layouts, LSE shape) and computes attention
independently; the adapter's outputs must then match the fp32 reference. Also runs
``run_case`` end to end with timing stubbed out.

Run: ``python -m pytest benchmarks/test_decode_impls.py``.
"""

from __future__ import annotations

import math
import os
import sys
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_decode  # noqa: E402
import decode_impls as di  # noqa: E402
import torch  # noqa: E402
from bench_utils import Case, check_indices  # noqa: E402

SCALE = 192**-0.5


def _pages(cache: torch.Tensor, row: torch.Tensor, length: int) -> torch.Tensor:
    """The first ``length`` token vectors of a sequence from a ``[P, 64, d]`` paged cache."""
    n = math.ceil(length / 64)
    return cache[row[:n].long()].reshape(n * 64, cache.shape[-1])[:length].float()


def _attend(scores: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lse = torch.logsumexp(scores, dim=-1)
    return torch.softmax(scores, dim=-1) @ v, lse


def _paged(q, cache, block_table, seqlens, scale, causal):
    """out [B, s_q, h, 512], lse [B, s_q, h]; cache [P, 64, 576]."""
    b_, s_q, h, _ = q.shape
    out, lse = torch.zeros(b_, s_q, h, 512), torch.zeros(b_, s_q, h)
    for b in range(b_):
        length = int(seqlens[b])
        kv = _pages(cache, block_table[b], length)
        for i in range(s_q):
            seen = length - s_q + i + 1 if causal else length
            out[b, i], lse[b, i] = _attend(q[b, i].float() @ kv[:seen].T * scale, kv[:seen, :512])
    return out, lse


def fake_ours():
    def mla_decode(q, kv, bt, seqlens, pm, bm, scale, causal, out, lse, oa, la, plan=False):
        assert pm.shape == (4, 4) and bm.shape == (q.shape[0], 4) and oa.shape[0] == 8
        assert isinstance(plan, bool)
        o, l_ = _paged(q, kv, bt, seqlens, scale, causal)
        out.copy_(o)
        lse.copy_(l_)

    return SimpleNamespace(
        num_decode_parts=lambda rows, device=None, batch=None: 4,
        get_decode_metadata=lambda seqlens, pm, bm, rows: (pm.zero_(), bm.zero_()),
        decode_workspace=lambda n, rows, device: (
            torch.empty(2 * n, rows, 512),
            torch.empty(2 * n, rows),
        ),
        mla_decode=mla_decode,
    )


def fake_flashmla():
    """vllm.third_party.flashmla.flash_mla_interface: lse is [B, h_q, s_q]."""

    class Sched:
        pass

    def get_mla_metadata(*args, **kwargs):
        assert kwargs == {"is_fp8_kvcache": False} and args[2] == 1
        return Sched(), None

    def flash_mla_with_kvcache(
        *, q, k_cache, block_table, cache_seqlens, head_dim_v, tile_scheduler_metadata,
        softmax_scale, causal, is_fp8_kvcache,
    ):  # fmt: skip
        assert k_cache.dim() == 4 and tuple(k_cache.shape[1:]) == (64, 1, 576)
        assert head_dim_v == 512 and causal is True and is_fp8_kvcache is False
        assert isinstance(tile_scheduler_metadata, Sched)
        s_q = q.shape[1]
        out, lse = _paged(q, k_cache[:, :, 0], block_table, cache_seqlens, softmax_scale, s_q > 1)
        return out.bfloat16(), lse.transpose(1, 2).contiguous()

    return SimpleNamespace(
        get_mla_metadata=get_mla_metadata, flash_mla_with_kvcache=flash_mla_with_kvcache
    )


def fake_fa3(swap_split: bool = False):
    """vllm.vllm_flash_attn: q is the rope part, q_v the latent part; lse is [h, total_q]."""

    def get_scheduler_metadata(
        *, batch_size, max_seqlen_q, max_seqlen_k, num_heads_q, num_heads_kv, headdim,
        cache_seqlens, qkv_dtype, headdim_v, page_size, cu_seqlens_q, causal, num_splits,
    ):  # fmt: skip
        assert (headdim, headdim_v, num_heads_kv, page_size) == (64, 512, 1, 64)
        assert qkv_dtype == torch.bfloat16 and causal is True
        assert max_seqlen_k == int(cache_seqlens.max()) and cu_seqlens_q.shape == (batch_size + 1,)
        return torch.zeros(4 * batch_size + 1, dtype=torch.int32)

    def flash_attn_varlen_func(
        *, q, k, v, q_v, max_seqlen_q, cu_seqlens_q, max_seqlen_k, seqused_k, block_table,
        softmax_scale, causal, return_softmax_lse, fa_version, scheduler_metadata, num_splits,
    ):  # fmt: skip
        assert q.shape[-1] == 64 and q_v.shape[-1] == 512 and fa_version == 3
        assert tuple(k.shape[1:]) == (64, 1, 64) and tuple(v.shape[1:]) == (64, 1, 512)
        assert q.stride(-1) == 1 and q_v.stride(-1) == 1 and return_softmax_lse
        if swap_split:
            q, q_v = q_v[..., :64], torch.cat([q, q_v[..., 64:]], -1)
        total, h = q.shape[:2]
        out, lse = torch.zeros(total, h, 512), torch.zeros(h, total)
        for b in range(block_table.shape[0]):
            r0, r1 = int(cu_seqlens_q[b]), int(cu_seqlens_q[b + 1])
            length, n = int(seqused_k[b]), r1 - r0
            k_pe = _pages(k[:, :, 0], block_table[b], length)
            latent = _pages(v[:, :, 0], block_table[b], length)
            for i in range(n):
                seen = length - n + i + 1 if causal else length  # bottom-right aligned
                scores = q[r0 + i].float() @ k_pe[:seen].T + q_v[r0 + i].float() @ latent[:seen].T
                out[r0 + i], lse[:, r0 + i] = _attend(scores * softmax_scale, latent[:seen])
        return out.bfloat16(), lse

    return SimpleNamespace(
        get_scheduler_metadata=get_scheduler_metadata,
        flash_attn_varlen_func=flash_attn_varlen_func,
    )


def fake_triton_fwd(
    q, k_buffer, v_buffer, o, lse, req_to_token, b_seq_len, attn_logits, num_kv_splits,
    sm_scale, page_size, k_scale=None, v_scale=None, is_mla=False,
):  # fmt: skip
    """vllm triton_decode_attention.decode_attention_fwd: one query token per row."""
    assert is_mla and page_size == 64 and attn_logits.shape[2] == num_kv_splits
    assert k_buffer.dim() == 4 and v_buffer.shape[-1] == 512 and float(k_scale) == 1.0
    assert v_buffer.data_ptr() == k_buffer.data_ptr() and o.shape[0] == req_to_token.shape[0]
    for t in range(q.shape[0]):
        kv = _pages(k_buffer[:, :, 0], req_to_token[t], int(b_seq_len[t]))
        out, l_ = _attend(q[t].float() @ kv.T * sm_scale, kv[:, :512])
        o[t], lse[t] = out, l_


def _install_fakes(fa3_swap: bool = False) -> None:
    di.Ours._ops = fake_ours()
    di.FlashMLA._fm = fake_flashmla()
    di.FA3._fa = fake_fa3(fa3_swap)
    di.Triton._fwd = staticmethod(fake_triton_fwd)
    # vLLM's helper needs a working triton (a placeholder without a GPU): use our copy.
    di._vllm_num_kv_splits_rule = lambda: None


def _data(s_q: int, lengths=(70, 130, 5, 64), heads: int = 16, n_sets: int = 2):
    lengths = tuple(max(n, s_q) for n in lengths)
    case = Case(heads, s_q, len(lengths), 128, "skewed", lengths)
    return bench_decode.make_case_data(case, n_sets, 3, SCALE, 1 << 40, device="cpu")


def test_adapters_match_reference():
    _install_fakes()
    for s_q in (1, 2, 4):
        data = _data(s_q)
        idx = check_indices(data.case.lengths, 8)
        ref = bench_decode.reference(data, idx)
        for name, cls in di.IMPLS.items():
            impl = cls(data, di.ImplOptions())
            out, lse = impl.run(0)
            status, rel, lse_err = bench_decode.compare(out, lse, ref, idx, 2e-2)
            assert status == "ok", (name, s_q, rel, lse_err)
            impl.whole(1)
            impl.kernel(1)


def test_ours_whole_step_modes(monkeypatch):
    """MLA_BENCH_WHOLE picks ours' step: one plan=True call (default), the metadata kernel then
    the decode, or the decode alone on the plan computed at construction."""
    _install_fakes()
    ops = di.Ours._ops
    calls = []
    decode = ops.mla_decode
    monkeypatch.setattr(ops, "get_decode_metadata", lambda s, pm, bm, rows: calls.append("meta"))

    def spy(q, kv, bt, seqlens, pm, bm, *rest, plan=False):
        calls.append(("decode", plan, pm.data_ptr() == impl.meta[0].data_ptr()))
        decode(q, kv, bt, seqlens, pm, bm, *rest, plan=plan)

    monkeypatch.setattr(ops, "mla_decode", spy)
    impl = di.Ours(_data(1), di.ImplOptions())
    expected = {
        None: [("decode", True, False)],
        "metadata": ["meta", ("decode", False, False)],
        "kernel": [("decode", False, True)],
    }
    for mode, want in expected.items():
        if mode is None:
            monkeypatch.delenv("MLA_BENCH_WHOLE", raising=False)
        else:
            monkeypatch.setenv("MLA_BENCH_WHOLE", mode)
        calls.clear()
        impl.whole(0)
        assert calls == want, (mode, calls)


def test_sets_are_distinct_and_block_tables_valid():
    data = _data(2, n_sets=3)
    pages = [set(bt[bt >= 0].tolist()) for bt in data.block_tables]
    used = [
        {int(bt[b, j]) for b, n in enumerate(data.case.lengths) for j in range(math.ceil(n / 64))}
        for bt in data.block_tables
    ]
    assert not (used[0] & used[1]) and not (used[1] & used[2]), "sets share pages"
    assert all(max(p) < data.kv_cache.shape[0] for p in pages)
    assert not torch.equal(data.q[0], data.q[1])
    assert data.kv_cache.float().std() > 0.5, "cache is random, not zeros"


def test_wrong_split_fails_the_check():
    _install_fakes(fa3_swap=True)
    data = _data(1)
    idx = check_indices(data.case.lengths, 8)
    out, lse = di.FA3(data, di.ImplOptions()).run(0)
    status, rel, _ = bench_decode.compare(out, lse, bench_decode.reference(data, idx), idx, 2e-2)
    assert status == "FAIL" and rel > 0.1
    _install_fakes()


def test_unsupported_cases():
    data = _data(2)
    for opts, cls in [
        (di.ImplOptions(triton_multi_token="skip"), di.Triton),
        (di.ImplOptions(fa3_num_splits=1 << 40), di.FA3),
    ]:
        try:
            cls(data, opts)
        except di.Unsupported:
            continue
        raise AssertionError(cls.name)


def test_run_case_end_to_end():
    _install_fakes()
    calls = []

    def fake_prepare_timing(fns, **kw):
        for f in fns:
            f()
        calls.append(len(fns))
        return bench_decode.Sampler(lambda: 10e-6 * len(fns), len(fns), 5, "graph")

    real = bench_decode.prepare_timing
    bench_decode.prepare_timing = fake_prepare_timing
    try:
        args = bench_decode.parse_args(["--rotate-mb", "100", "--max-sets", "3"])
        env = {"l2_bytes": 0, "num_sms": 132, "gpu": "fake"}
        ceilings = {"copy_gbps": 4000.0, "gemm_tflops": 700.0}
        case = _data(2).case
        impls = {"ours": None, "flashmla": None, "fa3": None, "triton": "not here"}
        di.FA3._fa = fake_fa3(swap_split=True)  # a broken rival: checked, never timed
        rows = bench_decode.run_case(case, args, impls, ceilings, env, device="cpu")
    finally:
        bench_decode.prepare_timing = real
        _install_fakes()
    status = {(r["impl"], r.get("mode")): r["status"] for r in rows}
    assert status == {
        ("ours", "whole"): "ok", ("ours", "kernel"): "ok",
        ("flashmla", "whole"): "ok", ("flashmla", "kernel"): "ok",
        ("fa3", None): "FAIL", ("triton", None): "unavailable",
    }, status  # fmt: skip
    assert calls == [3, 3, 3, 3] and all(r["n_sets"] == 3 for r in rows)
    whole, ours_kernel = bench_decode.by_mode(rows)
    line = bench_decode.progress_line(1, 1, case, rows, 0.5)
    assert "ours 10.0/10.0" in line and "fmla 10.0" in line and "fa3 FAIL" in line, line
    assert ours_kernel["us"] == 10.0 and whole["fa3"]["status"] == "FAIL"
    assert all(r["reps"] == 5 for r in rows if r.get("mode"))


def test_time_interleaved_round_robin():
    """Samples are taken in turn, each sampler up to its own reps; a failing one gets its
    exception and the others still finish."""
    order = []

    def sampler(name, reps, fail_at=None):
        def sample():
            if len([o for o in order if o == name]) == fail_at:
                raise RuntimeError(name)
            order.append(name)
            return 2e-6

        return bench_decode.Sampler(sample, 2, reps, "graph")

    out = bench_decode.time_interleaved([sampler("a", 3), sampler("b", 2), sampler("c", 3, 1)])
    assert order == ["a", "b", "c", "a", "b", "a"], order
    assert out[0].us == 1.0 and out[0].reps == 3 and out[1].reps == 2
    assert isinstance(out[2], RuntimeError)


def test_triton_split_rule_fallback():
    _install_fakes()
    # vLLM: next_power_of_2(max(1, max_len // 512)), capped at 2 x SMs
    expect = {1: 1, 1023: 1, 1024: 2, 1536: 4, 4096: 8, 32768: 64, 136627: 264}
    assert {n: di._triton_num_kv_splits(n, 132) for n in expect} == expect


def test_skip_over_budget():
    args = bench_decode.parse_args(["--mem-budget-gb", "0.000001"])
    case = _data(1).case
    rows = bench_decode.run_case(case, args, {"ours": None}, {}, {"l2_bytes": 0}, device="cpu")
    assert [r["status"] for r in rows] == ["skip"]
