#!/usr/bin/env bash
# CE baseline, COCO-Stuff-10k, DeepLabV3+ R101-D8 (ResNetV1c-101, mmseg's network as the original): train.
#
# Baseline of the GPaCo row COCO-Stuff-10k ResNet-101 (38.8 / 40.1 mIoU): the same recipe without the
# GPaCo branch (pixel CE + 0.4 aux CE).
# Original: no CE script was released for this row; this is r101_deeplabv3plus_40k_coco10k_paco.sh without the GPaCo
# branch (configs/paco_coco10k/deeplabv3plus_r101-d8_512x512_4x4_40k_coco-stuff10k_paco.py minus is_paco / UPerHead_paco).
# The original ran 4 GPUs x 4 images = global batch 16; --batch-size is the GLOBAL batch here
# (same run on any GPU count; lr is not rescaled). SyncBatchNorm under torchrun on CUDA.
# Hyperparameters (docs/method.md#hyperparameters): 40000 iterations;
# SGD lr 0.01, momentum 0.9, wd 5e-4 (all parameters), poly power 0.9 to 1e-4.
# Pixel CE (weight 1) + aux FCN CE (weight 0.4); no embedding branch.
# Pipeline: random rescale 0.5-2.0 of (2048, 512), random crop 512x512 (cat_max_ratio 0.75),
# flip, photometric distortion, normalise, pad with ignore 255. Checkpoint + val mIoU every
# 4000 iterations (best.pth); metrics.json reports the final model on val (single scale).
#
# Data: DATA_ROOT holds images/{train2014,test2014} and annotations/{...}/*_labelTrainIds.png
# (make them once from the official cocostuff-10k-v1.1 release: python tools/prepare_data.py
# coco_stuff10k --root DATA_ROOT; 171 classes, 0 = unlabeled -> ignored).
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
DATA_ROOT="${DATA_ROOT:-data/coco_stuff10k}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/GPaCo/Seg/r101_deeplabv3plus_40k_coco10k_ce}"
PRETRAINED="${PRETRAINED-pretrained/resnet101_v1c.pth}"
PRETRAINED_ARGS=()
[ -n "$PRETRAINED" ] && PRETRAINED_ARGS=(--pretrained "$PRETRAINED")
exec bash "$ROOT/sh/launch.sh" tools/train_seg.py \
    --dataset coco_stuff10k --data-root "$DATA_ROOT" --img-scale 2048 512 --crop-size 512 512 \
    --ratio-range 0.5 2.0 --cat-max-ratio 0.75 \
    --arch r101 --method ce --aux-weight 0.4 "${PRETRAINED_ARGS[@]+"${PRETRAINED_ARGS[@]}"}" \
    --iters 40000 --batch-size 16 --optimizer sgd --lr 0.01 --momentum 0.9 --wd 5e-4 --power 0.9 --min-lr 1e-4 \
    --eval-interval 4000 --ckpt-interval 4000 \
    --workers "${WORKERS:-4}" --seed "${SEED:-0}" --output-dir "$OUTPUT_DIR" --resume auto
