#!/usr/bin/env bash
# PaCo, full ImageNet-1k, ResNet-50: evaluate a checkpoint.
#
# Paper row: PaCo full ImageNet, ResNet-50: 79.3 top-1. Original:
# PaCo/Full-ImageNet/sh/eval_resnet50.sh (--evaluate --reload ...). CHECKPOINT defaults to
# the best.pth of sh/PaCo/ImageNet/train_resnet50.sh (a gpaco checkpoint).
#
# Data: DATA_ROOT is the ImageNet-2012 folder with val.txt; the report is on the 50k val set.
# Launcher (sh/launch.sh): NGPUS (default: all visible GPUs), NNODES, NODE_RANK, MASTER_ADDR,
# MASTER_PORT; DRY_RUN=1 (a quick check; synthetic data when DATA_ROOT is absent);
# EXTRA_ARGS="--flag value" (appended last: overrides any flag here). Relative paths are
# relative to the repository root. Under SLURM: bash sh/slurm.sh <this recipe> [sbatch args].
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
. "$ROOT/sh/lib/usage.bash" "$@"   # --help: print the header above
DATA_ROOT="${DATA_ROOT:-data/imagenet}"
TEST_LIST="${TEST_LIST:-$DATA_ROOT/val.txt}"
TRAIN_DIR="${TRAIN_DIR:-runs/PaCo/ImageNet/train_resnet50}"  # the run folder of sh/PaCo/ImageNet/train_resnet50.sh
CHECKPOINT="${CHECKPOINT:-$TRAIN_DIR/best.pth}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/PaCo/ImageNet/eval_resnet50}"
exec bash "$ROOT/sh/launch.sh" tools/eval.py \
    --checkpoint "$CHECKPOINT" \
    --method paco --arch resnet50 --proj-dim 128 --queue-size 8192 \
    --dataset split --data-root "$DATA_ROOT" --test-list "$TEST_LIST" \
    --num-classes 1000 --image-size 224 --norm imagenet \
    --batch-size 128 --workers "${WORKERS:-8}" --output-dir "$OUTPUT_DIR"
