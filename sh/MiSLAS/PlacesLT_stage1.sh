#!/usr/bin/env bash
# MiSLAS stage 1, Places-LT, ResNet-152 (ImageNet-pretrained, last block trained): train with mixup.
#
# Paper row: MiSLAS (CVPR 2021) Places-LT ResNet-152 (ImageNet-pretrained, last block trained): stage 1 29.4 -> stage 2 40.4 top-1 (ECE 3.41) (README).
# This is stage 1 (29.4); sh/MiSLAS/PlacesLT_stage2.sh loads its best.pth.
# Original: dvlab-research/MiSLAS train_stage1.py with its Places-LT stage-1 config; batch 256
# on 4 (DataParallel) GPU(s). --batch-size is the GLOBAL batch; lr is not rescaled.
# Hyperparameters: 90 epochs, SGD momentum .9 lr .1, wd 5e-4 on backbone and classifier,
# LR lr/2 (1 + cos(pi e / E)) per epoch (--schedule cosine_plain), mixup alpha 0.2 (lambda ~ Beta per batch, a random partner;
# loss lam CE(y) + (1 - lam) CE(y_perm)), aug --aug regular.
#
# Data: DATA_ROOT holds Places_LT_{train,val,test}.txt; best.pth is selected on val, metrics.json reports test. Stage 1 starts from torchvision's ImageNet ResNet-152 (PRETRAINED) and trains only the last bottleneck and the classifier (--freeze all_but_last_block keeps that block's pretrained weights; the original re-initialises it and keeps the rest in eval mode).
# Launcher (sh/launch.sh): NGPUS (default: all visible GPUs), NNODES, NODE_RANK, MASTER_ADDR,
# MASTER_PORT; DRY_RUN=1 (a quick check; synthetic data when DATA_ROOT is absent);
# EXTRA_ARGS="--flag value" (appended last: overrides any flag here). Relative paths are
# relative to the repository root. Under SLURM: bash sh/slurm.sh <this recipe> [sbatch args].
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DATA_ROOT="${DATA_ROOT:-data/places365}"
TRAIN_LIST="${TRAIN_LIST:-$DATA_ROOT/Places_LT_train.txt}"
VAL_LIST="${VAL_LIST:-$DATA_ROOT/Places_LT_val.txt}"
TEST_LIST="${TEST_LIST:-$DATA_ROOT/Places_LT_test.txt}"
PRETRAINED="${PRETRAINED-pretrained/resnet152-394f9c45.pth}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/MiSLAS/PlacesLT_stage1}"
exec bash "$ROOT/sh/launch.sh" tools/train.py \
    --method mislas --arch resnet152 --mixup-alpha 0.2 ${PRETRAINED:+--pretrained "$PRETRAINED"} --freeze all_but_last_block \
    --dataset split --data-root "$DATA_ROOT" --train-list "$TRAIN_LIST" --val-list "$VAL_LIST" --test-list "$TEST_LIST" --num-classes 365 --image-size 224 --norm imagenet \
    --epochs 90 --batch-size 256 --lr 0.1 --wd 5e-4 --schedule cosine_plain \
    --aug regular \
    --workers "${WORKERS:-8}" --seed "${SEED:-0}" --output-dir "$OUTPUT_DIR" --resume auto
