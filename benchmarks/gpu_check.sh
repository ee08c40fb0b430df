#!/usr/bin/env bash
# One-command GPU check: the CUDA-only tests, then the bf16 1024x2048 table of every registered model.
#
#   benchmarks/gpu_check.sh OUT_DIR
#
# Stages, each under `timeout`, all within TOTAL_S seconds (default 470, under 8 minutes):
#   1. pytest: tests/test_cuda.py (Triton kernels against their references, SDPA attention, fp16/bf16 autocast
#      parity of every architecture family) and every test named *cuda* in test_ops_fast.py / test_inference.py /
#      test_deformable_attention.py (the Triton deformable-attention kernel) / test_segformer.py;
#      log in OUT_DIR/pytest.log, JUnit XML in OUT_DIR/pytest.xml.
#   2. `cityseg-zoo benchmark --device cuda --dtype bfloat16 --sizes 1024x2048 --modes optimized` over every
#      registered model, in chunks (a chunk that runs out of time loses only itself): latency,
#      torch.cuda.max_memory_allocated and % of the bf16 GEMM ceiling measured in each point's process (--no-compare:
#      no float32 reference forward, to stay in budget), in OUT_DIR/benchmark_bf16_1024x2048*.md/.json
#      (the chunks' tables concatenated in OUT_DIR/benchmark_bf16_1024x2048.md).
# OUT_DIR/summary.txt says what ran, how long it took and how it ended. Exit status: 0 when every stage passed.
# Without CUDA it prints one line saying it skipped, writes nothing and exits 0.
#
# Environment: PYTHON (default: python3, or python), TOTAL_S, PYTEST_S (default 150), CHUNK (models per
# benchmark process group, default 9), WARMUP (default 1), REPEATS (default 3), POINT_TIMEOUT_S (default 60).
set -euo pipefail

if [[ $# -ne 1 || "$1" == -* ]]; then
    echo "usage: $0 OUT_DIR" >&2
    exit 2
fi
OUT_DIR=$1
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
TOTAL_S=${TOTAL_S:-470}
PYTEST_S=${PYTEST_S:-150}
CHUNK=${CHUNK:-9}
WARMUP=${WARMUP:-1}
REPEATS=${REPEATS:-3}
POINT_TIMEOUT_S=${POINT_TIMEOUT_S:-60}

if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: skipped: no CUDA device (torch.cuda.is_available() is False); nothing was run"
    exit 0
fi

cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"   # this checkout's cityseg_zoo, installed or not
export PYTHONUNBUFFERED=1
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
SUMMARY="$OUT_DIR/summary.txt"
START=$SECONDS
status=0

say() { echo "gpu_check: $*" | tee -a "$SUMMARY"; }
left() { echo $((TOTAL_S - (SECONDS - START))); }
# Seconds for the next stage: its own cap or what is left of the total, whichever is smaller.
budget() { local cap=$1 rest; rest=$(left); echo $((cap < rest ? cap : rest)); }

: >"$SUMMARY"
say "$(date -u +%FT%TZ) on $("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name(0), "| torch", torch.__version__, "| CUDA", torch.version.cuda)')"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$OUT_DIR/nvidia-smi.csv" 2>&1 || true

# ---- 1. the CUDA-only tests
t=$(budget "$PYTEST_S")
say "pytest (at most ${t} s): tests/test_cuda.py and the *cuda* tests"
rc=0
timeout --kill-after=10 "$t" "$PYTHON" -m pytest -q -rs -k cuda --junitxml="$OUT_DIR/pytest.xml" \
    tests/test_cuda.py tests/test_ops_fast.py tests/test_inference.py tests/test_deformable_attention.py \
    tests/test_segformer.py >"$OUT_DIR/pytest.log" 2>&1 || rc=$?
say "pytest: exit $rc ($(tail -n 1 "$OUT_DIR/pytest.log")), $((SECONDS - START)) s so far"
[[ $rc -eq 0 ]] || status=1

# ---- 2. bf16 table at 1024x2048, every registered model
read -r -a MODELS <<<"$("$PYTHON" -c 'import cityseg_zoo; print(" ".join(cityseg_zoo.list_models()))')"
say "benchmark: ${#MODELS[@]} models, bf16, 1024x2048, warmup $WARMUP, repeats $REPEATS, chunks of $CHUNK"
STEM="$OUT_DIR/benchmark_bf16_1024x2048"
: >"$STEM.md"
for ((i = 0; i < ${#MODELS[@]}; i += CHUNK)); do
    chunk=("${MODELS[@]:i:CHUNK}")
    part="${STEM}_part$((i / CHUNK + 1))"
    t=$(left)
    if ((t < 30)); then
        say "benchmark: out of time, not measured: ${MODELS[*]:i}"
        status=1
        break
    fi
    rc=0
    timeout --kill-after=10 "$t" "$PYTHON" -c 'import sys; from cityseg_zoo.cli import main; sys.exit(main())' \
        benchmark --models "${chunk[@]}" --sizes 1024x2048 --modes optimized --device cuda --dtype bfloat16 \
        --no-compare --warmup "$WARMUP" --repeats "$REPEATS" --timeout "$POINT_TIMEOUT_S" --output "$part" \
        >"$part.log" 2>&1 || rc=$?
    say "benchmark ${chunk[*]}: exit $rc, $((SECONDS - START)) s so far"
    [[ $rc -eq 0 ]] || status=1
    if [[ -f "$part.md" ]]; then
        { cat "$part.md"; echo; } >>"$STEM.md"
    fi
done

say "done in $((SECONDS - START)) s, exit $status"
exit "$status"
