#!/usr/bin/env bash
# ResCom, ImageNet-LT, ResNet-50: train.
#
# Paper row: ResCom ImageNet-LT, ResNet-50: 58.7 top-1 (ResCom README).
# No config of the original exists for this dataset. Sources: the code's defaults (ResCom/logger.py):
# lr 0.02, wd 5e-4 on all parameters, SGD momentum .9, warmup 10 epochs, 400 epochs, T 0.1, con_weight 1,
# effective-number beta 0 (no class weights); its large-dataset schedule (main_rescom.py): warmup, then a
# cosine to lr x 1e-5 (--schedule cosine_min); its large-dataset augmentation of both views: RRC 224
# (0.08-1) + flip + ColorJitter(.4,.4,.4,0) + grayscale .2 + RandAugment n2 m10 (--aug randclsgray_randclsgray).
# Ours (not published): global batch 128 (the defaults' batch 32 = PaCo's ImageNet-LT per-GPU batch on its
# 4 GPUs, whose lr/wd/epochs these defaults equal); dim_con 128 (PaCo's); K 10, P 1, N 400 (the CIFAR config's).
# GPUs: the original ran 8 GPUs x 16 images (ResCom README: 8 GPUs, DDP; 16 = our global batch 128 / 8).
# --batch-size is the global batch (lr not rescaled); --device-batch 16 computes BatchNorm (over both
# views of a device's 16 samples) and the in-batch contrast set over groups of 16 samples, as each
# GPU did, on any GPU count whose processes hold a multiple of 16
# (docs/recipes.md#same-statistics-on-any-gpu-count).
#
# Data: DATA_ROOT holds the images and the split lists ImageNet_LT_{train,val,test}.txt ('relative/path label').
# best.pth is selected on ImageNet_LT_val; metrics.json reports ImageNet_LT_test.
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
OUTPUT_DIR="${OUTPUT_DIR:-runs/ResCom/ImageNetLT_train_R50}"
exec bash "$ROOT/sh/launch.sh" tools/train.py \
    --method rescom --arch resnet50 \
    --dataset split --data-root "$DATA_ROOT" --train-list "$TRAIN_LIST" --val-list "$VAL_LIST" --test-list "$TEST_LIST" \
    --num-classes 1000 --image-size 224 --norm imagenet \
    --epochs 400 --batch-size 128 --device-batch 16 --lr 0.02 --momentum 0.9 --wd 5e-4 \
    --schedule cosine_min --warmup-epochs 10 \
    --proj-dim 128 --temperature 0.1 --rescom-con-weight 1.0 --rescom-queue-per-class 10 --rescom-positives 1 \
    --rescom-negatives 400 --rescom-beta 0 \
    --aug randclsgray_randclsgray --randaug-n 2 --randaug-m 10 \
    --workers "${WORKERS:-8}" --seed "${SEED:-0}" --output-dir "$OUTPUT_DIR" --resume auto
