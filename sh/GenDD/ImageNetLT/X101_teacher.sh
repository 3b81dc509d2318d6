#!/usr/bin/env bash
# Cross-entropy, ImageNet-LT, ResNeXt-101 32x4d: train GenDD's imbalanced-distillation teacher.
#
# Paper row: none in the original README (GenDD's ImageNet-LT results are in the paper's table
# only). Its best.pth is the teacher of sh/GenDD/ImageNetLT/X101_res50.sh and X101_res18.sh.
# Original: jiequancui/Generative-Distribution-Distillation @ 9246d0b,
# GenDD_imagenet/sh_lt/imagenetlt_train_resnext101_sgd.sh (main_lt_sgd.py), the source of every
# hyperparameter below.
# GPUs: the original ran 8 GPUs x 32 images (SBATCH --gres=gpu:8, -b 256, DDP). --batch-size is the
# global batch (lr not rescaled); --device-batch 32 computes BatchNorm over groups of 32 images, as
# its GPUs did, on any GPU count whose processes hold a multiple of 32
# (docs/recipes.md#same-statistics-on-any-gpu-count).
# Hyperparameters: 100 epochs, batch 256, SGD momentum .9 lr .1, wd 5e-4 on all parameters; LR lr e
# / 10 in epochs e < 10 (from 0, so epoch 0 runs at lr 0), then lr/2 (1 + cos(pi (e - 10) / 90))
# down to 0 (--schedule mae_cosine_epoch --warmup-epochs 10 --min-lr 0: MAE's cosine set once per
# epoch at the integer epoch, the driver's rule); loss CE on a linear classifier (--method ce). Aug:
# RandomResizedCrop 224 (scale .08-1) + flip (--aug crop_flip); evaluation Resize 256 + CenterCrop
# 224; ImageNet mean/std.
#
# Data: DATA_ROOT is the ImageNet-2012 folder (train/, val/) holding the ImageNet-LT split lists
# ImageNet_LT_{train,val,test}.txt. The original validates every epoch on the 50k ImageNet_LT_test
# list and keeps the best epoch (model_best), so by default VAL_LIST is the test list too: the
# recipe selects as the published numbers did. VAL_LIST=$DATA_ROOT/ImageNet_LT_val.txt selects on
# the held-out val list instead (docs/migrating.md). metrics.json reports ImageNet_LT_test with many
# / medium / few-shot accuracies (more than 100 / 20-100 / fewer than 20 training images).
# Launcher (sh/launch.sh): NGPUS (default: all visible GPUs), NNODES, NODE_RANK, MASTER_ADDR,
# MASTER_PORT; DRY_RUN=1 (a quick check; synthetic data when DATA_ROOT is absent);
# EXTRA_ARGS="--flag value" (appended last: overrides any flag here). Relative paths are relative to
# the repository root. Under SLURM: bash sh/slurm.sh <this recipe> [sbatch args].
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
. "$ROOT/sh/lib/usage.bash" "$@"   # --help: print the header above
DATA_ROOT="${DATA_ROOT:-data/imagenet}"
TRAIN_LIST="${TRAIN_LIST:-$DATA_ROOT/ImageNet_LT_train.txt}"
VAL_LIST="${VAL_LIST:-$DATA_ROOT/ImageNet_LT_test.txt}"
TEST_LIST="${TEST_LIST:-$DATA_ROOT/ImageNet_LT_test.txt}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/GenDD/ImageNetLT/X101_teacher}"
exec bash "$ROOT/sh/launch.sh" tools/train.py \
    --method ce --arch resnext101_32x4d \
    --dataset split --data-root "$DATA_ROOT" --train-list "$TRAIN_LIST" --val-list "$VAL_LIST" --test-list "$TEST_LIST" \
    --num-classes 1000 --image-size 224 --norm imagenet \
    --epochs 100 --batch-size 256 --device-batch 32 --optimizer sgd --lr 0.1 --momentum 0.9 --wd 5e-4 \
    --schedule mae_cosine_epoch --warmup-epochs 10 --min-lr 0 \
    --aug crop_flip \
    --workers "${WORKERS:-8}" --seed "${SEED:-0}" --output-dir "$OUTPUT_DIR" --resume auto
