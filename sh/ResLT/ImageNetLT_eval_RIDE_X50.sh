#!/usr/bin/env bash
# RIDE-ResLT, ImageNet-LT, RIDE ResNeXt-50 (3 experts): evaluate a checkpoint.
#
# Paper row: RIDEResNeXt-ResLT (3 experts) ImageNet-LT: 57.6 top-1 (ResLT README, ImageNet-LT table).
# Original: jiequancui/ResLT ImageNetLT/sh/X50_bt128_reslt_ride_eval.sh (--evaluate, --num_experts 3):
# each expert pools its layer4 map before its ResLT head, scores with W / ||W||^0.7 and no bias, and the
# prediction is the mean of the 3 experts. CHECKPOINT defaults to the best.pth of
# sh/ResLT/ImageNetLT_train_RIDE_X50.sh; --ride-eval-experts / --reslt-gamma /
# --no-reslt-original-eval-pooling in EXTRA_ARGS change the evaluation (not the weights).
#
# Data: DATA_ROOT is the ImageNet-2012 folder with ImageNet_LT_{train,test}.txt (test: 50,000 images,
# class-balanced, so top-1 is the mean per-class accuracy).
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
TRAIN_DIR="${TRAIN_DIR:-runs/ResLT/ImageNetLT_train_RIDE_X50}"  # the run folder of sh/ResLT/ImageNetLT_train_RIDE_X50.sh
CHECKPOINT="${CHECKPOINT:-$TRAIN_DIR/best.pth}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/ResLT/ImageNetLT_eval_RIDE_X50}"
exec bash "$ROOT/sh/launch.sh" tools/eval.py \
    --checkpoint "$CHECKPOINT" \
    --method ride_reslt --arch resnext50_32x4d --ride-experts 3 --ride-expert-planes 192 384 --ride-eval-experts 3 \
    --reslt-branch-sizes 825 220 --reslt-pool after --reslt-original-eval-pooling --reslt-gamma 0.7 \
    --dataset split --data-root "$DATA_ROOT" --train-list "$TRAIN_LIST" --test-list "$TEST_LIST" \
    --num-classes 1000 --image-size 224 --norm imagenet \
    --batch-size 128 --workers "${WORKERS:-8}" --output-dir "$OUTPUT_DIR"
