#!/usr/bin/env bash
# LAWA's overhead on one GPU, in at most 9 minutes (its three steps' timeouts: 290 + 120 + 120 s): `lawa bench overhead --device cuda` over 1e6..1e9
# parameters (on-device ring, pinned host ring on a side stream, disk ring), a non-snapshot
# step() for a tiny MLP and ResNet-18, and a ResNet-50 epoch (224x224 synthetic images) with
# period=len(loader) vs the bare optimizer, with the ring on the GPU and offloaded to pinned memory.
#
# Usage:
#   benchmarks/gpu_check.sh [OUT_DIR]            # OUT_DIR defaults to $OUT, else runs/gpu_check
#   benchmarks/gpu_check.sh OUT_DIR --smoke      # the same script on the CPU with tiny sizes (a test)
# Then a probe of accelerate's FSDP2 path with LAWA's observer (benchmarks/gpu_fsdp2_accelerate.py, GPU-only).
# The per-size figures again with bf16 parameters (--dtype bfloat16) into OUT_DIR/overhead_bf16/.
# Results: OUT_DIR/overhead/{overhead.json,overhead.md,overhead.png}, OUT_DIR/fsdp2_accelerate.json and
# OUT_DIR/gpu_check.log.
# GPU_CHECK_TIMEOUT (seconds, default 290) bounds the run; a run stopped early prints what it measured.
set -euo pipefail

OUT_DIR="${1:-${OUT:-runs/gpu_check}}"
MODE="${2:-gpu}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x "$HERE/.venv/bin/python" ]; then PY="$HERE/.venv/bin/python"; else PY=python3; fi
fi
mkdir -p "$OUT_DIR"
cd "$HERE"

if [ "$MODE" = "--smoke" ]; then
  ARGS=(--device cpu --sizes 1e4,1e5 --repeats 2 --large-repeats 1 --epoch-model resnet18 --image-size 32
        --batch-size 2 --epoch-batches 2 --epoch-repeats 1)
  BF16_ARGS=(--device cpu --dtype bfloat16 --sizes 1e4 --repeats 2 --large-repeats 1 --no-models --no-disk)
else
  "$PY" - <<'PYEOF'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_check.sh: torch.cuda.is_available() is False; run with --smoke to test the script on the CPU")
print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| CUDA", torch.version.cuda)
PYEOF
  ARGS=(--device cuda --sizes 1e6,1e7,1e8,1e9 --repeats 11 --large-repeats 5 --max-gib 60
        --epoch-model resnet50 --image-size 224 --batch-size 64 --epoch-batches 40 --epoch-repeats 3)
  BF16_ARGS=(--device cuda --dtype bfloat16 --sizes 1e6,1e7,1e8,1e9 --repeats 11 --large-repeats 5 --max-gib 60
             --no-models --no-disk)
fi

start=$(date +%s)
status=0
timeout "${GPU_CHECK_TIMEOUT:-290}" "$PY" -m lawa_optim.cli bench overhead "${ARGS[@]}" --no-progress --out "$OUT_DIR/overhead" \
  2>&1 | tee "$OUT_DIR/gpu_check.log" || status=$?
if [ "$status" -ne 0 ] && [ -f "$OUT_DIR/overhead/overhead.json" ]; then
  # killed or failed part-way: the figures measured so far are in overhead.json; print them
  "$PY" -c 'import json, sys; from lawa_benchmarks.overhead.report import markdown_table
print(markdown_table(json.load(open(sys.argv[1]))))' "$OUT_DIR/overhead/overhead.json" \
    | tee "$OUT_DIR/overhead/overhead.md" | tee -a "$OUT_DIR/gpu_check.log"
  echo "gpu_check.sh: the benchmark stopped early (exit $status); the table above is partial" | tee -a "$OUT_DIR/gpu_check.log"
fi
# the same per-size figures with bf16 parameters (float32 running sums)
timeout "${GPU_BF16_TIMEOUT:-120}" "$PY" -m lawa_optim.cli bench overhead "${BF16_ARGS[@]}" --no-progress \
  --out "$OUT_DIR/overhead_bf16" 2>&1 | tee -a "$OUT_DIR/gpu_check.log" \
  || echo "gpu_check.sh: the bf16 figures did not finish" | tee -a "$OUT_DIR/gpu_check.log"
# accelerate's FSDP2 path runs on GPUs only, so LAWATrainerCallback refuses FSDP; this probe checks on the GPU
# what supporting it would rest on (DTensor parameters, the observer's average, the ring's DCP round trip).
# --smoke runs it on the CPU, where accelerate ignores the FSDP plugin (a test of the probe only).
NGPU=$("$PY" -c 'import torch; print(max(torch.cuda.device_count(), 1))')
PROBE_ARGS=()
if [ "$MODE" = "--smoke" ]; then NGPU=2; PROBE_ARGS=(--smoke); fi
timeout "${GPU_PROBE_TIMEOUT:-120}" "$PY" -m torch.distributed.run --standalone --nproc_per_node="$NGPU" \
  benchmarks/gpu_fsdp2_accelerate.py "$OUT_DIR" "${PROBE_ARGS[@]}" 2>&1 | grep -v Warning | tail -n 40 \
  | tee -a "$OUT_DIR/gpu_check.log" || echo "gpu_check.sh: the FSDP2/accelerate probe did not finish" \
  | tee -a "$OUT_DIR/gpu_check.log"
echo "gpu_check.sh: finished in $(( $(date +%s) - start )) s; results in $OUT_DIR/overhead and $OUT_DIR/fsdp2_accelerate.json" | tee -a "$OUT_DIR/gpu_check.log"
exit "$status"
