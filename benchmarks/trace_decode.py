"""Where a decode call's time goes, per CTA: event clocks from a trace build (docs/perf.md v10).

    MLA_TRACE=1 python setup.py build_ext --inplace   # a trace build (not for production)
    python benchmarks/trace_decode.py 64,1,132,1024 128,1,128,4096 --out /tmp/trace

A case is ``heads,s_q,batch,context[,dist[,parts]]`` (causal): dist ``uniform`` (the default),
``skewed`` or ``onelong``, with the lengths the benchmark grid draws for that case
(``bench_utils.grid_lengths``, seed 0); parts, the split-KV part count
(default: the one ``ops.get_mla_metadata`` picks). Each case runs metadata +
decode eagerly a few times, then three calls with ``MLA_TRACE_FILE`` set, whose decode kernel
writes, per CTA, its global-timer entry and exit and the clock of its events (the layout is in
csrc/sm90/decode/trace.cuh); the last call is summarised: entry skew, the wait on the metadata
kernel, per sequence the time to Q resident, to the first S issued, per page, the two
warpgroups' epilogues and the gap to the next sequence, each warpgroup's time waiting for pages
to land (per page), and the CTA that finished last. A
traced call synchronises, so this is for eager calls, never inside a CUDA graph.
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_utils import grid_lengths  # noqa: E402

MAGIC = 0x54414C4D  # 'MLAT'
SLOTS = 64
# trace.cuh
G_IN, C_IN, META, NSEQ, SEQ0, WAIT_S, WAIT_V, C_OUT, G_OUT = 0, 1, 2, 3, 4, 60, 61, 62, 63
START, Q_READY, FIRST_S, LAST_PAGE, EPI_S, PAGES, EPI_V, STRIDE = range(8)
MAX_SEQS = (WAIT_S - SEQ0) // STRIDE


@dataclass
class Trace:
    grid_x: int
    grid_y: int
    rows: list[list[int]]  # per CTA (y major), SLOTS values


def read_traces(path: str | Path) -> list[Trace]:
    """Every traced call appended to ``path`` (header: 'MLAT', grid x, grid y, slots)."""
    data = Path(path).read_bytes()
    out, off = [], 0
    while off < len(data):
        magic, gx, gy, slots = struct.unpack_from("<4I", data, off)
        if magic != MAGIC or slots != SLOTS:
            raise ValueError(f"{path}: not a decode trace at byte {off}")
        off += 16
        n = gx * gy * slots
        vals = struct.unpack_from(f"<{n}Q", data, off)
        off += 8 * n
        out.append(Trace(gx, gy, [list(vals[i * slots : (i + 1) * slots]) for i in range(gx * gy)]))
    return out


def _stats(values: list[float]) -> tuple[float, float, float]:
    return min(values), statistics.median(values), max(values)


def summarize(t: Trace) -> dict:
    """Microsecond statistics (min, median, max) of one traced call; see the module docstring."""
    done = [r for r in t.rows if r[G_OUT] > 0]
    if not done:
        raise ValueError("no CTA recorded its exit: not a trace build, or the call failed")
    base = min(r[G_IN] for r in done)
    live = [r for r in done if r[NSEQ] > 0 and r[C_OUT] > r[C_IN]]
    # clock64 ticks per ns, from each live CTA's global-timer and clock spans
    ns_per_clk = statistics.median((r[G_OUT] - r[G_IN]) / (r[C_OUT] - r[C_IN]) for r in live)

    def us(clocks: float) -> float:
        return clocks * ns_per_clk / 1000

    per_seq: dict[str, list[float]] = {
        k: [] for k in ("q_ready", "first_s", "per_page", "epilogue_s", "epilogue_v", "gap")
    }
    pages_per_cta, wait_s, wait_v = [], [], []
    for r in live:
        prev_end, total = r[META], 0
        for k in range(min(r[NSEQ], MAX_SEQS)):
            s = SEQ0 + STRIDE * k
            pages = r[s + PAGES]
            total += pages
            per_seq["gap"].append(us(r[s + START] - prev_end))
            per_seq["q_ready"].append(us(r[s + Q_READY] - r[s + START]))
            if pages > 0:
                per_seq["first_s"].append(us(r[s + FIRST_S] - r[s + Q_READY]))
                if pages > 1:
                    per_seq["per_page"].append(us(r[s + LAST_PAGE] - r[s + FIRST_S]) / pages)
            per_seq["epilogue_s"].append(us(r[s + EPI_S] - r[s + LAST_PAGE]))
            per_seq["epilogue_v"].append(us(r[s + EPI_V] - r[s + LAST_PAGE]))
            prev_end = max(r[s + EPI_S], r[s + EPI_V])
        pages_per_cta.append(total)
        if total > 0:  # page waits per page, over the whole call
            wait_s.append(us(r[WAIT_S]) / total)
            wait_v.append(us(r[WAIT_V]) / total)
    last = max(done, key=lambda r: r[G_OUT])
    return {
        "ctas": len(t.rows),
        "ctas_with_work": len(live),
        "ns_per_clock": ns_per_clk,
        "span_us": (max(r[G_OUT] for r in done) - base) / 1000,
        "entry_skew_us": _stats([(r[G_IN] - base) / 1000 for r in done]),
        "meta_wait_us": _stats([us(r[META] - r[C_IN]) for r in live]),
        # entry to the first sequence's opening barrier, and to its first S issued
        "to_start_us": _stats([us(r[SEQ0 + START] - r[C_IN]) for r in live]),
        "to_first_s_us": _stats(
            [us(r[SEQ0 + FIRST_S] - r[C_IN]) for r in live if r[SEQ0 + PAGES] > 0] or [0.0]
        ),
        "exit_us": _stats([(r[G_OUT] - base) / 1000 for r in live]),
        **{k: _stats(v) for k, v in per_seq.items() if v},
        "wait_s_per_page": _stats(wait_s),
        "wait_v_per_page": _stats(wait_v),
        "pages_per_cta": _stats(pages_per_cta),
        "last_cta": {
            "index": t.rows.index(last),
            "sequences": last[NSEQ],
            "exit_us": (last[G_OUT] - base) / 1000,
        },
    }


def format_summary(title: str, s: dict) -> str:
    lines = [
        f"== {title}: {s['ctas']} CTAs, {s['ctas_with_work']} with work, "
        f"{s['ns_per_clock']:.3f} ns/clock, span {s['span_us']:.1f} us"
    ]
    for key in ("entry_skew_us", "meta_wait_us", "to_start_us", "to_first_s_us", "q_ready",
                "first_s", "per_page", "epilogue_s", "epilogue_v", "gap", "wait_s_per_page",
                "wait_v_per_page", "exit_us", "pages_per_cta"):  # fmt: skip
        if key in s:
            lo, med, hi = s[key]
            lines.append(f"  {key:14s} min {lo:8.2f}  med {med:8.2f}  max {hi:8.2f}")
    last = s["last_cta"]
    lines.append(
        f"  last CTA {last['index']}: {last['sequences']} sequence(s), "
        f"exit {last['exit_us']:.2f} us"
    )
    return "\n".join(lines)


def require_trace_build() -> None:
    """Exit with a message unless the imported extension is a trace build (setup.py's record)."""
    from mla_backend import _build_info

    if not getattr(_build_info, "TRACE_BUILD", False):
        raise SystemExit(
            f"{_build_info.__file__}: not a trace build; build one with MLA_TRACE=1 python "
            "setup.py build_ext --inplace (or put such a package first on PYTHONPATH)"
        )


def case_lengths(heads: int, s_q: int, batch: int, context: int, dist: str) -> list[int]:
    """The cache lengths the benchmark grid uses for this case."""
    return grid_lengths(dist, batch, context, s_q)


def run_case(
    heads: int, s_q: int, batch: int, context: int, path: Path, dist: str = "uniform",
    num_parts: int | None = None, mode: str = "metadata",
) -> Trace:  # fmt: skip
    import torch

    from mla_backend import ops

    dev = "cuda"
    gen = torch.Generator(device=dev).manual_seed(0)
    lengths = case_lengths(heads, s_q, batch, context, dist)
    pages_per_seq = max((n + 63) // 64 for n in lengths)
    num_pages = batch * pages_per_seq + 8
    kv = torch.randn(num_pages, 64, 576, device=dev, dtype=torch.bfloat16, generator=gen)
    perm = torch.randperm(num_pages - 8, device=dev, generator=gen).to(torch.int32)
    block_table = perm[: batch * pages_per_seq].view(batch, pages_per_seq).contiguous()
    seqlens = torch.tensor(lengths, dtype=torch.int32, device=dev)
    q = torch.randn(batch, s_q, heads, 576, device=dev, dtype=torch.bfloat16, generator=gen)
    out = torch.empty(batch, s_q, heads, 512, device=dev, dtype=torch.bfloat16)
    lse = torch.empty(batch, s_q, heads, device=dev, dtype=torch.float32)
    part_meta, batch_meta = ops.get_mla_metadata(seqlens, s_q * heads, 1, num_parts=num_parts)
    o_accum, lse_accum = ops.decode_workspace(part_meta.size(0), s_q * heads, dev)

    ops.get_decode_metadata(seqlens, part_meta, batch_meta, s_q * heads)

    def call() -> None:
        if mode == "metadata":
            ops.get_decode_metadata(seqlens, part_meta, batch_meta, s_q * heads)
        ops.mla_decode(q, kv, block_table, seqlens, part_meta, batch_meta, 192**-0.5, True,
                       out, lse, o_accum, lse_accum, plan=mode == "plan")  # fmt: skip

    for _ in range(5):
        call()
    torch.cuda.synchronize()
    path.unlink(missing_ok=True)
    for _ in range(3):
        os.environ["MLA_TRACE_FILE"] = str(path)
        try:
            call()
        finally:
            os.environ.pop("MLA_TRACE_FILE")
        for _ in range(2):
            call()
        torch.cuda.synchronize()
    if not path.exists():
        raise SystemExit(f"no trace written to {path}: the traced decode call did not record")
    return read_traces(path)[-1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("cases", nargs="+", help="heads,s_q,batch,context[,dist[,parts]]")
    ap.add_argument("--out", default="trace_out", help="folder for the raw traces")
    ap.add_argument(
        "--mode", choices=("metadata", "given", "plan"), default="metadata",
        help="metadata: the metadata kernel, then the decode; given: the decode on a plan made "
        "once; plan: mla_decode(plan=True), which plans in its kernels when small enough",
    )  # fmt: skip
    args = ap.parse_args(argv)
    sys.path.append(str(Path(__file__).resolve().parents[1]))
    require_trace_build()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for text in args.cases:
        fields = text.split(",")
        heads, s_q, batch, context = (int(x) for x in fields[:4])
        dist = fields[4] if len(fields) > 4 else "uniform"
        num_parts = int(fields[5]) if len(fields) > 5 else None
        tag = f"{heads}_{s_q}_{batch}_{context}_{dist}" + (f"_p{num_parts}" if num_parts else "")
        raw = out / f"trace_{tag}_{args.mode}.bin"
        trace = run_case(heads, s_q, batch, context, raw, dist, num_parts, args.mode)
        title = (
            f"h={heads} s_q={s_q} B={batch} L={context} {dist} ({args.mode}), "
            f"grid {trace.grid_x}x{trace.grid_y}"
        )
        print(format_summary(title, summarize(trace)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
