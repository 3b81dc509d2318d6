#!/usr/bin/env bash
# GPaCo, full ImageNet-1k, ResNet-50: evaluate a checkpoint (clean val top-1/top-5).
#
# Paper row: GPaCo full ImageNet, ResNet-50: 79.7 top-1.
# Original: GPaCo/LT/sh/ImageNet/eval_resnet50.sh
# (--evaluate --resume ...). CHECKPOINT defaults to the best.pth of
# sh/GPaCo/ImageNet/train_resnet50.sh (a gpaco checkpoint).
#
# Data: DATA_ROOT is the ImageNet-2012 folder with val.txt; the report is on the 50k val set.
# Robustness (README: ImageNet-C mCE 50.9 / rel. mCE 64.4, ImageNet-R 41.1, ImageNet-Sketch 30.9),
# each run when its folder is given:
#   IMAGENET_C_ROOT       ImageNet-C (<corruption>/<1..5>/<wnid>/*.JPEG): error per corruption and
#                         severity, "mCE" = unnormalised mean corruption error and "rel. mCE" =
#                         AlexNet-normalised (Hendrycks' standard mCE), as the paper names them
#   IMAGENET_R_ROOT       ImageNet-R (200 <wnid>/ folders): top-1 over the 200 masked columns
#   IMAGENET_SKETCH_ROOT  ImageNet-Sketch (1000 <wnid>/ folders): top-1, full head
# Launcher (sh/launch.sh): NGPUS (default: all visible GPUs), NNODES, NODE_RANK, MASTER_ADDR,
# MASTER_PORT; DRY_RUN=1 (a quick check; synthetic data when DATA_ROOT is absent);
# EXTRA_ARGS="--flag value" (appended last: overrides any flag here). Relative paths are
# relative to the repository root. Under SLURM: bash sh/slurm.sh <this recipe> [sbatch args].
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
. "$ROOT/sh/lib/usage.bash" "$@"   # --help: print the header above
DATA_ROOT="${DATA_ROOT:-data/imagenet}"
TEST_LIST="${TEST_LIST:-$DATA_ROOT/val.txt}"
TRAIN_DIR="${TRAIN_DIR:-runs/GPaCo/ImageNet/train_resnet50}"  # the run folder of sh/GPaCo/ImageNet/train_resnet50.sh
CHECKPOINT="${CHECKPOINT:-$TRAIN_DIR/best.pth}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/GPaCo/ImageNet/eval_resnet50}"
ROBUST=()
if [ -n "${IMAGENET_C_ROOT:-}" ]; then
    ROBUST+=(--corrupted-root "$IMAGENET_C_ROOT")
fi
if [ -n "${IMAGENET_R_ROOT:-}" ]; then
    ROBUST+=(--imagenet-r-root "$IMAGENET_R_ROOT")
fi
if [ -n "${IMAGENET_SKETCH_ROOT:-}" ]; then
    ROBUST+=(--imagenet-sketch-root "$IMAGENET_SKETCH_ROOT")
fi
exec bash "$ROOT/sh/launch.sh" tools/eval.py \
    --checkpoint "$CHECKPOINT" \
    --method gpaco --arch resnet50 --proj-dim 128 --queue-size 8192 \
    --dataset split --data-root "$DATA_ROOT" --test-list "$TEST_LIST" \
    --num-classes 1000 --image-size 224 --norm imagenet \
    --batch-size 128 --workers "${WORKERS:-8}" --output-dir "$OUTPUT_DIR" ${ROBUST[@]+"${ROBUST[@]}"}
