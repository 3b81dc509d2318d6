#!/usr/bin/env bash
# ResLT, ImageNet-LT, ResNeXt-101 32x4d: train.
#
# Paper row: ResLT (TPAMI 2022) ImageNet-LT ResNeXt-101 32x4d: no number in the ResLT README (it links the model
# and log only; its ImageNet-LT numbers, 57.6 and 55.1, are the RIDE variant with and without ResLT).
# Original: jiequancui/ResLT ImageNetLT/sh/X101.sh (ImageNetTrain_reslt.py); total batch 128.
# GPU count not stated by the original. --batch-size is the GLOBAL batch: 128 on any
# GPU count; lr is not rescaled.
# Hyperparameters: 180 epochs, SGD momentum .9 lr 0.05 (5 warmup epochs + the off-by-one
# cosine = --schedule cosine --warmup-epochs 5), wd 5e-4 on every parameter, beta .99, eval
# gamma 0.7 (W / ||W||^gamma, no bias), branches M = 825 and T = 220 rarest classes
# (from the training counts), 1e-7 inside the fused log, aug RRC + flip + ColorJitter(.4,.4,.4,0)
# (--aug regular). --after_1x1conv: the head runs on the 7x7 map and its output is pooled, in training AND evaluation here (the original evaluated with the pooling first: --reslt-original-eval-pooling reproduces that).
#
# Data: DATA_ROOT is the ImageNet-2012 folder holding ImageNet_LT_{train,val,test}.txt.
# best.pth is selected on ImageNet_LT_val; metrics.json reports ImageNet_LT_test (the original
# selected its best epoch on the test split).
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
OUTPUT_DIR="${OUTPUT_DIR:-runs/ResLT/ImageNetLT_train_X101}"
exec bash "$ROOT/sh/launch.sh" tools/train.py \
    --method reslt --arch resnext101_32x4d \
    --dataset split --data-root "$DATA_ROOT" --train-list "$TRAIN_LIST" --val-list "$VAL_LIST" --test-list "$TEST_LIST" \
    --num-classes 1000 --image-size 224 --norm imagenet \
    --epochs 180 --batch-size 128 --lr 0.05 --wd 5e-4 --schedule cosine --warmup-epochs 5 \
    --reslt-beta 0.99 --reslt-gamma 0.7 --reslt-branch-sizes 825 220 --reslt-head conv --reslt-pool after \
    --reslt-fused-eps 1e-7 --aug regular \
    --workers "${WORKERS:-8}" --seed "${SEED:-0}" --output-dir "$OUTPUT_DIR" --resume auto
