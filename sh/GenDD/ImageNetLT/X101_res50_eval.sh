#!/usr/bin/env bash
# GenDD, ImageNet-LT, ResNeXt-101 32x4d -> ResNet-50: evaluate the student with 5 samples per image.
#
# Paper row: none in the original README (GenDD's ImageNet-LT results are in the paper's table
# only).
# Original: jiequancui/Generative-Distribution-Distillation @ 9246d0b,
# GenDD_imagenet/sh_lt/imagenetlt_eval_resnext101_res50_gendd.sh (main_gendd_lt.py --evaluate
# --num_sampling 5 on model_best).
# CHECKPOINT defaults to the best.pth of sh/GenDD/ImageNetLT/X101_res50.sh (the student, its
# denoiser and the teacher classifier are loaded from it; no teacher file is read); ARCH=resnet18
# TRAIN_DIR=runs/GenDD/ImageNetLT/X101_res18 evaluates the ResNet-18 student. Sampling: 5 features
# per image, 64 steps, guidance 2 (the checkpoint's), temperature 1 (--gendd-samples 5 --gendd-steps
# 64); the noise is seeded. The linear probe's accuracy beside it.
#
# Data: DATA_ROOT is the ImageNet-2012 folder with ImageNet_LT_{train,test}.txt (the train list
# gives the many / medium / few-shot split).
# Launcher (sh/launch.sh): NGPUS (default: all visible GPUs), NNODES, NODE_RANK, MASTER_ADDR,
# MASTER_PORT; DRY_RUN=1 (a quick check; synthetic data when DATA_ROOT is absent, random weights
# when CHECKPOINT is absent); EXTRA_ARGS="--flag value" (appended last: overrides any flag here).
# Relative paths are relative to the repository root. Under SLURM: bash sh/slurm.sh <this recipe>
# [sbatch args].
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
. "$ROOT/sh/lib/usage.bash" "$@"   # --help: print the header above
DATA_ROOT="${DATA_ROOT:-data/imagenet}"
TRAIN_LIST="${TRAIN_LIST:-$DATA_ROOT/ImageNet_LT_train.txt}"
TEST_LIST="${TEST_LIST:-$DATA_ROOT/ImageNet_LT_test.txt}"
ARCH="${ARCH:-resnet50}"  # the student
TRAIN_DIR="${TRAIN_DIR:-runs/GenDD/ImageNetLT/X101_res50}"  # the run folder of sh/GenDD/ImageNetLT/X101_res50.sh
CHECKPOINT="${CHECKPOINT:-$TRAIN_DIR/best.pth}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/GenDD/ImageNetLT/X101_res50_eval}"
exec bash "$ROOT/sh/launch.sh" tools/eval.py \
    --checkpoint "$CHECKPOINT" --method gendd --arch "$ARCH" --gendd-teacher-dim 2048 \
    --gendd-samples 5 --gendd-steps 64 \
    --dataset split --data-root "$DATA_ROOT" --train-list "$TRAIN_LIST" --test-list "$TEST_LIST" \
    --num-classes 1000 --image-size 224 --norm imagenet \
    --batch-size 256 --workers "${WORKERS:-8}" --output-dir "$OUTPUT_DIR"
