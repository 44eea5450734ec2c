#!/bin/bash
# Multi-node pretraining on SLURM: one task per GPU, started by srun directly (no torchrun), so
# the preemption signal reaches every training process.
#
#   sbatch --nodes=4 tools/slurm_train.sh configs/pretrain/ALBEF-14M.yaml output_dir=output/albef14m
#
# --signal=USR1@300 : SLURM sends SIGUSR1 to every process of the tasks 300 s before the time
#   limit (and before preemption where the cluster sets PreemptParameters=send_user_signal;
#   Slurm's default preemption sends SIGTERM to every process: the run checkpoints on it too,
#   but within KillWait, 30 s by default: see README "Scaling out"); each rank finishes its step, the run
#   writes a checkpoint and exits 0, and --requeue puts the job back in the queue. The
#   requeued job starts with --resume: it continues from the newest complete checkpoint in
#   output_dir (a half-written file is skipped). DataLoader workers ignore SIGUSR1. After a
#   stop at the time limit the script requeues the job itself unless output_dir holds
#   model_final.pth (pass output_dir=... on the command line for that check).
#SBATCH --job-name=albef
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=USR1@300
#SBATCH --requeue
#SBATCH --output=slurm-%j.out
set -euo pipefail
CONFIG=${1:?usage: sbatch tools/slurm_train.sh CONFIG [KEY=VALUE ...]}
shift
OUT=""
for a in "$@"; do case "$a" in output_dir=*) OUT="${a#output_dir=}";; esac; done
export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}  # two jobs on one head node do not collide
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-8}
# tools/train_net.py reads the torch.distributed environment (RANK, WORLD_SIZE, LOCAL_RANK,
# MASTER_ADDR, MASTER_PORT), as under torchrun; srun gives each task its own values.
srun --kill-on-bad-exit=1 --cpus-per-task="${SLURM_CPUS_PER_TASK:-8}" bash -c '
  export RANK=$SLURM_PROCID WORLD_SIZE=$SLURM_NTASKS LOCAL_RANK=$SLURM_LOCALID
  exec python tools/train_net.py --config-file "$0" --resume data.num_workers=$((SLURM_CPUS_PER_TASK - 2)) "$@"
' "$CONFIG" "$@"
if [ -n "$OUT" ] && [ ! -f "$OUT/model_final.pth" ]; then
  echo "not finished (no $OUT/model_final.pth): requeueing job $SLURM_JOB_ID"
  scontrol requeue "$SLURM_JOB_ID"
fi
