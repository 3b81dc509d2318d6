#!/usr/bin/env bash
# CE baseline, Pascal-Context-59, DeepLabV3+ R50-D8 (ResNetV1c-50, mmseg's network as the original): train.
#
# Baseline of the GPaCo row Pascal-Context-59 ResNet-50 (51.9 / 53.7 mIoU): the same recipe without the
# GPaCo branch (pixel CE + 0.4 aux CE).
# Original: GPaCo/Seg/sh/ablation_paco_context/r50_deeplabv3plus_40k_context.sh
#   -> configs/paco_context59/deeplabv3plus_r50-d8_480x480_40k_pascal_context_59.py (its CE run)
# The original ran 4 GPUs x 4 images = global batch 16; --batch-size is the GLOBAL batch here
# (same run on any GPU count; lr is not rescaled). SyncBatchNorm under torchrun on CUDA.
# Hyperparameters (docs/method.md#hyperparameters): 40000 iterations;
# SGD lr 0.004, momentum 0.9, wd 1e-4 (all parameters), poly power 0.9 to 1e-4.
# Pixel CE (weight 1) + aux FCN CE (weight 0.4); no embedding branch.
# Pipeline: random rescale 0.5-2.0 of (520, 520), random crop 480x480 (cat_max_ratio 0.75),
# flip, photometric distortion, normalise, pad with ignore 255. Checkpoint + val mIoU every
# 4000 iterations (best.pth); metrics.json reports the final model on val (single scale).
#
# Data: DATA_ROOT is VOC2010 with JPEGImages/, SegmentationClassContext/ (the 0..59 label PNGs that
# mmseg's pascal_context converter writes; 0 = background -> ignored) and
# ImageSets/SegmentationContext/{train,val}.txt.
# Weights: PRETRAINED is a local ImageNet ResNetV1c-50 file with mmcv key names (stem.*, layer*.*):
# the original's open-mmlab://resnet50_v1c; nothing is downloaded. The paper's numbers need
# it. PRETRAINED= (empty) trains from random initialisation.
# Launcher (sh/launch.sh): NGPUS (default: all visible GPUs), NNODES, NODE_RANK, MASTER_ADDR,
# MASTER_PORT; DRY_RUN=1 (a quick check: synthetic data when DATA_ROOT is absent, 64 px crops,
# batch 2, two iterations, nothing written); EXTRA_ARGS="--flag value" (appended last: overrides
# any flag here). Relative paths are relative to the repository root. Under SLURM:
# bash sh/slurm.sh <this recipe> [sbatch args].
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
. "$ROOT/sh/lib/usage.bash" "$@"   # --help: print the header above
DATA_ROOT="${DATA_ROOT:-data/VOCdevkit/VOC2010}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/GPaCo/Seg/r50_deeplabv3plus_40k_context_ce}"
PRETRAINED="${PRETRAINED-pretrained/resnet50_v1c.pth}"
PRETRAINED_ARGS=()
[ -n "$PRETRAINED" ] && PRETRAINED_ARGS=(--pretrained "$PRETRAINED")
exec bash "$ROOT/sh/launch.sh" tools/train_seg.py \
    --dataset pascal_context59 --data-root "$DATA_ROOT" --img-scale 520 520 --crop-size 480 480 \
    --ratio-range 0.5 2.0 --cat-max-ratio 0.75 \
    --arch r50 --method ce --aux-weight 0.4 "${PRETRAINED_ARGS[@]+"${PRETRAINED_ARGS[@]}"}" \
    --iters 40000 --batch-size 16 --optimizer sgd --lr 0.004 --momentum 0.9 --wd 1e-4 --power 0.9 --min-lr 1e-4 \
    --eval-interval 4000 --ckpt-interval 4000 --test-mode slide --test-crop 480 480 --test-stride 320 320 \
    --workers "${WORKERS:-4}" --seed "${SEED:-0}" --output-dir "$OUTPUT_DIR" --resume auto
