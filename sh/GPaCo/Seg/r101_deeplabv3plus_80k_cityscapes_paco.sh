#!/usr/bin/env bash
# GPaCo, Cityscapes, DeepLabV3+ R101-D8 (ResNetV1c-101, mmseg's network as the original): train.
#
# Paper row (README): GPaCo Cityscapes ResNet-101: mIoU 81.4 single-scale / 82.1 multi-scale.
# Original: GPaCo/Seg/sh/ablation_paco_cityscapes/r101_deeplabv3plus_40k_context.sh (misnamed: it runs the 80k
#   Cityscapes config)
#   -> configs/paco_cityscapes/deeplabv3plus_r101-d8_512x1024_80k_cityscapes_paco.py
# The original ran 4 GPUs x 2 images = global batch 8; --batch-size is the GLOBAL batch here
# (same run on any GPU count; lr is not rescaled). SyncBatchNorm under torchrun on CUDA.
# Hyperparameters (docs/method.md#hyperparameters): 80000 iterations;
# SGD lr 0.01, momentum 0.9, wd 5e-4 (all parameters), poly power 0.9 to 1e-4.
# GPaCo pixel loss alpha 0.02, T 0.07, 8192 pixels per image, added to the pixel CE and the
# aux FCN CE (weight 0.4).
# Pipeline: random rescale 0.5-2.0 of (2048, 1024), random crop 512x1024 (cat_max_ratio 0.75),
# flip, photometric distortion, normalise, pad with ignore 255. Checkpoint + val mIoU every
# 8000 iterations (best.pth); metrics.json reports the final model on val (single scale).
#
# Data: DATA_ROOT holds leftImg8bit/{train,val} and gtFine/{train,val} with *_gtFine_labelTrainIds.png
# (make them once: python tools/prepare_data.py cityscapes --root DATA_ROOT; 19 classes).
# Weights: PRETRAINED is a local ImageNet ResNetV1c-101 file with mmcv key names (stem.*, layer*.*):
# the original's open-mmlab://resnet101_v1c; nothing is downloaded. The paper's numbers need
# it. PRETRAINED= (empty) trains from random initialisation.
# Launcher (sh/launch.sh): NGPUS (default: all visible GPUs), NNODES, NODE_RANK, MASTER_ADDR,
# MASTER_PORT; DRY_RUN=1 (a quick check: synthetic data when DATA_ROOT is absent, 64 px crops,
# batch 2, two iterations, nothing written); EXTRA_ARGS="--flag value" (appended last: overrides
# any flag here). Relative paths are relative to the repository root. Under SLURM:
# bash sh/slurm.sh <this recipe> [sbatch args].
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
. "$ROOT/sh/lib/usage.bash" "$@"   # --help: print the header above
DATA_ROOT="${DATA_ROOT:-data/cityscapes}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/GPaCo/Seg/r101_deeplabv3plus_80k_cityscapes_paco}"
PRETRAINED="${PRETRAINED-pretrained/resnet101_v1c.pth}"
PRETRAINED_ARGS=()
[ -n "$PRETRAINED" ] && PRETRAINED_ARGS=(--pretrained "$PRETRAINED")
exec bash "$ROOT/sh/launch.sh" tools/train_seg.py \
    --dataset cityscapes --data-root "$DATA_ROOT" --img-scale 2048 1024 --crop-size 512 1024 \
    --ratio-range 0.5 2.0 --cat-max-ratio 0.75 \
    --arch r101 --method gpaco --alpha 0.02 --temperature 0.07 --num-pixels 8192 --embed-dim 128 --aux-weight 0.4 "${PRETRAINED_ARGS[@]+"${PRETRAINED_ARGS[@]}"}" \
    --iters 80000 --batch-size 8 --optimizer sgd --lr 0.01 --momentum 0.9 --wd 5e-4 --power 0.9 --min-lr 1e-4 \
    --eval-interval 8000 --ckpt-interval 8000 \
    --workers "${WORKERS:-4}" --seed "${SEED:-0}" --output-dir "$OUTPUT_DIR" --resume auto
