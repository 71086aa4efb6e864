#!/usr/bin/env bash
# Train on CPU with N processes (gloo). Same loop as on GPUs; useful for tests and debugging.
#   launch/cpu.sh [NUM_PROCESSES] --config configs/smoke.yaml [key=value ...]
set -euo pipefail
cd "$(dirname "$0")/.."
nproc_arg=1
if [[ "${1:-}" =~ ^[0-9]+$ ]]; then nproc_arg=$1; shift; fi
if [[ "$nproc_arg" == 1 ]]; then
  exec python -m toolkit.train "$@"
fi
# `accelerate launch --cpu` starts several processes only through mpirun; torchrun's launcher
# (--multi_gpu) works without it, and toolkit/train.py picks gloo on CPU-only machines.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / nproc_arg > 0 ? $(nproc) / nproc_arg : 1 ))}
exec accelerate launch --multi_gpu --num_processes "$nproc_arg" --num_machines 1 --mixed_precision no \
  --dynamo_backend no --main_process_port "${MAIN_PORT:-29511}" toolkit/train.py "$@"
