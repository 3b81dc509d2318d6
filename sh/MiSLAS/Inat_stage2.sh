#!/usr/bin/env bash
# MiSLAS stage 2, iNaturalist 2018, ResNet-50: label-aware smoothing, LWS, BN shift.
#
# Paper row: MiSLAS (CVPR 2021) iNaturalist 2018 ResNet-50: stage 1 66.9 -> stage 2 71.6 top-1 (ECE 7.67) (MiSLAS README).
# This is stage 2 (71.6, ECE 7.67): it loads STAGE1 (default: the best.pth of
# sh/MiSLAS/Inat_stage1.sh; a dry run without it uses random weights).
# Original: dvlab-research/MiSLAS train_stage2.py with config/ina2018/ina2018_resnet50_stage2_mislas.yaml, the source of every
# hyperparameter below (batch 256 included).
# GPUs: one in the original (MiSLAS README: stage 2 on 1 GPU, 256 images). --batch-size is the
# GLOBAL batch (lr not rescaled); run it on one GPU (NGPUS=1): with --shift-bn each process
# re-estimates BatchNorm over its own share of the batch (the original: all 256 images).
# Hyperparameters: 10 epochs, SGD momentum .9 lr .1 with lr/2 (1 + cos(pi e / E)) (--schedule
# cosine_plain), the classifier at 0.05 x that LR (--lr-factor), the LWS scale at the LR, wd 1e-4,
# label-aware smoothing head 0.3 / tail 0 (concave), BN shift on, class-aware
# batches (4 images per class in a row), no mixup. Stage 2 starts its own best.pth (the original
# inherited stage 1's best accuracy and could skip writing model_best).
#
# Data: DATA_ROOT holds iNaturalist18_{train,val}.txt; selection and report both use the val list.
# Launcher (sh/launch.sh): NGPUS (default: all visible GPUs), NNODES, NODE_RANK, MASTER_ADDR,
# MASTER_PORT; DRY_RUN=1 (a quick check; synthetic data when DATA_ROOT is absent);
# EXTRA_ARGS="--flag value" (appended last: overrides any flag here). Relative paths are
# relative to the repository root. Under SLURM: bash sh/slurm.sh <this recipe> [sbatch args].
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
. "$ROOT/sh/lib/usage.bash" "$@"   # --help: print the header above
DATA_ROOT="${DATA_ROOT:-data/inat2018}"
TRAIN_LIST="${TRAIN_LIST:-$DATA_ROOT/iNaturalist18_train.txt}"
VAL_LIST="${VAL_LIST:-$DATA_ROOT/iNaturalist18_val.txt}"
STAGE1="${STAGE1:-runs/MiSLAS/Inat_stage1/best.pth}"  # the run folder of sh/MiSLAS/Inat_stage1.sh
OUTPUT_DIR="${OUTPUT_DIR:-runs/MiSLAS/Inat_stage2}"
exec bash "$ROOT/sh/launch.sh" tools/train.py \
    --method mislas_stage2 --arch resnet50 --stage1 "$STAGE1" --shift-bn --lr-factor 0.05 \
    --las-head 0.3 --las-tail 0 --las-shape concave \
    --dataset split --data-root "$DATA_ROOT" --train-list "$TRAIN_LIST" --val-list "$VAL_LIST" --test-list "$VAL_LIST" --num-classes 8142 --image-size 224 --norm inat \
    --epochs 10 --batch-size 256 --lr 0.1 --wd 1e-4 --schedule cosine_plain \
    --aug regular \
    --workers "${WORKERS:-8}" --seed "${SEED:-0}" --output-dir "$OUTPUT_DIR" --resume auto
