#!/usr/bin/env bash
# GenDD, ImageNet-LT, ResNeXt-101 32x4d -> ResNet-50: train the student (resnet50) to condition a
# diffusion model of the teacher's feature.
#
# Paper row: none in the original README (GenDD's ImageNet-LT results are in the paper's table
# only). The published protocol evaluates best.pth with 5 sampled features per image:
# sh/GenDD/ImageNetLT/X101_res50_eval.sh.
# Original: jiequancui/Generative-Distribution-Distillation @ 9246d0b,
# GenDD_imagenet/sh_lt/imagenetlt_train_resnext101_res50_gendd.sh (main_gendd_lt.py), the source of
# every hyperparameter below. There is no stage 1.
# GPUs: the original ran 8 GPUs x 32 images (SBATCH --gres=gpu:8, -b 256, DDP). --batch-size is the
# global batch (lr not rescaled); --device-batch 32 computes BatchNorm over groups of 32 images, as
# its GPUs did, on any GPU count whose processes hold a multiple of 32
# (docs/recipes.md#same-statistics-on-any-gpu-count). GenDD's feature mixup pairs samples within
# each process's batch (the original: within each GPU's 32); on 8 GPUs the two are the same.
# Hyperparameters: 100 epochs, batch 256, AdamW lr 2e-3 with beta2 rising per step from .96 to .999
# (--gendd-beta2-min 0.96), wd 0.2 on every parameter but the denoiser's (0); LR lr (e + 1) / 20 in
# epochs e < 20, then 1e-6 + (lr - 1e-6)/2 (1 + cos(pi (e - 19) / 80)), the last epoch at 1e-6
# (--schedule gendd_cosine --warmup-epochs 20 --min-lr 1e-6; warm-up 20 is the driver's default).
# GenDD: the teacher's 2048-d feature is cut into 32 tokens of 64, with no contraction (s 0:
# --gendd-contraction 0; the script's --smooth 0.0, its run folder says unsupervised), feature mixup
# with one m ~ Beta(1, 1) and partner per batch (--gendd-mixup-beta 1), each token row repeated 10
# times (--gendd-batch-mul 10), conditions dropped with p .2; the denoiser is an adaLN MLP, width
# 1024, 3 blocks. Loss: diffusion + CE of the linear probe on the labels (no re-balancing anywhere),
# weight 1 each. Predictions go through the LT teacher's classifier. Validation: 1 sampled feature
# per image, 64 steps, guidance 2 (--gendd-samples 1 --gendd-steps 64 --gendd-cfg 2).
# Aug: RandomResizedCrop 224 (scale .6-1, the driver's --crop_scale 0.6) + flip (--aug crop_flip06);
# evaluation Resize 256 + CenterCrop 224; ImageNet mean/std.
# Teacher: our ResNeXt-101 32x4d CE run (--teacher-arch resnext101_32x4d), as the original distilled
# from its own main_lt_sgd.py run's model_best: TEACHER_WEIGHTS (default the best.pth of
# sh/GenDD/ImageNetLT/X101_teacher.sh; run that first). Frozen, in eval mode, on the student's
# augmented image; its fc is copied into the student model as a frozen buffer pair.
#
# Data: DATA_ROOT is the ImageNet-2012 folder (train/, val/) holding the ImageNet-LT split lists
# ImageNet_LT_{train,val,test}.txt. The original validates every epoch on the 50k ImageNet_LT_test
# list and keeps the best epoch (model_best), so by default VAL_LIST is the test list too: the
# recipe selects as the published numbers did. VAL_LIST=$DATA_ROOT/ImageNet_LT_val.txt selects on
# the held-out val list instead (docs/migrating.md). metrics.json reports ImageNet_LT_test with many
# / medium / few-shot accuracies (more than 100 / 20-100 / fewer than 20 training images).
# Launcher (sh/launch.sh): NGPUS (default: all visible GPUs), NNODES, NODE_RANK, MASTER_ADDR,
# MASTER_PORT; DRY_RUN=1 (a quick check; synthetic data when DATA_ROOT is absent, a teacher with
# random weights when TEACHER_WEIGHTS is absent); EXTRA_ARGS="--flag value" (appended last:
# overrides any flag here). Relative paths are relative to the repository root. Under SLURM: bash
# sh/slurm.sh <this recipe> [sbatch args].
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
. "$ROOT/sh/lib/usage.bash" "$@"   # --help: print the header above
DATA_ROOT="${DATA_ROOT:-data/imagenet}"
TRAIN_LIST="${TRAIN_LIST:-$DATA_ROOT/ImageNet_LT_train.txt}"
VAL_LIST="${VAL_LIST:-$DATA_ROOT/ImageNet_LT_test.txt}"
TEST_LIST="${TEST_LIST:-$DATA_ROOT/ImageNet_LT_test.txt}"
TEACHER_WEIGHTS="${TEACHER_WEIGHTS:-runs/GenDD/ImageNetLT/X101_teacher/best.pth}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/GenDD/ImageNetLT/X101_res50}"
exec bash "$ROOT/sh/launch.sh" tools/train.py \
    --method gendd --arch resnet50 --teacher-arch resnext101_32x4d --teacher-weights "$TEACHER_WEIGHTS" \
    --gendd-teacher-dim 2048 --gendd-token-dim 64 --gendd-width 1024 --gendd-depth 3 --gendd-batch-mul 10 \
    --gendd-contraction 0 --gendd-mixup-beta 1 --gendd-cond-drop 0.2 --gendd-beta2-min 0.96 \
    --gendd-steps 64 --gendd-samples 1 --gendd-cfg 2 \
    --dataset split --data-root "$DATA_ROOT" --train-list "$TRAIN_LIST" --val-list "$VAL_LIST" --test-list "$TEST_LIST" \
    --num-classes 1000 --image-size 224 --norm imagenet \
    --epochs 100 --batch-size 256 --device-batch 32 --optimizer adamw --lr 2e-3 --wd 0.2 \
    --schedule gendd_cosine --warmup-epochs 20 --min-lr 1e-6 \
    --aug crop_flip06 \
    --workers "${WORKERS:-8}" --seed "${SEED:-0}" --output-dir "$OUTPUT_DIR" --resume auto
