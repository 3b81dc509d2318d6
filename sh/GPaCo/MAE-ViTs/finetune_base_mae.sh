#!/usr/bin/env bash
# Cross-entropy baseline, full ImageNet-1k, MAE ViT-B/16: fine-tune.
#
# Paper row: CE ViT-B/16 (MAE fine-tuning): 83.6 top-1.
# Original: GPaCo/MAE-ViTs/sh/finetune_base_mae.sh (MAE main_finetune.py).
# Effective batch 1024 = --batch-size 256 (GLOBAL micro-batch, any GPU count: NGPUS=8 -> 32/GPU,
# as the original's 8 GPUs x 32) x --accum-iter 4; lr = blr x 1024 / 256 = 2e-3.
# GPUs: the original ran 8 GPUs x 32 images. --batch-size is the global batch (lr not rescaled);
# --device-batch 32 computes mixup/cutmix pairing over groups of 32 images on any GPU count
# whose processes hold a multiple of 32 (docs/recipes.md#same-statistics-on-any-gpu-count).
# Hyperparameters (docs/method.md#hyperparameters): 100 epochs, AdamW (no wd on biases/norms/pos+cls tokens), blr 5e-4,
# layer decay 0.65, wd 0.05, per-iteration cosine (5 warmup epochs, min lr 1e-6), drop path 0.1,
# fp16 autocast; timm RandAugment rand-m9-mstd0.5-inc1 (bicubic), mixup 0.8, cutmix 1.0, label
# smoothing 0.1 (soft targets), random erasing 0.25 (pixel, 1 box).
# Starts from the MAE self-supervised pre-training checkpoint PRETRAINED ({'model': ...}, a
# local file: nothing is downloaded; set PRETRAINED= (empty) to start from random weights).
# --finetune drops its head, resamples pos_embed if its grid differs, loads the rest
# non-strictly (prints missing/unexpected keys) and starts the class centers at
# trunc-normal(std 2e-5).
#
# Data: DATA_ROOT is the ImageNet-2012 folder (train/, val/) with the split lists train.txt
# and val.txt ('relative/path label' lines, labels 0..999 in sorted-wnid order); VAL_LIST and
# TEST_LIST are both val.txt (the 50k val set), as MAE evaluates. Evaluation: Resize 256
# (bicubic) > CenterCrop 224.
# Launcher (sh/launch.sh): NGPUS (default: all visible GPUs), NNODES, NODE_RANK, MASTER_ADDR,
# MASTER_PORT; DRY_RUN=1 (a quick check; synthetic data when DATA_ROOT is absent);
# EXTRA_ARGS="--flag value" (appended last: overrides any flag here). Relative paths are
# relative to the repository root. Under SLURM: bash sh/slurm.sh <this recipe> [sbatch args].
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
. "$ROOT/sh/lib/usage.bash" "$@"   # --help: print the header above
DATA_ROOT="${DATA_ROOT:-data/imagenet}"
TRAIN_LIST="${TRAIN_LIST:-$DATA_ROOT/train.txt}"
VAL_LIST="${VAL_LIST:-$DATA_ROOT/val.txt}"
TEST_LIST="${TEST_LIST:-$DATA_ROOT/val.txt}"
PRETRAINED="${PRETRAINED-pretrained/mae_pretrain_vit_base.pth}"  # MAE pre-training checkpoint
OUTPUT_DIR="${OUTPUT_DIR:-runs/GPaCo/MAE-ViTs/finetune_base_mae}"
exec bash "$ROOT/sh/launch.sh" tools/train.py \
    --arch mae_vit_base_patch16 \
    --dataset split --data-root "$DATA_ROOT" --train-list "$TRAIN_LIST" --val-list "$VAL_LIST" --test-list "$TEST_LIST" \
    --num-classes 1000 --image-size 224 --resize-size 256 --interpolation bicubic --norm imagenet \
    --method ce --label-smoothing 0.1 --mixup 0.8 --cutmix 1.0 --reprob 0.25 --remode pixel --recount 1 \
    --aug timm_randaug --randaug-n 2 --randaug-m 9 \
    --epochs 100 --batch-size 256 --device-batch 32 --accum-iter 4 --optimizer adamw --blr 5e-4 --layer-decay 0.65 --wd 0.05 \
    --schedule mae_cosine --warmup-epochs 5 --min-lr 1e-6 --drop-path 0.1 \
    --amp fp16 ${PRETRAINED:+--finetune "$PRETRAINED"} \
    --workers "${WORKERS:-8}" --seed "${SEED:-0}" --output-dir "$OUTPUT_DIR" --resume auto
