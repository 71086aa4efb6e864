#!/usr/bin/env bash
# Every GPU measurement and GPU correctness check, in one run of a few minutes, printing JSON.
#
#   launch/gpu_check.sh [OUT_DIR]
#   env: SHARDS=packed shards folder (default shards/mini), QUICK=1 skips torch.compile,
#        SKIP_MODEL=1 skips the model-vs-timm benchmarks (already measured on this kind of machine)
#
# Meant for a fresh GPU machine that has torch, timm and accelerate but maybe not webdataset or
# wandb and no network: put wheels in .whl/ (see docs/benchmarks.md) and they are installed
# into /tmp/site first. W&B is disabled throughout and never imported. Each check writes
# OUT_DIR/<name>.json (its result) and OUT_DIR/<name>.log; a failed check is reported and the
# others still run. The figures go into docs/benchmarks.md with the machine and the date.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu-check}}
shards=${SHARDS:-shards/mini}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled TQDM_DISABLE=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}

status=0
check() {  # check NAME TIMEOUT_S COMMAND...: run one check, keep its JSON and log, never stop the script
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  timeout "$limit" "$@" >"$out/$name.json" 2>"$out/$name.log"
  local rc=$?
  [[ $rc -ne 0 ]] && status=1
  echo "{\"check\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - start))}" | tee -a "$out/summary.jsonl"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, timm, accelerate; print({'torch': torch.__version__, 'timm': timm.__version__, 'accelerate': accelerate.__version__, 'cuda': torch.version.cuda})" | tee "$out/versions.txt"

# 1. our ResNet-101 vs timm's, train step at batch 256, 224 px, in the configurations of docs/sources.md
[[ -z "${SKIP_MODEL:-}" ]] && {
check model_fp32           120 python3 -m toolkit.bench model --device cuda --dtype fp32 --steps 10 --warmup 3
check model_bf16           120 python3 -m toolkit.bench model --device cuda --dtype bf16 --steps 15 --warmup 3
check model_bf16_cl        120 python3 -m toolkit.bench model --device cuda --dtype bf16 --channels-last --steps 20 --warmup 5
check model_fp16_cl        120 python3 -m toolkit.bench model --device cuda --dtype fp16 --channels-last --steps 20 --warmup 5
}

# 2. end to end: real shards (decode + augment in 16 CPU workers) vs synthetic input, same run
if [[ -f "$shards/info.json" ]]; then
  check e2e_bf16_cl        180 python3 -m toolkit.bench e2e --shards "$shards" --device cuda --dtype bf16 --channels-last \
                                 --batch-size 128 --workers 16 --steps 30 --warmup 5 --profile "$out/e2e_bf16_cl.profile.txt"
  check e2e_bf16_cl_gpudecode 180 python3 -m toolkit.bench e2e --shards "$shards" --device cuda --dtype bf16 --channels-last \
                                 --batch-size 128 --workers 16 --steps 30 --warmup 5 --decode gpu
  # 3. the training loop on the GPU: bf16 and fp16 (GradScaler) steps, eval, safetensors, report
  for precision in bf16 fp16; do
    check "train_$precision" 180 python3 -m toolkit.train --config configs/smoke.yaml "data.shards=$shards" \
      data.image_size=64 data.resize_size=72 data.num_workers=8 train.epochs=2 train.batch_size=64 \
      "train.mixed_precision=$precision" model.channels_last=true tracking.wandb=disabled \
      output.dir="$out/runs" "output.run_name=smoke-$precision"
  done
  # the real loop at the recipe's settings (ResNet-101, 224 px, batch 32, bf16 CL): per-epoch img/s and data_wait
  check train_r101_strong  180 python3 -m toolkit.train --config configs/oxford_pets_binary_resnet101_strong.yaml \
      "data.shards=$shards" data.num_workers=12 train.epochs=3 eval.plots=false eval.test_split=null \
      tracking.wandb=disabled output.dir="$out/runs" output.run_name=r101-strong
  python3 -c "from PIL import Image; Image.new('RGB', (320, 240), (180, 120, 60)).save('$out/probe.jpg')"
  check predict_cuda        60 python3 -m toolkit.predict --model "$out/runs/smoke-bf16/model.safetensors" --device cuda \
                                 "$out/probe.jpg"
else
  echo "{\"check\": \"e2e/train\", \"skipped\": \"no shards at $shards (set SHARDS=...)\"}" | tee -a "$out/summary.jsonl"
fi

# 4. torch.compile: our model alone (the 3,700 img/s target) and e2e from shards, same process
if [[ -z "${QUICK:-}" && -f "$shards/info.json" ]]; then
  check e2e_bf16_cl_compile 300 python3 -m toolkit.bench e2e --shards "$shards" --device cuda --dtype bf16 --channels-last \
                                 --compile --batch-size 256 --workers 16 --steps 30 --warmup 8
fi

echo "gpu_check: results in $out (summary.jsonl); status $status"
exit $status
