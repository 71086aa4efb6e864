#!/usr/bin/env bash
# Train on one GPU (the first visible one unless CUDA_VISIBLE_DEVICES says otherwise), bf16.
#   launch/single_gpu.sh --config configs/oxford_pets_binary_resnet101.yaml [key=value ...]
set -euo pipefail
cd "$(dirname "$0")/.."
exec accelerate launch --num_processes 1 --num_machines 1 --mixed_precision "${MIXED_PRECISION:-bf16}" \
  --dynamo_backend no toolkit/train.py "$@"
