#!/usr/bin/env bash
# MiSLAS stage 2, CIFAR-10-LT (imb 0.02), ResNet-32: label-aware smoothing, LWS, BN shift.
#
# Paper row: MiSLAS (CVPR 2021) CIFAR-10-LT (imb 0.02) ResNet-32: stage 1 78.1 -> stage 2 85.7 top-1 (ECE 2.01) (MiSLAS README).
# This is stage 2 (85.7, ECE 2.01): it loads STAGE1 (default: the best.pth of
# sh/MiSLAS/CIFAR10LT_imb0.02_stage1.sh; a dry run without it uses random weights).
# Original: dvlab-research/MiSLAS train_stage2.py with config/cifar10/cifar10_imb002_stage2_mislas.yaml, the source of every
# hyperparameter below (batch 128 included).
# GPUs: one in the original (MiSLAS README: stage 2 on 1 GPU, 128 images). --batch-size is the
# GLOBAL batch (lr not rescaled); run it on one GPU (NGPUS=1): with --shift-bn each process
# re-estimates BatchNorm over its own share of the batch (the original: all 128 images).
# Hyperparameters: 10 epochs, SGD momentum .9 lr .1 with lr/2 (1 + cos(pi e / E)) (--schedule
# cosine_plain), the classifier at 0.2 x that LR (--lr-factor), the LWS scale at the LR, wd 2e-4 (the config's; the README recommends 5e-4 on CIFAR-LT),
# label-aware smoothing head 0.2 / tail 0 (concave), BN shift off, class-aware
# batches (4 images per class in a row), no mixup. Stage 2 starts its own best.pth (the original
# inherited stage 1's best accuracy and could skip writing model_best).
#
# Data: DATA_ROOT holds cifar-10-python; selection and report are both the CIFAR test set (no selection split), as in the original.
# Launcher (sh/launch.sh): NGPUS (default: all visible GPUs), NNODES, NODE_RANK, MASTER_ADDR,
# MASTER_PORT; DRY_RUN=1 (a quick check; synthetic data when DATA_ROOT is absent);
# EXTRA_ARGS="--flag value" (appended last: overrides any flag here). Relative paths are
# relative to the repository root. Under SLURM: bash sh/slurm.sh <this recipe> [sbatch args].
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
. "$ROOT/sh/lib/usage.bash" "$@"   # --help: print the header above
DATA_ROOT="${DATA_ROOT:-data/cifar}"
STAGE1="${STAGE1:-runs/MiSLAS/CIFAR10LT_imb0.02_stage1/best.pth}"  # the run folder of sh/MiSLAS/CIFAR10LT_imb0.02_stage1.sh
OUTPUT_DIR="${OUTPUT_DIR:-runs/MiSLAS/CIFAR10LT_imb0.02_stage2}"
exec bash "$ROOT/sh/launch.sh" tools/train.py \
    --method mislas_stage2 --arch resnet32 --stage1 "$STAGE1" --no-shift-bn --lr-factor 0.2 \
    --las-head 0.2 --las-tail 0 --las-shape concave \
    --dataset cifar10 --data-root "$DATA_ROOT" --num-classes 10 --image-size 32 --norm cifar --imb-factor 0.02 \
    --epochs 10 --batch-size 128 --lr 0.1 --wd 2e-4 --schedule cosine_plain \
    --aug cifar_crop_flip \
    --workers "${WORKERS:-4}" --seed "${SEED:-0}" --output-dir "$OUTPUT_DIR" --resume auto
