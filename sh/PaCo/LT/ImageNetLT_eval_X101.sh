#!/usr/bin/env bash
# PaCo, ImageNet-LT, ResNeXt-101 32x4d: evaluate a checkpoint.
#
# Paper row: PaCo ImageNet-LT, ResNeXt-101 32x4d: 60.0 top-1.
# Original: PaCo/LT/sh/ImageNetLT_eval_X101.sh
# (--evaluate --reload pretrained_models/...). CHECKPOINT defaults to the best.pth of
# sh/PaCo/LT/ImageNetLT_train_X101.sh or any file of the
# original's released layouts (module.encoder_q.* + module.linear.*; docs/model_zoo.md). Writes metrics.json, per-class accuracy
# and many/medium/few to OUTPUT_DIR.
#
# Data: DATA_ROOT is the ImageNet-2012 folder with ImageNet_LT_{train,test}.txt; the report is
# on ImageNet_LT_test (50k = the ImageNet val set), many/medium/few from the train counts.
# Launcher (sh/launch.sh): NGPUS (default: all visible GPUs), NNODES, NODE_RANK, MASTER_ADDR,
# MASTER_PORT; DRY_RUN=1 (a quick check; synthetic data when DATA_ROOT is absent);
# EXTRA_ARGS="--flag value" (appended last: overrides any flag here). Relative paths are
# relative to the repository root. Under SLURM: bash sh/slurm.sh <this recipe> [sbatch args].
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
. "$ROOT/sh/lib/usage.bash" "$@"   # --help: print the header above
DATA_ROOT="${DATA_ROOT:-data/imagenet}"
TRAIN_LIST="${TRAIN_LIST:-$DATA_ROOT/ImageNet_LT_train.txt}"
TEST_LIST="${TEST_LIST:-$DATA_ROOT/ImageNet_LT_test.txt}"
TRAIN_DIR="${TRAIN_DIR:-runs/PaCo/LT/ImageNetLT_train_X101}"  # the run folder of sh/PaCo/LT/ImageNetLT_train_X101.sh
CHECKPOINT="${CHECKPOINT:-$TRAIN_DIR/best.pth}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/PaCo/LT/ImageNetLT_eval_X101}"
exec bash "$ROOT/sh/launch.sh" tools/eval.py \
    --checkpoint "$CHECKPOINT" \
    --method paco --arch resnext101_32x4d --proj-dim 128 --queue-size 8192 \
    --dataset split --data-root "$DATA_ROOT" --train-list "$TRAIN_LIST" --test-list "$TEST_LIST" \
    --num-classes 1000 --image-size 224 --norm imagenet \
    --batch-size 128 --workers "${WORKERS:-8}" --output-dir "$OUTPUT_DIR"
