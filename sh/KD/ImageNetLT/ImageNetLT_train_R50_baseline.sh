#!/usr/bin/env bash
# Cross-entropy baseline, ImageNet-LT, ResNet-50: train (the distillation runs' teacher).
#
# Paper row: baseline ResNet-50: 45.476 top-1 (DKLv1/Imbalanced_KD-dkl/README.md line 10).
# Original: jiequancui/DKL DKLv1/Imbalanced_KD-dkl/sh/Distill/ImageNetLT_train_R50_baseline.sh
# (imagenetlt_distill_dkl.py, the PaCo-LT driver trimmed to CE + distillation), the source of every
# hyperparameter below.
# GPUs: the original ran 4 GPUs x 32 images (SBATCH --gres=gpu:4, batch 128, DDP). --batch-size is
# the global batch (lr not rescaled); --device-batch 32 computes BatchNorm over groups of 32 images,
# as its GPUs did, on any GPU count whose processes hold a multiple of 32
# (docs/recipes.md#same-statistics-on-any-gpu-count).
# Hyperparameters: 90 epochs, batch 128 (last partial batch dropped), SGD momentum .9 lr 0.05, wd
# 5e-4 on all parameters, 10 linear warmup epochs then the driver's cosine (--schedule cosine
# --warmup-epochs 10); aug RandomResizedCrop 224 (scale .08-1) + flip (--aug crop_flip; the driver's
# regular_val, whose second view is loaded but unused); evaluation Resize 256 + CenterCrop 224; loss
# CE on a linear classifier (--method ce), the PaCo-LT driver reduced to a plain classifier, as the
# original's baseline. Sources: the script (lr, wd, aug, epochs, batch) and the driver's defaults
# (momentum, schedule).
#
# Data: DATA_ROOT is the ImageNet-2012 folder (train/, val/) holding the ImageNet-LT split lists
# ImageNet_LT_{train,val,test}.txt. best.pth is selected on ImageNet_LT_val (the original selected
# on the test list itself, docs/migrating.md); metrics.json reports ImageNet_LT_test (the split of
# the README number) with many / medium / few-shot accuracies.
# Launcher (sh/launch.sh): NGPUS (default: all visible GPUs), NNODES, NODE_RANK, MASTER_ADDR,
# MASTER_PORT; DRY_RUN=1 (a quick check; synthetic data when DATA_ROOT is absent, a teacher with
# random weights when TEACHER_WEIGHTS is absent); EXTRA_ARGS="--flag value" (appended last:
# overrides any flag here). Relative paths are relative to the repository root. Under SLURM:
# bash sh/slurm.sh <this recipe> [sbatch args].
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
. "$ROOT/sh/lib/usage.bash" "$@"   # --help: print the header above
DATA_ROOT="${DATA_ROOT:-data/imagenet}"
TRAIN_LIST="${TRAIN_LIST:-$DATA_ROOT/ImageNet_LT_train.txt}"
VAL_LIST="${VAL_LIST:-$DATA_ROOT/ImageNet_LT_val.txt}"
TEST_LIST="${TEST_LIST:-$DATA_ROOT/ImageNet_LT_test.txt}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/KD/ImageNetLT/ImageNetLT_train_R50_baseline}"
exec bash "$ROOT/sh/launch.sh" tools/train.py \
    --method ce --arch resnet50 \
    --dataset split --data-root "$DATA_ROOT" --train-list "$TRAIN_LIST" --val-list "$VAL_LIST" --test-list "$TEST_LIST" \
    --num-classes 1000 --image-size 224 --norm imagenet \
    --epochs 90 --batch-size 128 --device-batch 32 --lr 0.05 --momentum 0.9 --wd 5e-4 --schedule cosine --warmup-epochs 10 \
    --aug crop_flip \
    --workers "${WORKERS:-8}" --seed "${SEED:-0}" --output-dir "$OUTPUT_DIR" --resume auto
