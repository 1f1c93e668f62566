#!/usr/bin/env bash
# The prepared device run for issue 6 (and, with TRAIN_SECONDS > 0, issue 3's GPU training).
# On the GPU machine, from the repo root, after tools/gpu/prepare.sh here:
#   run(command="bash tools/gpu/device_check.sh", carry=[".whl", ".gpu"], timeout_s=600)
# Every stage has its own time limit, so one failing stage leaves the others' results in $OUT:
#   log.txt, pytest_cuda.txt, gpu.json (benchmarks/bench_gpu.py), ct_operators.md, pytest_all.txt,
#   and with TRAIN_SECONDS: edn-sr-gpu.safetensors/.md/.train.jsonl.
set -uo pipefail
OUT="${OUT:-/tmp/edn-gpu-out}"
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
t0=$SECONDS
stage() { echo "== [$((SECONDS - t0)) s] $*"; }
# The stage limits below add up to more than one run's 600 s (and a session's device time is
# 15 minutes, start included): each stage gets at most what is left of BUDGET_S, so the run ends
# on its own with every finished stage's results instead of being killed mid-stage.
BUDGET_S="${BUDGET_S:-560}"
cap() { local left=$((BUDGET_S - (SECONDS - t0))); echo $(( $1 < left ? $1 : (left > 0 ? left : 1) )); }

stage "install carried wheels (astra, cudart 12), build the cuFFT shim"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD/src" PYTHONUNBUFFERED=1 EDN_CACHE_DIR=/tmp/edn-cache
bash tools/gpu/build_cufft_shim.sh /tmp/gl >/dev/null || exit 1
export LD_PRELOAD=/tmp/gl/libcufft.so.11
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
python3 -c "import torch, astra; print('torch', torch.__version__, torch.cuda.get_device_name(), '| astra', astra.__version__, 'use_cuda', astra.use_cuda())"

stage "CUDA tests"
timeout "$(cap 120)" python3 -m pytest -q -p no:cacheprovider -m cuda tests/ > "$OUT/pytest_cuda.txt" 2>&1
echo "exit $?"; tail -5 "$OUT/pytest_cuda.txt"

stage "bench_gpu: SR 512² x4 and CT 512²/360, fp32 / bf16 / fp16"
timeout "$(cap 200)" python3 benchmarks/bench_gpu.py --device cuda --images .gpu/data/set12 --json "$OUT/gpu.json"
echo "exit $?"

stage "CT operators: cuda vs astra-cpu vs matrix (256²/180), cuda at 512²/360 and 1024²/720"
{ timeout "$(cap 60)" python3 benchmarks/bench_ct_operators.py --sizes 256:180 --backends matrix,astra-cpu,cuda --repeat 5
  timeout "$(cap 60)" python3 benchmarks/bench_ct_operators.py --sizes 512:360,1024:720 --backends cuda --repeat 5 --batch 1
  timeout "$(cap 60)" python3 benchmarks/bench_ct_operators.py --sizes 512:360 --backends cuda --repeat 5 --batch 16; } \
    > "$OUT/ct_operators.md" 2>&1
cat "$OUT/ct_operators.md"

if [ "${TRAIN_SECONDS:-0}" -gt 0 ]; then
    stage "train a full-size SR network for ${TRAIN_SECONDS} s (issue 3)"
    # SIGTERM leaves the network time to validate and write its checkpoint: keep ~30 s for that
    tl=$(cap "$TRAIN_SECONDS"); tl=$(( tl > 60 ? tl - 30 : tl ))
    timeout "$tl" python3 -m edncli train --task sr --scale 4 --kind edn --init classic \
        --images .gpu/data/train400 --val-images .gpu/data/set12 --depth 20 --width 64 --patch-size 96 \
        --batch-size 32 --steps "${TRAIN_STEPS:-200000}" --lr 0.0002 --val-every 1000 --lag-every 25 \
        --max-lag-steps 10 --min-iter 8 --device cuda --precision bf16 --seed 0 --quiet \
        --out "$OUT/edn-sr-gpu" 2>&1 | tail -5
    # SIGTERM from timeout: training writes its best checkpoint so far (see edn train --help)
    ls -la "$OUT"
fi

stage "whole test suite on the GPU machine (--device auto picks CUDA)"
timeout "$(cap 240)" python3 -m pytest -q -p no:cacheprovider -n 8 tests/ > "$OUT/pytest_all.txt" 2>&1
echo "exit $?"; tail -3 "$OUT/pytest_all.txt"
stage "done"
