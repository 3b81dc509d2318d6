#!/usr/bin/env bash
# CeCo (ETF), ADE20K, UPerNet + Swin-T w7 (IN-1k 224 pretrain): train.
#
# Paper: no number: neither original repository publishes CeCo results, and this recipe's header quotes none from the paper (docs/recipes.md#imbalanced-segmentation-ceco-and-rr).
# Original: GPaCo/Seg/configs/ceco_ade20k/upernet_swin_tiny_patch4_window7_512x512_160k_ade20k_pretrain_224x224_1K_ceco.py
# Every number below is that config's (with the mmseg ADE20K and UPerNet-Swin settings it
# inherits) unless marked "ours"; the CeCo branch's sizes are its head's code
# (GPaCo/Seg/mmseg/models/decode_heads/uper_head_ceco.py).
# GPUs: the original ran 4 images per GPU (the config's samples_per_gpu 4). Its GPU count is not
# recorded: there is no CeCo launch script, the config's comment "8 GPUs x 2 images" contradicts
# its samples_per_gpu, and the repository's GPaCo segmentation scripts launch 8 GPUs (8 x 4 would
# be a global batch of 32). Ours: --batch-size 16 is the GLOBAL batch (that comment's 8 x 2, and
# the batch of the repository's GPaCo ADE20K runs with the same lr 6e-5; lr is not rescaled) =
# 4 virtual devices of --device-batch 4: the CeCo branch's BatchNorm and class centres work per
# group of 4 images, as on each of the original's GPUs, and the rest of the network uses
# SyncBatchNorm over the global batch under torchrun on CUDA (the original's SyncBN). 1, 2 or 4
# GPUs train the same run (16 / GPUs must be a multiple of 4). The 8 x 4 reading:
# EXTRA_ARGS="--batch-size 32" on 1, 2, 4 or 8 GPUs.
# Hyperparameters (docs/method.md#hyperparameters): 160000 iterations;
# AdamW lr 6e-5, betas (0.9, 0.999), wd 0.01 (none on norms, relative position tables
# and absolute position embeddings), poly power 1.0 to 0, linear warmup 1500 iterations from 1e-6.
# Loss: pixel CE (weight 1) + aux FCN CE (weight 0.4) + CeCo, ETF variant (UPerHead_ceco), config:
# weight 0.8, scale 5, smooth 1.0 (no smoothing). The head's code: a frozen 512->128 reduce conv +
# BN, 128->512 gain, simplex-ETF classifier, logit-adjusted by the image-level prior below. The
# ETF is drawn once from --etf-seed 0 (ours: the original draws it from numpy's global RNG) and
# saved in the checkpoint.
# Pipeline: random rescale 0.5-2.0 of (2048, 512), random crop 512x512 (cat_max_ratio 0.75),
# flip, photometric distortion, normalise, pad with ignore 255. Checkpoint + val mIoU every
# 4000 iterations (best.pth, as the original's evaluation interval); metrics.json reports the
# final model on val (whole image, single scale, as the original's test). tools/eval_seg.py
# --mode both adds multi-scale.
#
# Data: DATA_ROOT is ADEChallengeData2016 (images/{training,validation}, annotations/...; 150
# classes, label 0 = other -> ignored).
# Class prior: CLASS_COUNTS, default gpaco/data/stats/ade20k_image_label_stats.txt (shipped with
# gpaco): the 150 values of the original's stats/ade20k_image_label_stats.txt, one integer per
# line, line c = ADE20K training images that contain class c (41 to 11588). To check it against
# your copy of ADE20K (reads the training masks, a minute or two):
#   python tools/class_counts_seg.py --dataset ade20k --data-root DATA_ROOT --out runs/ade20k_image_label_stats.txt
#   diff runs/ade20k_image_label_stats.txt gpaco/data/stats/ade20k_image_label_stats.txt
# CLASS_COUNTS= (empty) counts them from the training masks at start instead and writes
# OUTPUT_DIR/class_counts.txt.
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
. "$ROOT/sh/lib/usage.bash" "$@"   # --help: print the header above
DATA_ROOT="${DATA_ROOT:-data/ade/ADEChallengeData2016}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/CeCo/Seg/upernet_swin_tiny_patch4_window7_512x512_160k_ade20k_pretrain_224x224_1K_ceco}"
PRETRAINED="${PRETRAINED-pretrained/swin_tiny_patch4_window7_224.ms_in1k.safetensors}"
CLASS_COUNTS="${CLASS_COUNTS-gpaco/data/stats/ade20k_image_label_stats.txt}"
PRETRAINED_ARGS=()
[ -n "$PRETRAINED" ] && PRETRAINED_ARGS=(--pretrained "$PRETRAINED")
COUNTS_ARGS=()
[ -n "$CLASS_COUNTS" ] && COUNTS_ARGS=(--class-counts "$CLASS_COUNTS")
exec bash "$ROOT/sh/launch.sh" tools/train_seg.py \
    --dataset ade20k --data-root "$DATA_ROOT" --img-scale 2048 512 --crop-size 512 512 \
    --ratio-range 0.5 2.0 --cat-max-ratio 0.75 \
    --arch swin_t --method ceco --ceco-weight 0.8 --ceco-scale 5.0 --ceco-smooth 1.0 --etf-seed 0 --aux-weight 0.4 "${PRETRAINED_ARGS[@]+"${PRETRAINED_ARGS[@]}"}" "${COUNTS_ARGS[@]+"${COUNTS_ARGS[@]}"}" \
    --iters 160000 --batch-size 16 --device-batch 4 --optimizer adamw --lr 6e-5 --wd 0.01 --betas 0.9 0.999 --power 1.0 --min-lr 0 --warmup-iters 1500 --warmup-ratio 1e-6 \
    --eval-interval 4000 --ckpt-interval 4000 \
    --workers "${WORKERS:-4}" --seed "${SEED:-0}" --output-dir "$OUTPUT_DIR" --resume auto
