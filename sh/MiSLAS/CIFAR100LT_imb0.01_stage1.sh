#!/usr/bin/env bash
# MiSLAS stage 1, CIFAR-100-LT (imb 0.01), ResNet-32: train with mixup.
#
# Paper row: MiSLAS (CVPR 2021) CIFAR-100-LT (imb 0.01) ResNet-32: stage 1 39.5 -> stage 2 47.0 top-1 (ECE 4.83) (MiSLAS README).
# This is stage 1 (39.5); sh/MiSLAS/CIFAR100LT_imb0.01_stage2.sh loads its best.pth.
# Original: dvlab-research/MiSLAS train_stage1.py with config/cifar100/cifar100_imb001_stage1_mixup.yaml, the source of every
# hyperparameter below (batch 128 included).
# GPUs: one in the original (MiSLAS README: CIFAR on 1 GPU, 128 images). --batch-size is the
# GLOBAL batch (lr not rescaled); run it on one GPU (NGPUS=1) for BatchNorm over all 128 images.
# Hyperparameters: 200 epochs, SGD momentum .9 lr .1, wd 2e-4 (the config's; the README recommends 5e-4 on CIFAR-LT) on backbone and classifier,
# LR lr*(e+1)/5 for the first 5 epochs, x0.1 from epoch 160, x0.01 from 180 (--schedule step), mixup alpha 1.0 (lambda ~ Beta per batch, a random partner;
# loss lam CE(y) + (1 - lam) CE(y_perm)), aug --aug cifar_crop_flip.
#
# Data: DATA_ROOT holds cifar-100-python; selection and report are both the CIFAR test set (no selection split), as in the original.
# Launcher (sh/launch.sh): NGPUS (default: all visible GPUs), NNODES, NODE_RANK, MASTER_ADDR,
# MASTER_PORT; DRY_RUN=1 (a quick check; synthetic data when DATA_ROOT is absent);
# EXTRA_ARGS="--flag value" (appended last: overrides any flag here). Relative paths are
# relative to the repository root. Under SLURM: bash sh/slurm.sh <this recipe> [sbatch args].
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
. "$ROOT/sh/lib/usage.bash" "$@"   # --help: print the header above
DATA_ROOT="${DATA_ROOT:-data/cifar}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/MiSLAS/CIFAR100LT_imb0.01_stage1}"
exec bash "$ROOT/sh/launch.sh" tools/train.py \
    --method mislas --arch resnet32 --mixup-alpha 1.0  \
    --dataset cifar100 --data-root "$DATA_ROOT" --num-classes 100 --image-size 32 --norm cifar --imb-factor 0.01 \
    --epochs 200 --batch-size 128 --lr 0.1 --wd 2e-4 --schedule step --warmup-epochs 5 --milestones 160 180 \
    --aug cifar_crop_flip \
    --workers "${WORKERS:-4}" --seed "${SEED:-0}" --output-dir "$OUTPUT_DIR" --resume auto
