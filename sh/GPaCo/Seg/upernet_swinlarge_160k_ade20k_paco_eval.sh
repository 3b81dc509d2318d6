#!/usr/bin/env bash
# GPaCo, ADE20K, UPerNet + Swin-L w12 (IN-22k 384 pretrain): evaluate, single-scale and multi-scale.
#
# Paper row (README): GPaCo ADE20K Swin-L: mIoU 52.8 (s.s.) / 54.3 (m.s.).
# Original: tools/dist_test.sh CONFIG CKPT N --eval mIoU [--aug-test], CONFIG =
#   configs/paco_ade20k/upernet_swin_large_patch4_window12_512x512_160k_ade20k_pretrain_384x384_22K_paco.py
# CHECKPOINT defaults to the final-iteration checkpoint.pth of
# sh/GPaCo/Seg/upernet_swinlarge_160k_ade20k_paco.sh (the paper reports the last iteration);
# TRAIN_DIR=runs/GPaCo/Seg/upernet_swinlarge_160k_ade20k_ce evaluates the CE baseline.
# s.s.: test scale (2048, 512) keep-ratio, whole image. m.s.: ratios 0.5, 0.75, 1.0,
# 1.25, 1.5, 1.75 with horizontal flip, softmax probabilities averaged. Per-class IoU over the whole
# val split; under torchrun every image is evaluated once.
#
# Data: DATA_ROOT is ADEChallengeData2016 (images/{training,validation}, annotations/...; 150
# classes, label 0 = other -> ignored).
# Launcher (sh/launch.sh): NGPUS (default: all visible GPUs), NNODES, NODE_RANK, MASTER_ADDR,
# MASTER_PORT; DRY_RUN=1 (a quick check: synthetic data when DATA_ROOT is absent, 64 px crops,
# batch 2, two iterations, nothing written); EXTRA_ARGS="--flag value" (appended last: overrides
# any flag here). Relative paths are relative to the repository root. Under SLURM:
# bash sh/slurm.sh <this recipe> [sbatch args].
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
. "$ROOT/sh/lib/usage.bash" "$@"   # --help: print the header above
DATA_ROOT="${DATA_ROOT:-data/ade/ADEChallengeData2016}"
TRAIN_DIR="${TRAIN_DIR:-runs/GPaCo/Seg/upernet_swinlarge_160k_ade20k_paco}"  # the run folder of sh/GPaCo/Seg/upernet_swinlarge_160k_ade20k_paco.sh
CHECKPOINT="${CHECKPOINT:-$TRAIN_DIR/checkpoint.pth}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/GPaCo/Seg/upernet_swinlarge_160k_ade20k_paco_eval}"
exec bash "$ROOT/sh/launch.sh" tools/eval_seg.py \
    --checkpoint "$CHECKPOINT" \
    --dataset ade20k --data-root "$DATA_ROOT" --split val --img-scale 2048 512 \
    --mode both --ms-ratios 0.5 0.75 1.0 1.25 1.5 1.75 --ms-flip \
    --workers "${WORKERS:-4}" --output-dir "$OUTPUT_DIR"
