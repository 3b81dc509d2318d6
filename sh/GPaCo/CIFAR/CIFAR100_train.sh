#!/usr/bin/env bash
# GPaCo, full CIFAR-100, ResNet-50 (CIFAR stem): train.
#
# Paper row: GPaCo CIFAR-100, ResNet-50: 80.3 top-1 (README "CIFAR Classification").
# Original: GPaCo/LT/sh/CIFAR/CIFAR100_train.sh (G paco_cifar.py);
# batch 128.
# GPUs: the original ran 1 GPU x 128 images. --batch-size is the global batch (lr not rescaled);
# --device-batch 128 computes BatchNorm and the in-batch contrast set over groups of 128 images
# on any GPU count whose processes hold a multiple of 128
# (docs/recipes.md#same-statistics-on-any-gpu-count).
# Hyperparameters (docs/method.md#hyperparameters): balanced CIFAR-100 (--imb-factor 1.0), SupCon-style ResNet-50
# (3x3 stem, no max-pool, feature 2048), 400 epochs, SGD lr 0.05 with the CIFAR step
# schedule (warmup over epochs 0..10, x0.1 after 320 and 360), wd 5e-4, alpha 0.01,
# T 0.07, K 1024, dim 128, log-prior on (as the original driver, which computes the
# class weights at imbalance 1.0 too: log(1/100) added to every center logit), aug sim_cifar_sim_cifar (two SimCLR-CIFAR
# views, the driver's choice for imb 1.0).
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
OUTPUT_DIR="${OUTPUT_DIR:-runs/GPaCo/CIFAR/CIFAR100_train}"
exec bash "$ROOT/sh/launch.sh" tools/train.py \
    --method gpaco --arch resnet50_cifar \
    --dataset cifar100 --data-root "$DATA_ROOT" --num-classes 100 --image-size 32 --norm cifar \
    --epochs 400 --batch-size 128 --device-batch 128 --lr 0.05 --wd 5e-4 --schedule step_cifar --warmup-epochs 10 \
    --alpha 0.01 --beta 1.0 --gamma 1.0 --temperature 0.07 --queue-size 1024 --proj-dim 128 --prior --smoothing 0.0 \
    --aug sim_cifar_sim_cifar \
    --imb-factor 1.0 \
    --workers "${WORKERS:-4}" --seed "${SEED:-0}" --output-dir "$OUTPUT_DIR" --resume auto
