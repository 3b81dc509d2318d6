#!/usr/bin/env bash
# ResCom, ImageNet-LT-trained ResNet-50: evaluate a checkpoint on ImageNet-C (and on ImageNet_LT_test).
#
# Paper row: ResCom README "mCE, NmCE, and Corruption Severity Results on ImageNet-C": ResCom,
# top-1 58.7, mCE 69.4, NmCE 89.2. Its top-1 is the README's ImageNet-LT ResNet-50 row (58.7), so the
# model is the ImageNet-LT ResNet-50 run: CHECKPOINT defaults to the best.pth of
# sh/ResCom/ImageNetLT_train_R50.sh (a gpaco checkpoint; the original released no weights).
# Source of the protocol: the original ships no evaluation code for ImageNet-C; we evaluate as the
# GPaCo eval recipes do (Resize 256 + CenterCrop 224, ImageNet mean/std, the full 1000-way head, no prior).
# The README's "mCE" is our mce_unnormalised and its "NmCE" our mce_alexnet_normalised (Hendrycks' mCE,
# normalised by AlexNet's errors): the README does not define them; this reading is ours, from their
# ratio (69.4 / 89.2 = 0.78, about AlexNet's mean corruption error, 0.79).
#
# Data: DATA_ROOT is the ImageNet-2012 folder with ImageNet_LT_{train,test}.txt (the clean report:
# ImageNet_LT_test = the 50k ImageNet val images; many/medium/few from the train counts).
#   IMAGENET_C_ROOT       ImageNet-C (<corruption>/<1..5>/<wnid>/*.JPEG; default data/imagenet-c): error per
#                         corruption and severity, mce_unnormalised and mce_alexnet_normalised in metrics.json
#   IMAGENET_R_ROOT, IMAGENET_SKETCH_ROOT  optional extra passes (the README reports none for ResCom)
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
TRAIN_DIR="${TRAIN_DIR:-runs/ResCom/ImageNetLT_train_R50}"  # the run folder of sh/ResCom/ImageNetLT_train_R50.sh
CHECKPOINT="${CHECKPOINT:-$TRAIN_DIR/best.pth}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/ResCom/ImageNetC_eval_R50}"
IMAGENET_C_ROOT="${IMAGENET_C_ROOT:-data/imagenet-c}"
ROBUST=(--corrupted-root "$IMAGENET_C_ROOT")
if [ -n "${IMAGENET_R_ROOT:-}" ]; then
    ROBUST+=(--imagenet-r-root "$IMAGENET_R_ROOT")
fi
if [ -n "${IMAGENET_SKETCH_ROOT:-}" ]; then
    ROBUST+=(--imagenet-sketch-root "$IMAGENET_SKETCH_ROOT")
fi
exec bash "$ROOT/sh/launch.sh" tools/eval.py \
    --checkpoint "$CHECKPOINT" \
    --method rescom --arch resnet50 --proj-dim 128 --rescom-queue-per-class 10 \
    --dataset split --data-root "$DATA_ROOT" --train-list "$TRAIN_LIST" --test-list "$TEST_LIST" \
    --num-classes 1000 --image-size 224 --norm imagenet \
    --batch-size 128 --workers "${WORKERS:-8}" --output-dir "$OUTPUT_DIR" "${ROBUST[@]}"
