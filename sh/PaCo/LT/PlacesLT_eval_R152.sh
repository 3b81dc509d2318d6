#!/usr/bin/env bash
# PaCo, Places-LT, ResNet-152: evaluate a checkpoint.
#
# Paper row: PaCo Places-LT, ResNet-152: 41.2 top-1 (on Places_LT_val). Original:
# PaCo/LT/sh/PlacesLT_eval_R152.sh. CHECKPOINT defaults to the best.pth of
# sh/PaCo/LT/PlacesLT_train_R152.sh (a gpaco checkpoint).
#
# Data: DATA_ROOT is the Places365 folder with Places_LT_{train,test}.txt; the report is on
# Places_LT_test (36,500). The paper's number is on Places_LT_val (7,300):
# TEST_LIST=$DATA_ROOT/Places_LT_val.txt reproduces that protocol.
# Launcher (sh/launch.sh): NGPUS (default: all visible GPUs), NNODES, NODE_RANK, MASTER_ADDR,
# MASTER_PORT; DRY_RUN=1 (a quick check; synthetic data when DATA_ROOT is absent);
# EXTRA_ARGS="--flag value" (appended last: overrides any flag here). Relative paths are
# relative to the repository root. Under SLURM: bash sh/slurm.sh <this recipe> [sbatch args].
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
. "$ROOT/sh/lib/usage.bash" "$@"   # --help: print the header above
DATA_ROOT="${DATA_ROOT:-data/places365}"
TRAIN_LIST="${TRAIN_LIST:-$DATA_ROOT/Places_LT_train.txt}"
TEST_LIST="${TEST_LIST:-$DATA_ROOT/Places_LT_test.txt}"
TRAIN_DIR="${TRAIN_DIR:-runs/PaCo/LT/PlacesLT_train_R152}"  # the run folder of sh/PaCo/LT/PlacesLT_train_R152.sh
CHECKPOINT="${CHECKPOINT:-$TRAIN_DIR/best.pth}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/PaCo/LT/PlacesLT_eval_R152}"
exec bash "$ROOT/sh/launch.sh" tools/eval.py \
    --checkpoint "$CHECKPOINT" \
    --method paco --arch resnet152 --proj-dim 128 --queue-size 8192 \
    --dataset split --data-root "$DATA_ROOT" --train-list "$TRAIN_LIST" --test-list "$TEST_LIST" \
    --num-classes 365 --image-size 224 --norm imagenet \
    --batch-size 128 --workers "${WORKERS:-8}" --output-dir "$OUTPUT_DIR"
