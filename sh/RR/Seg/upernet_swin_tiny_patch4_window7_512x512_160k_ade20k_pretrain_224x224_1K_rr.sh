#!/usr/bin/env bash
# Region Rebalance (RR), ADE20K, UPerNet + Swin-T w7 (IN-1k 224 pretrain): train.
#
# Paper: no number: neither original repository publishes RR results (the paper's abstract claims +0.7 mIoU for BEiT on ADE20K, not this model).
# Original: no configuration: GPaCo/Seg's RR heads (mmseg/models/decode_heads/rr.py) are not registered; this
#   recipe is the CeCo Swin-T setting with the RR head instead of the CeCo branch
# GPUs: no original run (no config). --batch-size 16 is the GLOBAL batch (as the CeCo configs: 4 images per GPU);
# RR's ground-truth regions (L5) pool over each process's batch, so the GPU count changes the run
# (--device-batch is CeCo's only). SyncBatchNorm under torchrun on CUDA; lr is not rescaled.
# Hyperparameters (docs/method.md#hyperparameters): 160000 iterations;
# AdamW lr 6e-5, betas (0.9, 0.999), wd 0.01 (none on norms, relative position tables
# and absolute position embeddings), poly power 1.0 to 0, linear warmup 1500 iterations from 1e-6.
# RR head (docs/method.md#region-rebalance-for-segmentation): L1-L3 pixel CEs (main_w 1) + L4-L5
# region CEs (region_w 1, smooth 1.0, neg_w 1.0, image-level log prior) + aux FCN CE (weight 0.4);
# the region bias is added to the logits at test time. The original ships no values: ours are
# neutral choices (--rr-neg-w-precedence-bug reproduces the original's row weights).
# Pipeline: random rescale 0.5-2.0 of (2048, 512), random crop 512x512 (cat_max_ratio 0.75),
# flip, photometric distortion, normalise, pad with ignore 255. Checkpoint + val mIoU every
# 4000 iterations (best.pth, as the original's evaluation interval); metrics.json reports the
# final model on val (whole image, single scale). tools/eval_seg.py --mode both adds multi-scale.
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
OUTPUT_DIR="${OUTPUT_DIR:-runs/RR/Seg/upernet_swin_tiny_patch4_window7_512x512_160k_ade20k_pretrain_224x224_1K_rr}"
PRETRAINED="${PRETRAINED-pretrained/swin_tiny_patch4_window7_224.ms_in1k.safetensors}"
CLASS_COUNTS="${CLASS_COUNTS-gpaco/data/stats/ade20k_image_label_stats.txt}"
PRETRAINED_ARGS=()
[ -n "$PRETRAINED" ] && PRETRAINED_ARGS=(--pretrained "$PRETRAINED")
COUNTS_ARGS=()
[ -n "$CLASS_COUNTS" ] && COUNTS_ARGS=(--class-counts "$CLASS_COUNTS")
exec bash "$ROOT/sh/launch.sh" tools/train_seg.py \
    --dataset ade20k --data-root "$DATA_ROOT" --img-scale 2048 512 --crop-size 512 512 \
    --ratio-range 0.5 2.0 --cat-max-ratio 0.75 \
    --arch swin_t --method rr --rr-main-w 1.0 --rr-region-w 1.0 --rr-smooth 1.0 --rr-neg-w 1.0 --rr-prior --aux-weight 0.4 "${PRETRAINED_ARGS[@]+"${PRETRAINED_ARGS[@]}"}" "${COUNTS_ARGS[@]+"${COUNTS_ARGS[@]}"}" \
    --iters 160000 --batch-size 16 --optimizer adamw --lr 6e-5 --wd 0.01 --betas 0.9 0.999 --power 1.0 --min-lr 0 --warmup-iters 1500 --warmup-ratio 1e-6 \
    --eval-interval 4000 --ckpt-interval 4000 \
    --workers "${WORKERS:-4}" --seed "${SEED:-0}" --output-dir "$OUTPUT_DIR" --resume auto
