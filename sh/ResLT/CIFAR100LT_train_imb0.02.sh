#!/usr/bin/env bash
# ResLT, CIFAR-100-LT (imbalance factor 0.02), ResNet-32: train.
#
# Paper row: ResLT CIFAR-100-LT imb 0.02: no number in the README.
# Original: jiequancui/ResLT CIFAR/sh/CIFAR100 script for imb 0.02 (cifarTrain_reslt_cifar100.py);
# batch 128 on one GPU (its SBATCH line: --gres=gpu:1): run it on one GPU (NGPUS=1).
# Hyperparameters: 200 epochs, SGD Nesterov momentum .9 (--nesterov) lr .1,
# wd 5e-4, warmup from lr/3 over 5 epochs then lr, x0.1 from epoch 160, x0.01 from 180
# (--schedule step --warmup-start 0.3333333333333333), beta 0.99, no gamma (evaluation = the plain sum
# of the branch logits), three BatchNorm copies of the last map as branches (--reslt-head bn),
# M / T = the 65 / 30 rarest classes (= the original's classes 35-99 / 70-99), aug crop 32 pad 4 + flip
# (--aug cifar_crop_flip).
#
# Data: DATA_ROOT holds cifar-100-python (nothing is downloaded). Selection and report are both
# the CIFAR-100 test set, as in the original (there is no selection split).
# Launcher (sh/launch.sh): NGPUS (default: all visible GPUs), NNODES, NODE_RANK, MASTER_ADDR,
# MASTER_PORT; DRY_RUN=1 (a quick check; synthetic data when DATA_ROOT is absent);
# EXTRA_ARGS="--flag value" (appended last: overrides any flag here). Relative paths are
# relative to the repository root. Under SLURM: bash sh/slurm.sh <this recipe> [sbatch args].
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
. "$ROOT/sh/lib/usage.bash" "$@"   # --help: print the header above
DATA_ROOT="${DATA_ROOT:-data/cifar}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/ResLT/CIFAR100LT_train_imb0.02}"
exec bash "$ROOT/sh/launch.sh" tools/train.py \
    --method reslt --arch resnet32 \
    --dataset cifar100 --data-root "$DATA_ROOT" --num-classes 100 --image-size 32 --norm cifar --imb-factor 0.02 \
    --epochs 200 --batch-size 128 --lr 0.1 --nesterov --wd 5e-4 --schedule step --warmup-epochs 5 --warmup-start 0.3333333333333333 \
    --milestones 160 180 \
    --reslt-beta 0.99 --reslt-branch-sizes 65 30 --reslt-head bn --reslt-pool after \
    --aug cifar_crop_flip \
    --workers "${WORKERS:-4}" --seed "${SEED:-0}" --output-dir "$OUTPUT_DIR" --resume auto
