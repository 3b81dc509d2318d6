#!/usr/bin/env bash
# GPaCo, CIFAR-100-LT (imbalance ratio 100), ResNet-32: train.
#
# Paper row: GPaCo CIFAR-100-LT ratio 100, ResNet-32 (GPaCo paper table; not in the README).
# Original: GPaCo/LT/sh/LT/CIFAR100_train_imb0.01.sh (paco_cifar.py), 1 GPU: ResNet-32 (feature 64),
# 400 epochs, batch 128 (the driver's default), SGD lr 0.1, wd 5e-4, alpha 0.01, beta = gamma = 1,
# T 0.05, K 1024, dim 32, --aug cifar100 (with imb != 1 the driver's views are AutoAugment+Cutout /
# SimCLR-CIFAR with blur p 0.2: our regular_aug_cifar), log-prior on, the CIFAR step schedule
# (warmup over epochs 0..10, x0.1 after 320 and 360), 32x32 images.
# GPUs: the original ran 1 GPU x 128 images. --batch-size is the global batch (lr not rescaled);
# --device-batch 128 computes BatchNorm and the in-batch contrast set over groups of 128 images
# on any GPU count whose processes hold a multiple of 128
# (docs/recipes.md#same-statistics-on-any-gpu-count).
#
# Data: DATA_ROOT holds cifar-100-python/{train,test,meta} (what torchvision's CIFAR100
# download leaves; nothing is downloaded). The long-tailed subset is the original's
# (seed 0); validation and the report are both the full CIFAR-100 test set, as in the
# original (there is no selection split).
# Launcher (sh/launch.sh): NGPUS (default: all visible GPUs), NNODES, NODE_RANK, MASTER_ADDR,
# MASTER_PORT; DRY_RUN=1 (a quick check; synthetic data when DATA_ROOT is absent);
# EXTRA_ARGS="--flag value" (appended last: overrides any flag here). Relative paths are
# relative to the repository root. Under SLURM: bash sh/slurm.sh <this recipe> [sbatch args].
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
. "$ROOT/sh/lib/usage.bash" "$@"   # --help: print the header above
DATA_ROOT="${DATA_ROOT:-data/cifar}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/GPaCo/LT/CIFAR100LT_train_imb0.01}"
exec bash "$ROOT/sh/launch.sh" tools/train.py \
    --method gpaco --arch resnet32 \
    --dataset cifar100 --data-root "$DATA_ROOT" --num-classes 100 --image-size 32 --norm cifar \
    --epochs 400 --batch-size 128 --device-batch 128 --lr 0.1 --wd 5e-4 --schedule step_cifar --warmup-epochs 10 \
    --alpha 0.01 --beta 1.0 --gamma 1.0 --temperature 0.05 --queue-size 1024 --proj-dim 32 --prior --smoothing 0.0 \
    --aug regular_aug_cifar \
    --imb-factor 0.01 \
    --workers "${WORKERS:-4}" --seed "${SEED:-0}" --output-dir "$OUTPUT_DIR" --resume auto
