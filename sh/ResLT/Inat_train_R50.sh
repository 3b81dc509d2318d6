#!/usr/bin/env bash
# ResLT, iNaturalist 2018, ResNet-50: train.
#
# Paper row: plain ResLT iNaturalist 2018 ResNet-50: no number in the README (a link only;
# the README's 72.9 is the RIDE variant, not implemented here).
# Original: jiequancui/ResLT Inat/sh/R50.sh (iNaturalTrain_reslt.py); 4 GPUs under DataParallel,
# total batch 256.
# GPUs: the original ran 4 GPUs x 64 images (DataParallel: BatchNorm per GPU). --batch-size is the
# global batch (lr not rescaled); --bn-device-batch 64 computes BatchNorm over groups of 64 images
# as its GPUs did, on any GPU count whose processes hold a multiple of 64; the loss sees the whole
# batch, as DataParallel's.
# Hyperparameters: 200 epochs, SGD momentum .9 lr .1 with lr/2 (1 + cos(pi e / E)) per epoch
# (--schedule cosine_plain), wd 1e-4, beta .85, gamma .3 in the validation that selects best.pth
# (the original's eval script scores with gamma 0.0, as sh/ResLT/Inat_eval_R50.sh does), two
# branches (H and the 6600 rarest classes; the head conv initialised as the original's
# three-slice block, whose T slice iNaturalist leaves unused), plain CE for the fused term, aug
# RRC + flip (--aug crop_flip).
#
# Data: DATA_ROOT holds iNaturalist18_{train,val}.txt; best.pth and metrics.json both use the
# val list (iNaturalist has no separate test labels).
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
OUTPUT_DIR="${OUTPUT_DIR:-runs/ResLT/Inat_train_R50}"
exec bash "$ROOT/sh/launch.sh" tools/train.py \
    --method reslt --arch resnet50 \
    --dataset split --data-root "$DATA_ROOT" --train-list "$TRAIN_LIST" --val-list "$VAL_LIST" --test-list "$VAL_LIST" \
    --num-classes 8142 --image-size 224 --norm inat \
    --epochs 200 --batch-size 256 --bn-device-batch 64 --lr 0.1 --wd 1e-4 --schedule cosine_plain \
    --reslt-beta 0.85 --reslt-gamma 0.3 --reslt-branch-sizes 6600 --reslt-head conv --reslt-pool after \
    --aug crop_flip \
    --workers "${WORKERS:-8}" --seed "${SEED:-0}" --output-dir "$OUTPUT_DIR" --resume auto
