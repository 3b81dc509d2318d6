#!/usr/bin/env bash
# GPaCo, ImageNet-LT, ensemble of two ResNeXt-101 32x4d: sum of the raw logits.
#
# Paper row: GPaCo ImageNet-LT, ensemble (2-ResNeXt-101): 63.2 top-1 (README table).
# Original: GPaCo/LT/paco_lt_ensemble.py sums raw logits (its released script pairs a ResNeXt-101
# with a ResNeXt-50: sh/GPaCo/LT/ImageNetLT_eval_ensemble.sh); this recipe is the README row's
# two ResNeXt-101 (docs/method.md#metrics). Two training runs of sh/GPaCo/LT/ImageNetLT_train_X101.sh
# that differ in their seed: CHECKPOINT_A defaults to its best.pth, CHECKPOINT_B to the run
#   SEED=1 OUTPUT_DIR=runs/GPaCo/LT/ImageNetLT_train_X101_seed1 bash sh/GPaCo/LT/ImageNetLT_train_X101.sh
# Ours or the original's released files (tools/eval.py detects the layout). Override the
# checkpoints through these variables, not EXTRA_ARGS (a further --checkpoint in EXTRA_ARGS would
# join the ensemble). SAVE_LOGITS=FILE.npy also writes the summed logits in test-list order.
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
CHECKPOINT_B="${CHECKPOINT_B:-runs/GPaCo/LT/ImageNetLT_train_X101_seed1/best.pth}"  # the SEED=1 run above
CHECKPOINT_A="${CHECKPOINT_A:-runs/GPaCo/LT/ImageNetLT_train_X101/best.pth}"        # sh/GPaCo/LT/ImageNetLT_train_X101.sh
OUTPUT_DIR="${OUTPUT_DIR:-runs/GPaCo/LT/ImageNetLT_eval_ensemble_2xX101}"
LOGITS=()
if [ -n "${SAVE_LOGITS:-}" ]; then
    LOGITS=(--save-logits "$SAVE_LOGITS")
fi
exec bash "$ROOT/sh/launch.sh" tools/eval.py \
    --checkpoint "$CHECKPOINT_B" --arch resnext101_32x4d \
    --checkpoint "$CHECKPOINT_A" --arch resnext101_32x4d \
    --method gpaco --proj-dim 128 --queue-size 8192 \
    --dataset split --data-root "$DATA_ROOT" --train-list "$TRAIN_LIST" --test-list "$TEST_LIST" \
    --num-classes 1000 --image-size 224 --norm imagenet \
    --batch-size 128 --workers "${WORKERS:-8}" --output-dir "$OUTPUT_DIR" ${LOGITS[@]+"${LOGITS[@]}"}
