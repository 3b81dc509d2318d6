#!/usr/bin/env bash
# GenDD, label-free, CC3M -> ImageNet val, ResNet-34 -> ResNet-18: evaluate the student as published
# (5 samples per image).
#
# Paper row: GenDD (label-free, CC3M) ResNet-34 -> ResNet-18: 66.90 top-1 on ImageNet val (GenDD
# README.md line 45).
# Original: jiequancui/Generative-Distribution-Distillation @ 9246d0b,
# GenDD_imagenet/sh/cc3m_eval_res34res18_unsupervised_gendd.sh (main_unsupervised_gendd.py
# --evaluate --num_sampling 5 on model_best).
# CHECKPOINT defaults to the best.pth of sh/GenDD/CC3M/res34_res18.sh (the student, its denoiser and
# the teacher classifier are loaded from it; no teacher file is read); ARCH=kd_mobilenetv1
# TEACHER_DIM=2048 TRAIN_DIR=runs/GenDD/CC3M/res50_mv1 evaluates the ResNet-50 -> MobileNetV1
# student. best.pth was selected on the val set it is reported on, as the original's model_best;
# CHECKPOINT=$TRAIN_DIR/checkpoint.pth evaluates the last epoch. Sampling: 5 features per image, 64
# steps, guidance 2 (the checkpoint's), temperature 1 (--gendd-samples 5 --gendd-steps 64); the
# noise is seeded. The probe's accuracy is printed too, meaningless here (a random classifier).
#
# Data: DATA_ROOT is the ImageNet-2012 folder with val.txt; all 50,000 val images.
# Launcher (sh/launch.sh): NGPUS (default: all visible GPUs), NNODES, NODE_RANK, MASTER_ADDR,
# MASTER_PORT; DRY_RUN=1 (a quick check; synthetic data when DATA_ROOT is absent, random weights
# when CHECKPOINT is absent); EXTRA_ARGS="--flag value" (appended last: overrides any flag here).
# Relative paths are relative to the repository root. Under SLURM: bash sh/slurm.sh <this recipe>
# [sbatch args].
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
. "$ROOT/sh/lib/usage.bash" "$@"   # --help: print the header above
DATA_ROOT="${DATA_ROOT:-data/imagenet}"
TEST_LIST="${TEST_LIST:-$DATA_ROOT/val.txt}"
ARCH="${ARCH:-resnet18}"  # the student
TEACHER_DIM="${TEACHER_DIM:-512}"  # the teacher's feature size
TRAIN_DIR="${TRAIN_DIR:-runs/GenDD/CC3M/res34_res18}"  # the run folder of sh/GenDD/CC3M/res34_res18.sh
CHECKPOINT="${CHECKPOINT:-$TRAIN_DIR/best.pth}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/GenDD/CC3M/res34_res18_eval}"
exec bash "$ROOT/sh/launch.sh" tools/eval.py \
    --checkpoint "$CHECKPOINT" --method gendd --arch "$ARCH" --gendd-teacher-dim "$TEACHER_DIM" \
    --gendd-samples 5 --gendd-steps 64 \
    --dataset split --data-root "$DATA_ROOT" --test-list "$TEST_LIST" --num-classes 1000 --image-size 224 --norm imagenet \
    --batch-size 512 --workers "${WORKERS:-8}" --output-dir "$OUTPUT_DIR"
