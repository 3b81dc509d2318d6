#!/usr/bin/env bash
# Cross-entropy baseline, full ImageNet-1k, MAE ViT-B/16: evaluate, robustness columns included.
#
# Paper row: CE ViT-B/16: 83.6 top-1; ImageNet-C mCE 39.1, rel. mCE 49.9; ImageNet-R 49.9;
# ImageNet-Sketch 36.1 (README robustness table).
# Original: the README reports these columns; its only released eval script is the GPaCo ViT-B
# one (sh/GPaCo/MAE-ViTs/finetune_base_mae_gpaco_eval.sh), which this recipe follows with
# another checkpoint. CHECKPOINT defaults to the best.pth of
# sh/GPaCo/MAE-ViTs/finetune_base_mae.sh (a ce checkpoint of mae_vit_base_patch16).
# Evaluation transform: Resize 256 (bicubic) > CenterCrop 224, ImageNet normalisation.
#
# Data: DATA_ROOT is the ImageNet-2012 folder with val.txt (clean top-1/top-5 on the 50k val).
# Robustness sets (docs/method.md#metrics), one env var each: IMAGENET_C_ROOT (<corruption>/<severity>/<wnid>/),
# IMAGENET_R_ROOT (200 wnid folders), IMAGENET_SKETCH_ROOT (1000 wnid folders).
# Each one that is set adds its pass: ImageNet-C prints "mCE (unnormalised)" and
# "rel. mCE (AlexNet-normalised)" apart (docs/model_zoo.md), ImageNet-R uses the 200-class mask.
# Launcher (sh/launch.sh): NGPUS (default: all visible GPUs), NNODES, NODE_RANK, MASTER_ADDR,
# MASTER_PORT; DRY_RUN=1 (a quick check; synthetic data when DATA_ROOT is absent);
# EXTRA_ARGS="--flag value" (appended last: overrides any flag here). Relative paths are
# relative to the repository root. Under SLURM: bash sh/slurm.sh <this recipe> [sbatch args].
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
. "$ROOT/sh/lib/usage.bash" "$@"   # --help: print the header above
DATA_ROOT="${DATA_ROOT:-data/imagenet}"
TEST_LIST="${TEST_LIST:-$DATA_ROOT/val.txt}"
TRAIN_DIR="${TRAIN_DIR:-runs/GPaCo/MAE-ViTs/finetune_base_mae}"  # the run folder of finetune_base_mae.sh
CHECKPOINT="${CHECKPOINT:-$TRAIN_DIR/best.pth}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/GPaCo/MAE-ViTs/finetune_base_mae_eval}"
IMAGENET_C_ROOT="${IMAGENET_C_ROOT:-}"
IMAGENET_R_ROOT="${IMAGENET_R_ROOT:-}"
IMAGENET_SKETCH_ROOT="${IMAGENET_SKETCH_ROOT:-}"
ROBUST=()
if [ -n "$IMAGENET_C_ROOT" ]; then
    ROBUST+=(--corrupted-root "$IMAGENET_C_ROOT")
fi
if [ -n "$IMAGENET_R_ROOT" ]; then
    ROBUST+=(--imagenet-r-root "$IMAGENET_R_ROOT")
fi
if [ -n "$IMAGENET_SKETCH_ROOT" ]; then
    ROBUST+=(--imagenet-sketch-root "$IMAGENET_SKETCH_ROOT")
fi
exec bash "$ROOT/sh/launch.sh" tools/eval.py \
    --checkpoint "$CHECKPOINT" \
    --method ce --arch mae_vit_base_patch16 \
    --dataset split --data-root "$DATA_ROOT" --test-list "$TEST_LIST" \
    --num-classes 1000 --image-size 224 --resize-size 256 --interpolation bicubic --norm imagenet \
    --batch-size 128 --workers "${WORKERS:-8}" --output-dir "$OUTPUT_DIR" ${ROBUST[@]+"${ROBUST[@]}"}
