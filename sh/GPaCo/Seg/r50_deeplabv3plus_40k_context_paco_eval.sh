#!/usr/bin/env bash
# GPaCo, Pascal-Context-59, DeepLabV3+ R50-D8 (ResNetV1c-50, mmseg's network as the original): evaluate, single-scale and multi-scale.
#
# Paper row (README): GPaCo Pascal-Context-59 ResNet-50: mIoU 51.9 (s.s.) / 53.7 (m.s.).
# Original: tools/dist_test.sh CONFIG CKPT N --eval mIoU [--aug-test], CONFIG =
#   configs/paco_context59/deeplabv3plus_r50-d8_480x480_40k_pascal_context_59_paco.py
# CHECKPOINT defaults to the final-iteration checkpoint.pth of
# sh/GPaCo/Seg/r50_deeplabv3plus_40k_context_paco.sh (the paper reports the last iteration);
# TRAIN_DIR=runs/GPaCo/Seg/r50_deeplabv3plus_40k_context_ce evaluates the CE baseline.
# s.s.: test scale (520, 520) keep-ratio, sliding window 480x480, stride 320. m.s.: ratios 0.5, 0.75, 1.0,
# 1.25, 1.5, 1.75 with horizontal flip, softmax probabilities averaged. Per-class IoU over the whole
# val split; under torchrun every image is evaluated once.
#
# Data: DATA_ROOT is VOC2010 with JPEGImages/, SegmentationClassContext/ (the 0..59 label PNGs that
# mmseg's pascal_context converter writes; 0 = background -> ignored) and
# ImageSets/SegmentationContext/{train,val}.txt.
# Launcher (sh/launch.sh): NGPUS (default: all visible GPUs), NNODES, NODE_RANK, MASTER_ADDR,
# MASTER_PORT; DRY_RUN=1 (a quick check: synthetic data when DATA_ROOT is absent, 64 px crops,
# batch 2, two iterations, nothing written); EXTRA_ARGS="--flag value" (appended last: overrides
# any flag here). Relative paths are relative to the repository root. Under SLURM:
# bash sh/slurm.sh <this recipe> [sbatch args].
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
. "$ROOT/sh/lib/usage.bash" "$@"   # --help: print the header above
DATA_ROOT="${DATA_ROOT:-data/VOCdevkit/VOC2010}"
TRAIN_DIR="${TRAIN_DIR:-runs/GPaCo/Seg/r50_deeplabv3plus_40k_context_paco}"  # the run folder of sh/GPaCo/Seg/r50_deeplabv3plus_40k_context_paco.sh
CHECKPOINT="${CHECKPOINT:-$TRAIN_DIR/checkpoint.pth}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/GPaCo/Seg/r50_deeplabv3plus_40k_context_paco_eval}"
exec bash "$ROOT/sh/launch.sh" tools/eval_seg.py \
    --checkpoint "$CHECKPOINT" \
    --dataset pascal_context59 --data-root "$DATA_ROOT" --split val --img-scale 520 520 --test-mode slide --test-crop 480 480 --test-stride 320 320 \
    --mode both --ms-ratios 0.5 0.75 1.0 1.25 1.5 1.75 --ms-flip \
    --workers "${WORKERS:-4}" --output-dir "$OUTPUT_DIR"
