#!/usr/bin/env bash
# GPaCo, ImageNet-LT, ResNeXt-50 32x4d: train.
#
# Paper row: GPaCo (TPAMI 2023) ImageNet-LT, ResNeXt-50 32x4d: 58.9 top-1 (README table).
# Original: GPaCo/LT/sh/LT/ImageNetLT_train_X50.sh (paco_lt.py); total batch 128.
# GPUs: the original ran 4 GPUs x 32 images. --batch-size is the global batch (lr not rescaled);
# --device-batch 32 computes BatchNorm and the in-batch contrast set over groups of 32 images on
# any GPU count whose processes hold a multiple of 32
# (docs/recipes.md#same-statistics-on-any-gpu-count).
# Hyperparameters (docs/method.md#hyperparameters): 400 epochs, SGD lr 0.06 (10 warmup + cosine), wd 5e-4,
# alpha 0.05, beta = gamma = 1, T 0.2, K 8192, dim 128, log-prior on, no center smoothing,
# aug randcls_randclsstack (RandAugment n 3, m 10).
#
# Data: DATA_ROOT is the ImageNet-2012 folder (train/, val/) holding the ImageNet-LT split
# lists ImageNet_LT_{train,val,test}.txt ('relative/path label' lines). best.pth is
# selected on ImageNet_LT_val (20k images from the train folder); metrics.json reports
# ImageNet_LT_test (50k = the ImageNet val set), the split of the paper's number (the
# original also selected its checkpoint on it).
# Launcher (sh/launch.sh): NGPUS (default: all visible GPUs), NNODES, NODE_RANK, MASTER_ADDR,
# MASTER_PORT; DRY_RUN=1 (a quick check; synthetic data when DATA_ROOT is absent);
# EXTRA_ARGS="--flag value" (appended last: overrides any flag here). Relative paths are
# relative to the repository root. Under SLURM: bash sh/slurm.sh <this recipe> [sbatch args].
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
. "$ROOT/sh/lib/usage.bash" "$@"   # --help: print the header above
DATA_ROOT="${DATA_ROOT:-data/imagenet}"
TRAIN_LIST="${TRAIN_LIST:-$DATA_ROOT/ImageNet_LT_train.txt}"
VAL_LIST="${VAL_LIST:-$DATA_ROOT/ImageNet_LT_val.txt}"
TEST_LIST="${TEST_LIST:-$DATA_ROOT/ImageNet_LT_test.txt}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/GPaCo/LT/ImageNetLT_train_X50}"
exec bash "$ROOT/sh/launch.sh" tools/train.py \
    --method gpaco --arch resnext50_32x4d \
    --dataset split --data-root "$DATA_ROOT" --train-list "$TRAIN_LIST" --val-list "$VAL_LIST" --test-list "$TEST_LIST" \
    --num-classes 1000 --image-size 224 --norm imagenet \
    --epochs 400 --batch-size 128 --device-batch 32 --lr 0.06 --wd 5e-4 --schedule cosine --warmup-epochs 10 \
    --alpha 0.05 --beta 1.0 --gamma 1.0 --temperature 0.2 --queue-size 8192 --proj-dim 128 --prior --smoothing 0.0 \
    --aug randcls_randclsstack --randaug-n 3 --randaug-m 10 \
    --workers "${WORKERS:-8}" --seed "${SEED:-0}" --output-dir "$OUTPUT_DIR" --resume auto
