#!/usr/bin/env bash
# GPaCo, COCO-Stuff-10k, DeepLabV3+ R101-D8 (ResNetV1c-101, mmseg's network as the original): evaluate, single-scale and multi-scale.
#
# Paper row (README): GPaCo COCO-Stuff-10k ResNet-101: mIoU 38.8 (s.s.) / 40.1 (m.s.).
# Original: tools/dist_test.sh CONFIG CKPT N --eval mIoU [--aug-test], CONFIG =
#   configs/paco_coco10k/deeplabv3plus_r101-d8_512x512_4x4_40k_coco-stuff10k_paco.py
# CHECKPOINT defaults to the final-iteration checkpoint.pth of
# sh/GPaCo/Seg/r101_deeplabv3plus_40k_coco10k_paco.sh (the paper reports the last iteration);
# TRAIN_DIR=runs/GPaCo/Seg/r101_deeplabv3plus_40k_coco10k_ce evaluates the CE baseline.
# s.s.: test scale (2048, 512) keep-ratio, whole image. m.s.: ratios 0.5, 0.75, 1.0,
# 1.25, 1.5, 1.75 with horizontal flip, softmax probabilities averaged. Per-class IoU over the whole
# val split; under torchrun every image is evaluated once.
#
# Data: DATA_ROOT holds images/{train2014,test2014} and annotations/{...}/*_labelTrainIds.png
# (make them once from the official cocostuff-10k-v1.1 release: python tools/prepare_data.py
# coco_stuff10k --root DATA_ROOT; 171 classes, 0 = unlabeled -> ignored).
# Launcher (sh/launch.sh): NGPUS (default: all visible GPUs), NNODES, NODE_RANK, MASTER_ADDR,
# MASTER_PORT; DRY_RUN=1 (a quick check: synthetic data when DATA_ROOT is absent, 64 px crops,
# batch 2, two iterations, nothing written); EXTRA_ARGS="--flag value" (appended last: overrides
# any flag here). Relative paths are relative to the repository root. Under SLURM:
# bash sh/slurm.sh <this recipe> [sbatch args].
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
. "$ROOT/sh/lib/usage.bash" "$@"   # --help: print the header above
DATA_ROOT="${DATA_ROOT:-data/coco_stuff10k}"
TRAIN_DIR="${TRAIN_DIR:-runs/GPaCo/Seg/r101_deeplabv3plus_40k_coco10k_paco}"  # the run folder of sh/GPaCo/Seg/r101_deeplabv3plus_40k_coco10k_paco.sh
CHECKPOINT="${CHECKPOINT:-$TRAIN_DIR/checkpoint.pth}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/GPaCo/Seg/r101_deeplabv3plus_40k_coco10k_paco_eval}"
exec bash "$ROOT/sh/launch.sh" tools/eval_seg.py \
    --checkpoint "$CHECKPOINT" \
    --dataset coco_stuff10k --data-root "$DATA_ROOT" --split val --img-scale 2048 512 \
    --mode both --ms-ratios 0.5 0.75 1.0 1.25 1.5 1.75 --ms-flip \
    --workers "${WORKERS:-4}" --output-dir "$OUTPUT_DIR"
