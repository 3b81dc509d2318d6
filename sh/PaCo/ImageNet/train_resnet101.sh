#!/usr/bin/env bash
# PaCo, full ImageNet-1k, ResNet-101: train.
#
# Paper row: PaCo full ImageNet, ResNet-101: 80.9 top-1 (README table).
# Original: PaCo/Full-ImageNet/sh/train_resnet101.sh (paco_imagenet.py); 4 GPUs, total batch 256.
# GPUs: the original ran 4 GPUs x 64 images. --batch-size is the global batch (lr not rescaled);
# --device-batch 64 computes BatchNorm, shuffle-BN and the in-batch contrast set over groups of
# 64 images on any GPU count whose processes hold a multiple of 64
# (docs/recipes.md#same-statistics-on-any-gpu-count).
# Hyperparameters (docs/method.md#hyperparameters): 400 epochs, SGD lr 0.04 (10 warmup + cosine), wd 1e-4,
# alpha 0.05, beta = gamma = 1, T 0.2, K 8192, dim 128, m 0.999, NO prior (balanced data),
# aug randcls_sim (RandAugment n 2, m 10).
#
# Data: DATA_ROOT is the ImageNet-2012 folder (train/, val/) with the split lists train.txt
# and val.txt ('relative/path label' lines, labels 0..999 in sorted-wnid order). There is
# no held-out selection split: VAL_LIST and TEST_LIST are both val.txt (the 50k val set),
# as in the original.
# Launcher (sh/launch.sh): NGPUS (default: all visible GPUs), NNODES, NODE_RANK, MASTER_ADDR,
# MASTER_PORT; DRY_RUN=1 (a quick check; synthetic data when DATA_ROOT is absent);
# EXTRA_ARGS="--flag value" (appended last: overrides any flag here). Relative paths are
# relative to the repository root. Under SLURM: bash sh/slurm.sh <this recipe> [sbatch args].
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
. "$ROOT/sh/lib/usage.bash" "$@"   # --help: print the header above
DATA_ROOT="${DATA_ROOT:-data/imagenet}"
TRAIN_LIST="${TRAIN_LIST:-$DATA_ROOT/train.txt}"
VAL_LIST="${VAL_LIST:-$DATA_ROOT/val.txt}"
TEST_LIST="${TEST_LIST:-$DATA_ROOT/val.txt}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/PaCo/ImageNet/train_resnet101}"
exec bash "$ROOT/sh/launch.sh" tools/train.py \
    --method paco --arch resnet101 \
    --dataset split --data-root "$DATA_ROOT" --train-list "$TRAIN_LIST" --val-list "$VAL_LIST" --test-list "$TEST_LIST" \
    --num-classes 1000 --image-size 224 --norm imagenet \
    --epochs 400 --batch-size 256 --device-batch 64 --lr 0.04 --wd 1e-4 --schedule cosine --warmup-epochs 10 \
    --alpha 0.05 --beta 1.0 --gamma 1.0 --temperature 0.2 --queue-size 8192 --proj-dim 128 --momentum-encoder 0.999 --no-prior \
    --aug randcls_sim --randaug-n 2 --randaug-m 10 \
    --workers "${WORKERS:-8}" --seed "${SEED:-0}" --output-dir "$OUTPUT_DIR" --resume auto
