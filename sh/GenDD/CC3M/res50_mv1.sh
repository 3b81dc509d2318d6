#!/usr/bin/env bash
# GenDD, label-free, CC3M -> ImageNet val, ResNet-50 -> MobileNetV1: train the student
# (kd_mobilenetv1) to condition a diffusion model of the teacher's feature on unlabelled images.
#
# Paper row: GenDD (label-free, CC3M) ResNet-50 -> MobileNetV1: 67.89 top-1 on ImageNet val (GenDD
# README.md line 46; the KL baseline 51.60 on line 44, sh/GenDD/CC3M/res50_mv1_kl.sh). The published
# protocol evaluates best.pth with 5 sampled features per image: sh/GenDD/CC3M/res34_res18_eval.sh
# (ARCH=kd_mobilenetv1 TEACHER_DIM=2048 TRAIN_DIR=runs/GenDD/CC3M/res50_mv1; the original has an
# eval script for ResNet-34 -> ResNet-18 only).
# Original: jiequancui/Generative-Distribution-Distillation @ 9246d0b,
# GenDD_imagenet/sh/cc3m_train_res50mv_unsupervised_gendd.sh (main_unsupervised_gendd.py), the
# source of every hyperparameter below. There is no stage 1.
# GPUs: the original ran 8 GPUs x 64 images (SBATCH --gres=gpu:8, -b 512, DDP). --batch-size is the
# global batch (lr not rescaled); --device-batch 64 computes BatchNorm over groups of 64 images, as
# its GPUs did, on any GPU count whose processes hold a multiple of 64
# (docs/recipes.md#same-statistics-on-any-gpu-count). GenDD's feature mixup pairs samples within
# each process's batch (the original: within each GPU's 64); on 8 GPUs the two are the same.
# Hyperparameters: 100 epochs of 5501 steps, batch 512, AdamW lr 2e-3 with beta2 rising per step
# from .96 to .999 (--gendd-beta2-min 0.96), wd 2e-2 on every parameter but the denoiser's (0); LR
# lr (e + 1) / 20 in epochs e < 20, then 1e-6 + (lr - 1e-6)/2 (1 + cos(pi (e - 19) / 80)), the last
# epoch at 1e-6 (--schedule gendd_cosine --warmup-epochs 20 --min-lr 1e-6; the script passes no
# warm-up: 20 is the default of the group's GenDD drivers, assumed for this one).
# GenDD, label-free (--gendd-label-free): the labels are never read; the teacher's 2048-d feature is
# cut into 32 tokens of 64 with no contraction (--gendd-contraction 0, the script's --smooth 0.0),
# feature mixup with one m ~ Beta(1, 1) and partner per batch (--gendd-mixup-beta 1), each token row
# repeated 10 times (--gendd-batch-mul 10), conditions dropped with p .2; the denoiser is an adaLN
# MLP, width 1024, 3 blocks. Loss: the diffusion loss alone; the student classifier (the probe)
# stays at its random initialisation, as in the original, so the probe accuracy reported beside the
# generated-feature accuracy means nothing. Validation: 1 sampled feature per image, 64 steps,
# guidance 2 (--gendd-samples 1 --gendd-steps 64 --gendd-cfg 2).
# Aug: RandomResizedCrop 224 (scale .6-1) + flip (--aug crop_flip06); evaluation Resize 256 +
# CenterCrop 224; ImageNet mean/std.
# Teacher: torchvision's ImageNet ResNet-50 (--teacher-arch resnet50, as the original's
# pretrained=True), TEACHER_WEIGHTS (default data/imagenet_teachers/resnet50-19c8e357.pth:
# torchvision's resnet50-19c8e357.pth, put there by hand; nothing is downloaded). Frozen in eval
# mode on the student's augmented image; its fc (2048-d features) is copied into the student model
# as a frozen buffer pair.
#
# Data: the training images are CC3M's webdataset shards (jpg; the captions are not read),
# TRAIN_LIST (default $CC3M_ROOT/cc3m-train-*.tar, CC3M_ROOT default data/cc3m; braces such as
# cc3m-train-{0000..0575}.tar also work and refuse a partial download), dealt out to the processes
# and loader workers shard by shard, as the original splits them by rank by hand (--dataset
# webdataset; pip install 'gpaco[webdataset]'). An epoch is 5501 steps (--epoch-iters 5501: the
# original's loop stops after step 5500 of each 'epoch', the count its published runs trained).
# DATA_ROOT is the ImageNet-2012 folder with val.txt: validation after each epoch and the report are
# the 50k ImageNet val images (VAL_LIST = TEST_LIST = val.txt), through the teacher classifier;
# best.pth is selected on them, as the original's model_best.
# Launcher (sh/launch.sh): NGPUS (default: all visible GPUs), NNODES, NODE_RANK, MASTER_ADDR,
# MASTER_PORT; DRY_RUN=1 (a quick check; synthetic data when DATA_ROOT is absent, a teacher with
# random weights when TEACHER_WEIGHTS is absent); EXTRA_ARGS="--flag value" (appended last:
# overrides any flag here). Relative paths are relative to the repository root. Under SLURM: bash
# sh/slurm.sh <this recipe> [sbatch args].
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
. "$ROOT/sh/lib/usage.bash" "$@"   # --help: print the header above
DATA_ROOT="${DATA_ROOT:-data/imagenet}"
CC3M_ROOT="${CC3M_ROOT:-$ROOT/data/cc3m}"  # the shards (absolute, or relative to DATA_ROOT)
TRAIN_LIST="${TRAIN_LIST:-$CC3M_ROOT/cc3m-train-*.tar}"
VAL_LIST="${VAL_LIST:-$DATA_ROOT/val.txt}"
TEST_LIST="${TEST_LIST:-$DATA_ROOT/val.txt}"
TEACHER_WEIGHTS="${TEACHER_WEIGHTS:-data/imagenet_teachers/resnet50-19c8e357.pth}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/GenDD/CC3M/res50_mv1}"
exec bash "$ROOT/sh/launch.sh" tools/train.py \
    --method gendd --gendd-label-free --arch kd_mobilenetv1 --teacher-arch resnet50 --teacher-weights "$TEACHER_WEIGHTS" \
    --gendd-teacher-dim 2048 --gendd-token-dim 64 --gendd-width 1024 --gendd-depth 3 --gendd-batch-mul 10 \
    --gendd-contraction 0 --gendd-mixup-beta 1 --gendd-cond-drop 0.2 --gendd-beta2-min 0.96 \
    --gendd-steps 64 --gendd-samples 1 --gendd-cfg 2 \
    --dataset webdataset --data-root "$DATA_ROOT" --train-list "$TRAIN_LIST" --epoch-iters 5501 \
    --val-list "$VAL_LIST" --test-list "$TEST_LIST" --num-classes 1000 --image-size 224 --norm imagenet \
    --epochs 100 --batch-size 512 --device-batch 64 --optimizer adamw --lr 2e-3 --wd 2e-2 \
    --schedule gendd_cosine --warmup-epochs 20 --min-lr 1e-6 \
    --aug crop_flip06 \
    --workers "${WORKERS:-8}" --seed "${SEED:-0}" --output-dir "$OUTPUT_DIR" --resume auto
