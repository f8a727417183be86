"""Table, summary and plots again from bench_decode.py CSVs, with no GPU: for runs that stopped
before writing them (a rival faulted) or that were split over several invocations.

    python benchmarks/report.py OUT_DIR run1/bench_decode.csv run2/bench_decode.csv ...

Writes OUT_DIR/table.txt (the same table and per heads x s_q summary as bench_decode.py, plus
the geometric mean over every case) and, with matplotlib, the same GB/s and TFLOP/s plots.
Rows of a later CSV replace those of an earlier one for the same case, implementation and mode.
"""

import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_decode import by_mode, write_plots  # noqa: E402
from bench_utils import (  # noqa: E402
    TABLE_HEADER,
    Case,
    geomean,
    merge_csvs,
    read_csv,
    speedup,
    summary_lines,
    table_line,
)

INT_FIELDS = ("heads", "s_q", "batch", "context", "total_len", "max_len")
FLOAT_FIELDS = ("us", "gbps", "tflops", "pct_copy", "pct_gemm", "max_rel_err", "lse_err")


def typed(row: dict) -> dict:
    out = dict(row)
    for k in INT_FIELDS:
        out[k] = int(row[k])
    for k in FLOAT_FIELDS:
        out[k] = float(row[k]) if row.get(k) not in (None, "") else None
    return out


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    out_dir = Path(argv[0])
    out_dir.mkdir(parents=True, exist_ok=True)
    merged = {k: typed(row) for k, row in merge_csvs(argv[1:]).items()}
    cases: dict[tuple, list[dict]] = {}
    for key, row in merged.items():
        cases.setdefault(key[:5], []).append(row)

    entries = []
    for (h, s_q, b, ctx, dist), rows in sorted(
        cases.items(), key=lambda kv: (kv[0][4] != "uniform", kv[0])
    ):
        case = Case(h, s_q, b, ctx, dist, (rows[0]["max_len"],))
        whole, ours_kernel = by_mode(rows)
        entries.append((case, whole, ours_kernel))
    lines = [TABLE_HEADER] + [table_line(c, w, k) for c, w, k in entries]
    ratios = [speedup(w) for _, w, _ in entries]
    finite = [r for r in ratios if not math.isnan(r)]
    total = (
        f"all: {len(finite)} cases with a checked rival, geomean best/ours {geomean(finite):.3f}x, "
        f"min {min(finite):.2f}x, ours faster in {sum(r >= 1 for r in finite)}"
    )
    summary = "\n".join(summary_lines([(c, w) for c, w, _ in entries]))
    (out_dir / "table.txt").write_text("\n".join(lines) + "\n\n" + summary + "\n\n" + total + "\n")
    print("\n".join(lines[-3:]) + "\n" + summary + "\n" + total)

    first = read_csv(argv[1])[0]
    ceilings = {"copy_gbps": float(first["copy_gbps"]), "gemm_tflops": float(first["gemm_tflops"])}
    plots = write_plots(out_dir, list(merged.values()), ceilings)
    print(f"wrote {out_dir / 'table.txt'}" + (f", {len(plots)} plots" if plots else ""))
    (out_dir / "sources.json").write_text(json.dumps(argv[1:], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
