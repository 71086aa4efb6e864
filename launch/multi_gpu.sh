#!/usr/bin/env bash
# Train on every GPU of this node with DDP, using accelerate_config.yaml (bf16).
#   launch/multi_gpu.sh --config configs/oxford_pets_binary_resnet101.yaml [key=value ...]
# train.batch_size is per process: the global batch is batch_size x number of GPUs.
set -euo pipefail
cd "$(dirname "$0")/.."
num_gpus=${NUM_GPUS:-$(nvidia-smi -L 2>/dev/null | wc -l)}
if [[ "$num_gpus" -lt 1 ]]; then
  echo "error: no GPU found (nvidia-smi lists none); use launch/cpu.sh instead" >&2
  exit 2
fi
exec accelerate launch --config_file accelerate_config.yaml --num_processes "$num_gpus" \
  --main_process_port "${MAIN_PORT:-29500}" toolkit/train.py "$@"
