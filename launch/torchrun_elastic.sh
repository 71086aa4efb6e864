#!/usr/bin/env bash
# Elastic training with torchrun agents: start this same command on every node (MIN to MAX nodes). When a
# node is lost, the agents left re-form the group (--nnodes MIN:MAX) and restart their workers, which
# resume the run from its last checkpoint on the new process count (train.global_batch_size keeps the
# sample order and the schedule); no requeue, no human action.
#
#   launch/torchrun_elastic.sh --config configs/smoke.yaml train.global_batch_size=32 train.checkpoint_every_minutes=10
#   (on every node; RDZV_HOST=<first node> for more than one host, as in README's cluster section)
#
# Limits: the rendezvous host (RDZV_HOST, the first agent started there holds torchrun's c10d store)
# must stay up: losing it ends the job (then requeue it; it resumes from the last checkpoint). A lost
# node costs the work since the last checkpoint (train.checkpoint_every_steps / _minutes) plus the
# restart: a killed peer breaks the survivors' collective at once (connection reset); a frozen or
# unreachable one only after train.collective_timeout_s. Each restart spends one of MAX_RESTARTS.
#
# env: RDZV_HOST (127.0.0.1), RDZV_PORT (29400), RDZV_ID (slurm-JOBID under SLURM, else pets-elastic; one per
# job: it names the run unless you pass output.run_name), NNODES (1:2), NPROC (processes per node: its GPUs,
# else 1), MAX_RESTARTS (3), LAST_CALL_S (seconds the rendezvous waits for more nodes once MIN joined; 5),
# PYTHON (python, to count the GPUs)
set -euo pipefail
cd "$(dirname "$0")/.."
rdzv_id=${RDZV_ID:-${SLURM_JOB_ID:+slurm-${SLURM_JOB_ID}}}
rdzv_id=${rdzv_id:-pets-elastic}
nproc=${NPROC:-$("${PYTHON:-python}" -c 'import torch; print(torch.cuda.device_count() or 1)')}

# Every restart continues the same run: one name for the job, and resume=auto (both unless given).
args=("$@")
[[ " $* " == *" output.run_name="* ]] || args+=("output.run_name=${rdzv_id}")
[[ " $* " == *" train.resume="* ]] || args+=("train.resume=auto")

exec torchrun \
  --nnodes "${NNODES:-1:2}" --nproc-per-node "$nproc" --max-restarts "${MAX_RESTARTS:-3}" \
  --rdzv-backend c10d --rdzv-endpoint "${RDZV_HOST:-127.0.0.1}:${RDZV_PORT:-29400}" --rdzv-id "$rdzv_id" \
  --rdzv-conf "last_call_timeout=${LAST_CALL_S:-5}" --monitor-interval 1 \
  -m toolkit.train "${args[@]}"
