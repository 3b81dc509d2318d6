#!/usr/bin/env bash
# MiSLAS stage 1, ImageNet-LT, ResNet-50: train with mixup.
#
# Paper row: MiSLAS (CVPR 2021) ImageNet-LT ResNet-50: stage 1 45.5 -> stage 2 52.7 top-1 (ECE 1.78) (MiSLAS README).
# This is stage 1 (45.5); sh/MiSLAS/ImageNetLT_stage2.sh loads its best.pth.
# Original: dvlab-research/MiSLAS train_stage1.py with config/imagenet/imagenet_resnet50_stage1_mixup.yaml, the source of every
# hyperparameter below (batch 256 included).
# GPUs: the original ran 4 GPUs x 64 images (DataParallel: BatchNorm per GPU, mixup over the whole batch)
# (MiSLAS README: four GPUs for ImageNet-LT, iNaturalist 2018, Places-LT; train_stage1.py wraps the model in
# DataParallel). --batch-size is the global batch (lr not rescaled); --bn-device-batch 64 normalises
# BatchNorm over groups of 64 images on any GPU count whose processes hold a multiple of 64, while mixup
# pairs images across each process's whole batch (all 256 on one GPU, as the original)
# (docs/recipes.md#which-recipes-reproduce-the-per-gpu-statistics).
# Hyperparameters: 180 epochs, SGD momentum .9 lr .1, wd 5e-4 on backbone and classifier,
# LR lr/2 (1 + cos(pi e / E)) per epoch (--schedule cosine_plain), mixup alpha 0.2 (lambda ~ Beta per batch, a random partner;
# loss lam CE(y) + (1 - lam) CE(y_perm)), aug --aug regular.
#
# Data: DATA_ROOT holds ImageNet_LT_{train,val,test}.txt; best.pth is selected on ImageNet_LT_val, metrics.json reports ImageNet_LT_test.
# Launcher (sh/launch.sh): NGPUS (default: all visible GPUs), NNODES, NODE_RANK, MASTER_ADDR,
# MASTER_PORT; DRY_RUN=1 (a quick check; synthetic data when DATA_ROOT is absent);
# EXTRA_ARGS="--flag value" (appended last: overrides any flag here). Relative paths are
# relative to the repository root. Under SLURM: bash sh/slurm.sh <this recipe> [sbatch args].
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
. "$ROOT/sh/lib/usage.bash" "$@"   # --help: print the header above
DATA_ROOT="${DATA_ROOT:-data/imagenet}"
TRAIN_LIST="${TRAIN_LIST:-$DATA_ROOT/ImageNet_LT_train.txt}"
VAL_LIST="${VAL_LIST:-$DATA_ROOT/ImageNet_LT_val.txt}"
TEST_LIST="${TEST_LIST:-$DATA_ROOT/ImageNet_LT_test.txt}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/MiSLAS/ImageNetLT_stage1}"
exec bash "$ROOT/sh/launch.sh" tools/train.py \
    --method mislas --arch resnet50 --mixup-alpha 0.2 --bn-device-batch 64 \
    --dataset split --data-root "$DATA_ROOT" --train-list "$TRAIN_LIST" --val-list "$VAL_LIST" --test-list "$TEST_LIST" --num-classes 1000 --image-size 224 --norm imagenet \
    --epochs 180 --batch-size 256 --lr 0.1 --wd 5e-4 --schedule cosine_plain \
    --aug regular \
    --workers "${WORKERS:-8}" --seed "${SEED:-0}" --output-dir "$OUTPUT_DIR" --resume auto
