"""Where warpgroup S's time goes, by region of its page loop: ncu's stall samples per SASS line.

    python benchmarks/stall_regions.py run 128,1,128,16384 128,4,32,4096 --out /tmp/stalls
    python benchmarks/stall_regions.py report /tmp/stalls/*.csv.gz

`run` profiles the decode kernel of each case (``heads,s_q,batch,context``, uniform lengths,
through profile_case.py) with ncu's WarpStateStats and SourceCounters sections, and writes the
per-instruction source page (``ncu --page source --csv --print-source sass``) to
``OUT/<case>.csv.gz``; `report` reads such files and prints, per file, the share of all stall
samples that fall in warpgroup S's loop and how they split over its regions (docs/perf.md, v11):

    issue P V      S's O += P(j) V_j (the wgmma with P in registers)
    wait P V       the wait for it to complete and the "S done" arrive (page j may be refilled)
    page wait      the mbarrier wait for page j+1 (and a partial page's tail zeroing)
    issue S        the 36 wgmma of S(j+1); they stall while the tensor pipe is busy
    wait S         the wgmma wait for S(j+1)
    softmax        scores to P, the O rescale, up to the "free" barrier
    publish        the "free" barrier, P and alpha into shared memory, the fence, "ready"

The regions are found by the SASS the current kernel compiles to (csrc/sm90/decode/kernel.cuh,
since docs/perf.md v16): the first HGMMA with a register A operand opens the loop, then in order
``WARPGROUP.DEPBAR.LE gsb0, 0x0``, a TRYWAIT, the first ``HGMMA.64x64x16``, the next
``WARPGROUP.DEPBAR.LE gsb0, 0x0``, ``BAR.SYNC ... 0x4`` and ``BAR.ARV 0x2``. A kernel that no
longer has that shape makes `report` say which marker it missed rather than guess.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

REGIONS = ("issue P V", "wait P V", "page wait", "issue S", "wait S", "softmax", "publish")
SAMPLES = "Warp Stall Sampling (All Samples)"


def _open_text(path: Path) -> str:
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data.decode()


def read_source_page(text: str) -> tuple[list[str], list[dict[str, str]]]:
    """The header and rows of ncu's source page CSV (the lines before the header are skipped)."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith('"Address"')), None)
    if start is None:
        raise ValueError('not an ncu source page: no header line starting with "Address"')
    reader = csv.DictReader(io.StringIO("\n".join(lines[start:])))
    return list(reader.fieldnames or []), list(reader)


def _find(ops: list[str], pattern: str, start: int) -> int:
    for i in range(start, len(ops)):
        if pattern in ops[i]:
            return i
    raise ValueError(f"marker {pattern!r} not found after SASS line {start}")


def region_bounds(ops: list[str]) -> dict[str, tuple[int, int]]:
    """[first, last) SASS line of each region of warpgroup S's loop; see the module docstring."""

    def register_a(op: str) -> bool:  # "HGMMA... R24, R184, gdesc[...]": A from registers
        return "HGMMA.64x256x16" in op and ", R" in op.split("gdesc")[0]

    begin = next((i for i, op in enumerate(ops) if register_a(op)), None)
    if begin is None:
        raise ValueError("no HGMMA with a register A operand: not the 64-row decode kernel")
    wait_pv = _find(ops, "WARPGROUP.DEPBAR.LE gsb0, 0x0", begin)
    wait_page = _find(ops, "TRYWAIT", wait_pv)
    issue_s = _find(ops, "HGMMA.64x64x16", wait_page)
    wait_s = _find(ops, "WARPGROUP.DEPBAR.LE gsb0, 0x0", issue_s)
    softmax = wait_s + 1
    publish = _find(ops, "BAR.SYNC.DEFER_BLOCKING 0x4", softmax)
    end = _find(ops, "BAR.ARV 0x2", publish) + 1
    edges = (begin, wait_pv, wait_page, issue_s, wait_s, softmax, publish, end)
    return {name: (edges[k], edges[k + 1]) for k, name in enumerate(REGIONS)}


def summarize(text: str) -> dict:
    """Stall samples: total, in S's loop, per region (fractions of the loop) and per reason."""
    header, rows = read_source_page(text)
    if SAMPLES not in header:
        raise ValueError(f"no {SAMPLES!r} column: profile with --section SourceCounters")
    ops = [r["Source"].strip() for r in rows]
    samples = [int(r[SAMPLES] or 0) for r in rows]
    bounds = region_bounds(ops)
    first, last = bounds[REGIONS[0]][0], bounds[REGIONS[-1]][1]
    in_loop = sum(samples[first:last])
    reasons = [h for h in header if h.startswith("stall_") and "Not Issued" not in h]
    by_reason = {
        h[len("stall_") :]: sum(int(r[h] or 0) for r in rows[first:last] if r[h].isdigit())
        for h in reasons
    }
    return {
        "samples": sum(samples),
        "loop_samples": in_loop,
        "regions": {k: sum(samples[a:b]) / max(in_loop, 1) for k, (a, b) in bounds.items()},
        "loop_reasons": {k: v / max(in_loop, 1) for k, v in by_reason.items() if v},
    }


def format_summary(title: str, s: dict) -> str:
    share = s["loop_samples"] / max(s["samples"], 1)
    lines = [f"== {title}: {s['samples']} samples, warpgroup S's loop {share:.1%} of them"]
    lines += [f"  {k:10s} {v:6.1%}" for k, v in s["regions"].items()]
    top = sorted(s["loop_reasons"].items(), key=lambda kv: -kv[1])[:4]
    lines.append("  reasons in the loop: " + ", ".join(f"{k} {v:.0%}" for k, v in top))
    return "\n".join(lines)


def run(cases: list[str], out: Path) -> list[Path]:
    """Profiles each case with ncu and writes OUT/<case>.csv.gz (needs a GPU and ncu)."""
    ncu = shutil.which("ncu") or "/usr/local/cuda/bin/ncu"
    here = Path(__file__).resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for case in cases:
        heads, s_q, batch, ctx = (int(x) for x in case.split(","))
        tag = f"h{heads}_s{s_q}_b{batch}_l{ctx}"
        rep = out / f"{tag}.ncu-rep"
        subprocess.run(
            [ncu, "--clock-control", "none", "--section", "WarpStateStats", "--section",
             "SourceCounters", "-k", "regex:decode_kernel", "--launch-skip", "1",
             "--launch-count", "1", "-f", "-o", str(rep.with_suffix("")), sys.executable,
             str(here / "profile_case.py"), "--heads", str(heads), "--sq", str(s_q),
             "--batch", str(batch), "--ctx", str(ctx), "--reps", "3"],
            check=True,
        )  # fmt: skip
        page = subprocess.run(
            [ncu, "-i", str(rep), "--page", "source", "--csv", "--print-source", "sass"],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        path = out / f"{tag}.csv.gz"
        path.write_bytes(gzip.compress(page.encode()))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="profile cases with ncu, then report")
    r.add_argument("cases", nargs="+", help="heads,s_q,batch,context")
    r.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "stalls")))
    rep = sub.add_parser("report", help="summarise source-page CSVs (.csv or .csv.gz)")
    rep.add_argument("files", nargs="+", type=Path)
    args = p.parse_args(argv)
    files = run(args.cases, args.out) if args.cmd == "run" else args.files
    for f in files:
        print(format_summary(f.name, summarize(_open_text(f))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
