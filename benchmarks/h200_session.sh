#!/usr/bin/env bash
# One device session's work on an H200, in steps, each under its own time cap; logs and results go
# to $OUT (default ./out). Run from the repository root with the extension built (or carried) and,
# for the rivals and examples, the offline vLLM bundle in .offline-vllm/.
#
#   bash benchmarks/h200_session.sh check sanitize ab  # GPU tests, sanitizers, quick A/B vs a base
#   bash benchmarks/h200_session.sh grid         # the full benchmark grid with the rivals
#   bash benchmarks/h200_session.sh e2e          # examples/compare_backends.py, serve_deepseek.py
#
# Steps: check (pytest tests/gpu -m "not slow"), sanitize (memcheck of
# benchmarks/sanitize_decode.py with its reference checks, racecheck without them), ab
# (bench_decode --quick for ours and the rivals, then ours again from the package in $BASE,
# default .bench_base, when it exists), ncu (per-kernel times of a few shapes through
# benchmarks/profile_case.py), stalls (benchmarks/stall_regions.py: ncu stall samples of
# warpgroup S's loop by region), grid, lastcase, e2e (compare_backends + serve),
# serve (serve_deepseek.py, with the wheels in .whl/), compare16 and compare61
# (compare_backends at 16 heads, profiled, 16 and 61 layers), stream (build and run
# benchmarks/page_stream.cu). Result folders are packed into $OUT/results-<time>.tgz (and many
# logs into $OUT/logs-<time>.tgz) after the grid and at the end.
set -uo pipefail
OUT=${OUT:-$PWD/out}
BASE=${BASE:-$PWD/.bench_base}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if [ -f .offline-vllm/install.sh ] && ! python3 -c "import vllm" 2>/dev/null; then
  eval "$(bash .offline-vllm/install.sh)"
  export PYTHONPATH=$PWD:$PYTHONPATH
fi
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,clocks.mem,driver_version --format=csv \
  > "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"

step() {  # step NAME SECONDS COMMAND...: run with a cap, log to $OUT/NAME.log, print the tail
  local name=$1 cap=$2
  shift 2
  local t0=$SECONDS
  timeout "$cap" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc=$rc in $((SECONDS - t0))s"
  tail -n "${TAIL:-6}" "$OUT/$name.log"
}

pack() {  # at most 8 files come back from a device call: one archive of the result folders
  local dirs
  dirs=$(cd "$OUT" && find . -mindepth 1 -maxdepth 1 -type d -printf '%f ')
  [ -n "$dirs" ] && (cd "$OUT" && tar czf "results-$(date +%H%M%S).tgz" $dirs && rm -rf $dirs)
  if [ "$(cd "$OUT" && ls *.log 2>/dev/null | wc -l)" -gt 5 ]; then
    (cd "$OUT" && tar czf "logs-$(date +%H%M%S).tgz" *.log && rm -f *.log)
  fi
}

# vllm serve needs packages the offline bundle leaves out: carry them as wheels in .whl/, e.g.
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform
#   manylinux_2_17_x86_64 -d .whl uvicorn model-hosting-container-standards jmespath supervisor
#   jsonschema jsonschema-specifications referencing rpds-py python-multipart watchfiles
#   email-validator dnspython pydantic-extra-types prometheus-fastapi-instrumentator sse-starlette
#   httptools websockets   (the set with which serve_deepseek.py passed, 2026-12-01)
run_serve() {
  if ls .whl/*.whl > /dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site-serve \
      .whl/*.whl
    export PYTHONPATH=$PYTHONPATH:/tmp/site-serve
  fi
  TAIL=12 step serve 200 python3 examples/serve_deepseek.py --out "$OUT/serve.json"
}

for s in "$@"; do
  case $s in
    check) step check 150 python3 -m pytest -q -x -m "not slow" tests/gpu ;;
    sanitize)
      step memcheck 150 compute-sanitizer --tool memcheck --error-exitcode 3 \
        python3 benchmarks/sanitize_decode.py
      step racecheck 240 compute-sanitizer --tool racecheck --error-exitcode 3 \
        python3 benchmarks/sanitize_decode.py --no-check ;;
    ab)
      TAIL=4 step ab_new 200 python3 benchmarks/bench_decode.py --quick --impls ours,flashmla,fa3 \
        --out "$OUT/ab_new" --no-plots
      if [ -d "$BASE/mla_backend" ]; then
        TAIL=4 PYTHONPATH=$BASE:$PYTHONPATH step ab_base 120 python3 benchmarks/bench_decode.py \
          --quick --impls ours --out "$OUT/ab_base" --no-plots
      fi ;;
    ncu)  # per-kernel times of small and large shapes (metadata, main, combine)
      for c in "16 1 4096 1" "128 1 4096 1" "16 128 32768 1" "128 128 32768 1"; do
        read -r h b l q <<< "$c"  # not `set --`: that would overwrite the script's step list
        name=ncu_h${h}_b${b}_l${l}_s${q}
        TAIL=0 step "$name" 120 ncu --clock-control none --csv --metrics gpu__time_duration.sum \
          python3 benchmarks/profile_case.py --heads "$h" --batch "$b" --ctx "$l" --sq "$q" --reps 2
        grep -E '"(mla|sm90)::' "$OUT/$name.log" | awk -F'","' '{print $5 ": " $NF}' | sed 's/"//g'
      done ;;
    stalls)  # where warpgroup S's loop time goes (ncu stall samples by region)
      TAIL=30 step stalls 300 python3 benchmarks/stall_regions.py run 128,1,128,16384 \
        128,4,32,4096 16,1,128,16384 --out "$OUT/stalls"
      rm -f "$OUT"/stalls/*.ncu-rep ;;
    grid)  # uniform lengths with every rival; skewed without Triton, whose kernel faults on
      # the longest skewed sequences (~140k tokens at 128 heads) and would end the run
      TAIL=3 step grid_uniform 400 python3 benchmarks/bench_decode.py --dists uniform \
        --out "$OUT/grid_uniform"
      TAIL=3 step grid_skewed 300 python3 benchmarks/bench_decode.py --dists skewed \
        --impls ours,flashmla,fa3 --out "$OUT/grid_skewed"
      python3 benchmarks/targets.py "$OUT"/grid_uniform/bench_decode.csv \
        "$OUT"/grid_skewed/bench_decode.csv --out "$OUT/targets.txt" | grep -v '^    '
      pack ;;
    e2e)
      TAIL=20 step compare 330 python3 examples/compare_backends.py --profile --out "$OUT/cmp"
      run_serve
      pack ;;
    serve) run_serve ;;
    compare16)  # the 16-head target's run: two processes per backend, profiled (~4 min)
      TAIL=8 step compare16 290 python3 examples/compare_backends.py --heads 16 --rounds 2 \
        --backends default,ours --repeats 5 --profile --deadline 280 --out "$OUT/cmp16" ;;
    compare61)  # the same with DeepSeek-V3's 61 layers: a tensor-parallel rank with 16 heads
      # keeps every layer (~4-5 min; a device call of its own after compare16)
      TAIL=8 step compare61 290 python3 examples/compare_backends.py --heads 16 --rounds 2 \
        --backends default,ours --repeats 5 --layers 61 --profile --deadline 280 \
        --out "$OUT/cmp61" ;;
    stream)  # benchmarks/page_stream.cu: a stream of KV pages through the kernel's page load
      step stream_build 120 nvcc -O3 -std=c++17 -arch=sm_90a -Icsrc/include -Icsrc \
        benchmarks/page_stream.cu csrc/sm90/launch_utils.cu -o /tmp/page_stream &&
        TAIL=40 step stream 120 /tmp/page_stream ;;
    compare)
      TAIL=12 step compare 330 python3 examples/compare_backends.py --profile --out "$OUT/cmp" ;;
    lastcase)  # the grid's last uniform case, where Triton faulted, with the other rivals
      TAIL=3 step lastcase 120 python3 benchmarks/bench_decode.py --heads 128 --sq 4 --batch 128 \
        --contexts 32768 --dists uniform --impls ours,flashmla,fa3 --no-plots --out "$OUT/lastcase" ;;
    *) echo "unknown step $s" >&2 ;;
  esac
done

pack
