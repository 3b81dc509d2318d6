#!/usr/bin/env bash
# ResLT, ImageNet-LT, ResNet-10 (BasicBlock [1,1,1,1]): evaluate a checkpoint.
#
# Paper row: ResLT ImageNet-LT ResNet-10 (BasicBlock [1,1,1,1]): no number in the README (a link only).
# Original: jiequancui/ResLT ImageNetLT/sh/ (evaluation script of ImageNetLT/sh/R10.sh), gamma 0.3.
# CHECKPOINT defaults to the best.pth of sh/ResLT/ImageNetLT_train_R10.sh; the model options
# (branches, gamma, pooling) are the checkpoint's; --reslt-gamma / --reslt-original-eval-pooling
# in EXTRA_ARGS override them for this evaluation.
#
# Data: DATA_ROOT is the ImageNet-2012 folder with ImageNet_LT_{train,test}.txt.
# Launcher (sh/launch.sh): NGPUS (default: all visible GPUs), NNODES, NODE_RANK, MASTER_ADDR,
# MASTER_PORT; DRY_RUN=1 (a quick check; synthetic data when DATA_ROOT is absent);
# EXTRA_ARGS="--flag value" (appended last: overrides any flag here). Relative paths are
# relative to the repository root. Under SLURM: bash sh/slurm.sh <this recipe> [sbatch args].
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
. "$ROOT/sh/lib/usage.bash" "$@"   # --help: print the header above
DATA_ROOT="${DATA_ROOT:-data/imagenet}"
TRAIN_LIST="${TRAIN_LIST:-$DATA_ROOT/ImageNet_LT_train.txt}"
TEST_LIST="${TEST_LIST:-$DATA_ROOT/ImageNet_LT_test.txt}"
TRAIN_DIR="${TRAIN_DIR:-runs/ResLT/ImageNetLT_train_R10}"  # the run folder of sh/ResLT/ImageNetLT_train_R10.sh
CHECKPOINT="${CHECKPOINT:-$TRAIN_DIR/best.pth}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/ResLT/ImageNetLT_eval_R10}"
exec bash "$ROOT/sh/launch.sh" tools/eval.py \
    --checkpoint "$CHECKPOINT" \
    --method reslt --arch resnet10 --reslt-branch-sizes 825 220 --reslt-head conv --reslt-pool before --reslt-gamma 0.3 \
    --dataset split --data-root "$DATA_ROOT" --train-list "$TRAIN_LIST" --test-list "$TEST_LIST" \
    --num-classes 1000 --image-size 224 --norm imagenet \
    --batch-size 128 --workers "${WORKERS:-8}" --output-dir "$OUTPUT_DIR"
