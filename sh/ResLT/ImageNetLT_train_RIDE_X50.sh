#!/usr/bin/env bash
# RIDE-ResLT, ImageNet-LT, RIDE ResNeXt-50 (3 experts, reduced widths): train.
#
# Paper row: RIDEResNeXt-ResLT (3 experts) ImageNet-LT: 57.6 top-1 (ResLT README, ImageNet-LT table;
# RIDEResNeXt without ResLT: 55.1). Score it with sh/ResLT/ImageNetLT_eval_RIDE_X50.sh.
# Original: jiequancui/ResLT ImageNetLT/sh/X50_bt128_reslt_ride.sh (ImageNetTrain_reslt_ride.py,
# networks/RIDEResNeXt.py ResNeXt50Model); total batch 128.
# Network: shared stem + layer1 + layer2 of a ResNeXt-50 32x4d, then 3 experts, each with its own
# layer3 / layer4 at 3/4 width (planes 192 / 384, 1536-d), its own ResLT head (1x1 conv 1536 -> 3 x 1536
# + BN + ReLU) and its own classifier: 64.15 M parameters. No router, no distillation, no RIDE loss.
# GPUs: the original ran 4 GPUs x 32 images (SBATCH --gres=gpu:4, nn.DataParallel: BatchNorm per GPU).
# --batch-size is the global batch (lr not rescaled); --device-batch 32 normalises BatchNorm over groups
# of 32 images on any GPU count whose processes hold a multiple of 32 (this method has no contrast set
# and no mixup, so it groups BatchNorm only, as DataParallel did; the loss sees the whole batch)
# (docs/recipes.md#same-statistics-on-any-gpu-count).
# Hyperparameters (docs/method.md#ride-reslt): 180 epochs, SGD momentum .9 (no Nesterov) lr .05
# (5 warmup epochs + the off-by-one cosine = --schedule cosine --warmup-epochs 5), wd 5e-4 on every
# parameter, beta .99, the 3 experts' ResLT losses summed, branches M = 825 and T = 220 rarest classes
# (from the training counts), 1e-7 inside the fused log, aug RRC + flip + ColorJitter(.4,.4,.4,0)
# (--aug regular). Training pools after each head; evaluation pools before it (the original's
# mismatch, --reslt-original-eval-pooling) and scores with the gamma-normalised classifier
# (gamma 0.7, no bias), averaging all 3 experts.
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
OUTPUT_DIR="${OUTPUT_DIR:-runs/ResLT/ImageNetLT_train_RIDE_X50}"
exec bash "$ROOT/sh/launch.sh" tools/train.py \
    --method ride_reslt --arch resnext50_32x4d --ride-experts 3 --ride-expert-planes 192 384 \
    --dataset split --data-root "$DATA_ROOT" --train-list "$TRAIN_LIST" --val-list "$VAL_LIST" --test-list "$TEST_LIST" \
    --num-classes 1000 --image-size 224 --norm imagenet \
    --epochs 180 --batch-size 128 --device-batch 32 --lr 0.05 --momentum 0.9 --wd 5e-4 --schedule cosine --warmup-epochs 5 \
    --reslt-beta 0.99 --reslt-gamma 0.7 --reslt-branch-sizes 825 220 --reslt-pool after --reslt-original-eval-pooling \
    --reslt-fused-eps 1e-7 --aug regular \
    --workers "${WORKERS:-8}" --seed "${SEED:-0}" --output-dir "$OUTPUT_DIR" --resume auto
