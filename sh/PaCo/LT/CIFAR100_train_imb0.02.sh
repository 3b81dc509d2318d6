#!/usr/bin/env bash
# PaCo, CIFAR-100-LT (imbalance ratio 50), ResNet-32: train.
#
# Paper row: PaCo (ICCV 2021) Table, CIFAR-100-LT ratio 50, ResNet-32: 56.0 top-1.
# Original: PaCo/LT/sh/CIFAR100_train_imb0.02.sh (paco_cifar.py); 1 GPU, batch 128.
# GPUs: the original ran 1 GPU x 128 images. --batch-size is the global batch (lr not rescaled);
# --device-batch 128 computes BatchNorm, shuffle-BN and the in-batch contrast set over groups of
# 128 images on any GPU count whose processes hold a multiple of 128
# (docs/recipes.md#same-statistics-on-any-gpu-count).
# Hyperparameters (docs/method.md#hyperparameters): 400 epochs, SGD lr 0.05 with the CIFAR step schedule (warmup
# over epochs 0..10, x0.1 after 320 and 360), wd 5e-4, alpha 0.01, beta = gamma = 1,
# T 0.05, K 1024, dim 32 (feature 64), m 0.999, log-prior on, aug cifar100
# (AutoAugment+Cutout / SimCLR-CIFAR views), 32x32 images.
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
OUTPUT_DIR="${OUTPUT_DIR:-runs/PaCo/LT/CIFAR100_train_imb0.02}"
exec bash "$ROOT/sh/launch.sh" tools/train.py \
    --method paco --arch resnet32 \
    --dataset cifar100 --data-root "$DATA_ROOT" --num-classes 100 --image-size 32 --norm cifar \
    --epochs 400 --batch-size 128 --device-batch 128 --lr 0.05 --wd 5e-4 --schedule step_cifar --warmup-epochs 10 \
    --alpha 0.01 --beta 1.0 --gamma 1.0 --temperature 0.05 --queue-size 1024 --proj-dim 32 --momentum-encoder 0.999 --prior \
    --aug cifar100 \
    --imb-factor 0.02 \
    --workers "${WORKERS:-4}" --seed "${SEED:-0}" --output-dir "$OUTPUT_DIR" --resume auto
