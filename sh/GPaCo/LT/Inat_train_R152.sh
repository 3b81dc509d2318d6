#!/usr/bin/env bash
# GPaCo, iNaturalist 2018, ResNet-152: train.
#
# Paper row: GPaCo iNaturalist 2018, ResNet-152: 78.1 top-1 (README table).
# Original: GPaCo/LT/sh/LT/Inat_train_R152.sh (paco_lt.py --dataset inat); total batch 256,
# lr 0.08 (its SBATCH line asks for 8 GPUs; its run name ends in lr0.08_8gpus).
# GPUs: the original ran 8 GPUs x 32 images. --batch-size is the global batch (lr not rescaled);
# --device-batch 32 computes BatchNorm and the in-batch contrast set over groups of 32 images on
# any GPU count whose processes hold a multiple of 32
# (docs/recipes.md#same-statistics-on-any-gpu-count).
# Hyperparameters (docs/method.md#hyperparameters): 400 epochs, SGD lr 0.08 (10 warmup + cosine), wd 1e-4,
# alpha 0.05, beta = gamma = 1, T 0.2, K 8192, dim 128, log-prior on, 8142 classes,
# aug randcls_sim (RandAugment n 2, m 10), iNat normalisation.
#
# Data: DATA_ROOT is the iNaturalist 2018 folder (train_val2018/) holding
# iNaturalist18_{train,val}.txt. iNat18 has no public test labels: VAL_LIST and TEST_LIST
# are BOTH iNaturalist18_val.txt (24,426 images), so the checkpoint is selected on the
# split that is reported, as in the original.
# Launcher (sh/launch.sh): NGPUS (default: all visible GPUs), NNODES, NODE_RANK, MASTER_ADDR,
# MASTER_PORT; DRY_RUN=1 (a quick check; synthetic data when DATA_ROOT is absent);
# EXTRA_ARGS="--flag value" (appended last: overrides any flag here). Relative paths are
# relative to the repository root. Under SLURM: bash sh/slurm.sh <this recipe> [sbatch args].
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
. "$ROOT/sh/lib/usage.bash" "$@"   # --help: print the header above
DATA_ROOT="${DATA_ROOT:-data/inat2018}"
TRAIN_LIST="${TRAIN_LIST:-$DATA_ROOT/iNaturalist18_train.txt}"
VAL_LIST="${VAL_LIST:-$DATA_ROOT/iNaturalist18_val.txt}"
TEST_LIST="${TEST_LIST:-$DATA_ROOT/iNaturalist18_val.txt}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/GPaCo/LT/Inat_train_R152}"
exec bash "$ROOT/sh/launch.sh" tools/train.py \
    --method gpaco --arch resnet152 \
    --dataset split --data-root "$DATA_ROOT" --train-list "$TRAIN_LIST" --val-list "$VAL_LIST" --test-list "$TEST_LIST" \
    --num-classes 8142 --image-size 224 --norm inat \
    --epochs 400 --batch-size 256 --device-batch 32 --lr 0.08 --wd 1e-4 --schedule cosine --warmup-epochs 10 \
    --alpha 0.05 --beta 1.0 --gamma 1.0 --temperature 0.2 --queue-size 8192 --proj-dim 128 --prior --smoothing 0.0 \
    --aug randcls_sim --randaug-n 2 --randaug-m 10 \
    --workers "${WORKERS:-8}" --seed "${SEED:-0}" --output-dir "$OUTPUT_DIR" --resume auto
