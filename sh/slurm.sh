#!/usr/bin/env bash
# Run any recipe under SLURM: one torchrun per node (via srun), all nodes rendezvousing on
# the job's first host.
#
#   bash sh/slurm.sh RECIPE [sbatch args...]
#   bash sh/slurm.sh sh/GPaCo/ImageNet/train_resnet50.sh --nodes=2 --gpus-per-node=4 --partition=gpu --time=72:00:00
#
# Outside a job this submits itself with sbatch (the sbatch args pass through, one task per
# node is forced). Inside an allocation (the batch job, or an `salloc` shell) it runs srun
# directly. Recipe variables (DATA_ROOT, OUTPUT_DIR, EXTRA_ARGS, ...) are exported into the
# job. Train recipes use `--resume auto`, so a requeued/preempted job continues.
#SBATCH --job-name=gpaco
#SBATCH --ntasks-per-node=1
#SBATCH --output=slurm-%j.out
set -euo pipefail
# (Inside the job sbatch runs a spooled copy of this file: the repository is GPACO_ROOT then.)
GPACO_TAKES_ARGS=1 . "${GPACO_ROOT:-$(dirname "${BASH_SOURCE[0]}")/..}/sh/lib/usage.bash" "$@"   # --help: the header

if [ $# -lt 1 ]; then
    echo "usage: bash sh/slurm.sh RECIPE [sbatch args...]" >&2
    exit 2
fi
RECIPE="$1"
shift

if [ -z "${SLURM_JOB_ID:-}" ]; then
    # Submit. sbatch copies this file to a spool folder, so pass the repo root and an
    # absolute recipe path along.
    ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    RECIPE="$(cd "$(dirname "$RECIPE")" && pwd)/$(basename "$RECIPE")"
    [ -f "$RECIPE" ] || { echo "error: no recipe $RECIPE" >&2; exit 2; }
    exec sbatch --ntasks-per-node=1 --chdir="$ROOT" --export=ALL,GPACO_ROOT="$ROOT" "$@" \
        "$ROOT/sh/slurm.sh" "$RECIPE"
fi

# Inside the allocation.
cd "${GPACO_ROOT:-${SLURM_SUBMIT_DIR:-.}}"
export NNODES="${SLURM_NNODES:-1}"
export MASTER_ADDR="${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}"
# A port derived from the job id, so two jobs sharing a node do not collide.
export MASTER_PORT="${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}"
# GPUs per node: SLURM_GPUS_ON_NODE (--gpus-per-node / --gres), else SLURM_GPUS_PER_NODE
# ("8" or "a100:8"); if neither is set, launch.sh counts the visible GPUs itself.
if [ -z "${NGPUS:-}" ]; then
    if [ -n "${SLURM_GPUS_ON_NODE:-}" ]; then
        export NGPUS="$SLURM_GPUS_ON_NODE"
    elif [ -n "${SLURM_GPUS_PER_NODE:-}" ]; then
        export NGPUS="${SLURM_GPUS_PER_NODE##*:}"
    fi
fi
# SLURM signals every process of the step (at the time limit, scancel, --signal=USR1@T) and
# torchrun forwards what it handles to its workers; the workers treat the duplicate as one
# request. torchrun must handle SIGUSR1 too, or that signal kills it and --kill-on-bad-exit
# takes the step down before the workers save. PET_* is the --signals-to-handle flag;
# older torch reads TORCHELASTIC_SIGNALS_TO_HANDLE directly.
export PET_SIGNALS_TO_HANDLE="${PET_SIGNALS_TO_HANDLE:-SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1}"
export TORCHELASTIC_SIGNALS_TO_HANDLE="$PET_SIGNALS_TO_HANDLE"
# Seconds torchrun waits for its workers (one optimizer step plus a checkpoint save) before
# SIGKILL; its default of 30 is too short for a large model. SLURM's KillWait still bounds it.
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT="${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-300}"
echo "[slurm] job $SLURM_JOB_ID: $NNODES node(s), master $MASTER_ADDR:$MASTER_PORT, NGPUS=${NGPUS:-auto}, recipe $RECIPE"

# One task per node; NODE_RANK comes from that task's SLURM_NODEID (evaluated on each node).
exec srun --nodes="$NNODES" --ntasks="$NNODES" --ntasks-per-node=1 --kill-on-bad-exit=1 \
    bash -c 'export NODE_RANK="$SLURM_NODEID"; exec bash "$0"' "$RECIPE"
