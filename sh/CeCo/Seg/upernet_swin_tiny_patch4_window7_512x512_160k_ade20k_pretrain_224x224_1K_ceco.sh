#!/usr/bin/env bash
# CeCo (ETF), ADE20K, UPerNet + Swin-T w7 (IN-1k 224 pretrain): train.
#
# Paper: no number: neither original repository publishes CeCo results, and this recipe's header quotes none from the paper (docs/recipes.md#imbalanced-segmentation-ceco-and-rr).
# Original: GPaCo/Seg/configs/ceco_ade20k/upernet_swin_tiny_patch4_window7_512x512_160k_ade20k_pretrain_224x224_1K_ceco.py
# The original config has samples_per_gpu 4 and no launch script (its comment says 8 GPUs x 2
# images); --batch-size 16 is the GLOBAL batch here (4 GPUs x 4 or 8 x 2: the same run on any
# GPU count; lr is not rescaled). SyncBatchNorm under torchrun on CUDA, except the frozen CeCo
# branch's BatchNorm, which stays per-process as in the original.
# Hyperparameters (docs/method.md#hyperparameters): 160000 iterations;
# AdamW lr 6e-5, betas (0.9, 0.999), wd 0.01 (none on norms, relative position tables
# and absolute position embeddings), poly power 1.0 to 0, linear warmup 1500 iterations from 1e-6.
# Pixel CE (weight 1) + aux FCN CE (weight 0.4) + CeCo (ETF variant, UPerHead_ceco): weight 0.8, scale 5,
# smooth 1.0 (no smoothing), a frozen 512->128 reduce conv + BN, 128->512 gain, simplex-ETF classifier
# drawn once from --etf-seed and saved in the checkpoint; logit-adjusted by the image-level prior.
# Pipeline: random rescale 0.5-2.0 of (2048, 512), random crop 512x512 (cat_max_ratio 0.75),
# flip, photometric distortion, normalise, pad with ignore 255. Checkpoint + val mIoU every
# 4000 iterations (best.pth, as the original's evaluation interval); metrics.json reports the
# final model on val (whole image, single scale). tools/eval_seg.py --mode both adds multi-scale.
#
# Data: DATA_ROOT is ADEChallengeData2016 (images/{training,validation}, annotations/...; 150
# classes, label 0 = other -> ignored).
# Class prior: CLASS_COUNTS is a file of image-level class counts (one integer per line, line c =
# training images containing class c), e.g. written once by
#   python tools/class_counts_seg.py --dataset ade20k --data-root DATA_ROOT --out stats/ade20k_image_label_stats.txt
# CLASS_COUNTS= (empty, the default) counts them from the training masks at start (a minute or
# two) and writes OUTPUT_DIR/class_counts.txt.
# Weights: PRETRAINED is a local encoder file with timm key names, e.g. model.safetensors of the
# Hugging Face repo timm/swin_tiny_patch4_window7_224.ms_in1k; nothing is downloaded. The paper's numbers need
# it. PRETRAINED= (empty) trains from random initialisation.
# Launcher (sh/launch.sh): NGPUS (default: all visible GPUs), NNODES, NODE_RANK, MASTER_ADDR,
# MASTER_PORT; DRY_RUN=1 (a quick check: synthetic data when DATA_ROOT is absent, 64 px crops,
# batch 2, two iterations, nothing written); EXTRA_ARGS="--flag value" (appended last: overrides
# any flag here). Relative paths are relative to the repository root. Under SLURM:
# bash sh/slurm.sh <this recipe> [sbatch args].
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
DATA_ROOT="${DATA_ROOT:-data/ade/ADEChallengeData2016}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/CeCo/Seg/upernet_swin_tiny_patch4_window7_512x512_160k_ade20k_pretrain_224x224_1K_ceco}"
PRETRAINED="${PRETRAINED-pretrained/swin_tiny_patch4_window7_224.ms_in1k.safetensors}"
CLASS_COUNTS="${CLASS_COUNTS:-}"
PRETRAINED_ARGS=()
[ -n "$PRETRAINED" ] && PRETRAINED_ARGS=(--pretrained "$PRETRAINED")
COUNTS_ARGS=()
[ -n "$CLASS_COUNTS" ] && COUNTS_ARGS=(--class-counts "$CLASS_COUNTS")
exec bash "$ROOT/sh/launch.sh" tools/train_seg.py \
    --dataset ade20k --data-root "$DATA_ROOT" --img-scale 2048 512 --crop-size 512 512 \
    --ratio-range 0.5 2.0 --cat-max-ratio 0.75 \
    --arch swin_t --method ceco --ceco-weight 0.8 --ceco-scale 5.0 --ceco-smooth 1.0 --etf-seed 0 --aux-weight 0.4 "${PRETRAINED_ARGS[@]+"${PRETRAINED_ARGS[@]}"}" "${COUNTS_ARGS[@]+"${COUNTS_ARGS[@]}"}" \
    --iters 160000 --batch-size 16 --optimizer adamw --lr 6e-5 --wd 0.01 --betas 0.9 0.999 --power 1.0 --min-lr 0 --warmup-iters 1500 --warmup-ratio 1e-6 \
    --eval-interval 4000 --ckpt-interval 4000 \
    --workers "${WORKERS:-4}" --seed "${SEED:-0}" --output-dir "$OUTPUT_DIR" --resume auto
