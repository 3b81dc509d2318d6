#!/usr/bin/env bash
# GPaCo + Lovasz-softmax ablation, ADE20K, UPerNet + Swin-B w12 (IN-22k 384 pretrain): train.
#
# Ablation the original shipped (no README number): the same run as the GPaCo recipe plus a
# Lovasz-softmax loss on the upsampled logits, lovasz_w 1, paco_w 1 (the original's UPerHead_paco11).
# Original: GPaCo/Seg/sh/ablation_paco_ade20k/upernet_swinbase_160k_ade20k_paco11.sh
#   -> configs/paco_ade20k/upernet_swin_base_patch4_window12_512x512_160k_ade20k_pretrain_384x384_22K_paco11.py
# The original ran 8 GPUs x 2 images = global batch 16; --batch-size is the GLOBAL batch here
# (same run on any GPU count; lr is not rescaled). SyncBatchNorm under torchrun on CUDA.
# Hyperparameters (docs/method.md#hyperparameters): 160000 iterations;
# AdamW lr 6e-5, betas (0.9, 0.999), wd 0.01 (none on norms, relative position tables
# and absolute position embeddings), poly power 1.0 to 0, linear warmup 1500 iterations from 1e-6.
# GPaCo pixel loss alpha 0.01, T 0.07, 8192 pixels per image, added to the pixel CE and the
# aux FCN CE (weight 0.4).
# Pipeline: random rescale 0.5-2.0 of (2048, 512), random crop 512x512 (cat_max_ratio 0.75),
# flip, photometric distortion, normalise, pad with ignore 255. Checkpoint + val mIoU every
# 4000 iterations, as the original (best.pth); metrics.json reports the final model on val (single scale).
#
# Data: DATA_ROOT is ADEChallengeData2016 (images/{training,validation}, annotations/...; 150
# classes, label 0 = other -> ignored).
# Weights: PRETRAINED is a local encoder file with timm key names, e.g. model.safetensors of the
# Hugging Face repo timm/swin_base_patch4_window12_384.ms_in22k; nothing is downloaded. The paper's numbers need
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
OUTPUT_DIR="${OUTPUT_DIR:-runs/GPaCo/Seg/upernet_swinbase_160k_ade20k_paco11}"
PRETRAINED="${PRETRAINED-pretrained/swin_base_patch4_window12_384.ms_in22k.safetensors}"
PRETRAINED_ARGS=()
[ -n "$PRETRAINED" ] && PRETRAINED_ARGS=(--pretrained "$PRETRAINED")
exec bash "$ROOT/sh/launch.sh" tools/train_seg.py \
    --dataset ade20k --data-root "$DATA_ROOT" --img-scale 2048 512 --crop-size 512 512 \
    --ratio-range 0.5 2.0 --cat-max-ratio 0.75 \
    --arch swin_b --method gpaco --alpha 0.01 --temperature 0.07 --num-pixels 8192 --embed-dim 128 --aux-weight 0.4 --paco-weight 1.0 --lovasz-weight 1.0 "${PRETRAINED_ARGS[@]+"${PRETRAINED_ARGS[@]}"}" \
    --iters 160000 --batch-size 16 --optimizer adamw --lr 6e-5 --wd 0.01 --betas 0.9 0.999 --power 1.0 --min-lr 0 --warmup-iters 1500 --warmup-ratio 1e-6 \
    --eval-interval 4000 --ckpt-interval 4000 \
    --workers "${WORKERS:-4}" --seed "${SEED:-0}" --output-dir "$OUTPUT_DIR" --resume auto
