#!/usr/bin/env bash
# IKL knowledge distillation, ImageNet-1k, ResNet-50 -> MobileNetV1: train the student (kd_mobilenetv1).
#
# Paper row: IKL-KD ResNet-50 -> MobileNet: 72.84 top-1 (DKL README, DKLv1/KD-dkl/README.md line 18;
# ReviewKD 72.56, DKD 72.05 on lines 16-17).
# Original: jiequancui/DKL DKLv1/KD-dkl/imagenet_kd_dkl_configs/r50_mv_ikl_kd.yaml (the same
# settings as configs/imagenet/*/ikl_kd.yaml), run by DKLv1/KD-dkl/sh/imagenet_r50_mv_ikl.sh through
# mdistiller's tools/train.py (IKL, NeurIPS 2024, arXiv 2305.13948). The source of every
# hyperparameter below.
# GPUs: the original ran 8 GPUs x 64 images (DataParallel: BatchNorm per GPU; SBATCH --gres=gpu:8,
# batch 512, mdistiller wraps the whole distiller in DataParallel). --batch-size is the global batch
# (lr not rescaled); --bn-device-batch 64 normalises BatchNorm over groups of 64 images on any GPU
# count whose processes hold a multiple of 64
# (docs/recipes.md#which-recipes-reproduce-the-per-gpu-statistics). The loss is each process's batch
# mean; the original averaged its 8 per-GPU losses, the same thing for CE and IKL.
# Hyperparameters: 100 epochs, batch 512 (last partial batch kept, as mdistiller's ImageNet loader),
# SGD momentum .9 lr 0.2, wd 1e-4 on every student parameter, lr x0.1 from epochs 30, 60 and 90 with
# no warmup (mdistiller's lr * 0.1^(stages passed) on its 1-based epochs is --schedule step with
# these 0-based milestones); loss CE + min(epoch / W, 1) x IKL(T 1, alpha 4, beta 1; GI on: the pair
# weights are the class-wise mean teacher prediction softmax(teacher / T2), T2 1, of the sample's
# class over the previous epoch, uniform in epoch 1; the wMSE is averaged over the batch), warm-up 1
# (factor 1 from the first epoch). Sources: the config (solver, T, alpha, beta, GI, T2, warm-up);
# momentum .9, CE weight 1 and the step rule: mdistiller's defaults (engine/cfg.py,
# engine/utils.py). The student trains from scratch; the teacher is frozen in eval mode and sees the
# student's augmented image. Aug: RandomResizedCrop 224 + flip (--aug crop_flip); evaluation Resize
# 256 + CenterCrop 224; ImageNet mean/std.
# Teacher: torchvision's ImageNet ResNet-50 (--teacher-arch resnet50), TEACHER_WEIGHTS (default
# data/imagenet_teachers/resnet50-19c8e357.pth: torchvision's resnet50-19c8e357.pth, put there by
# hand; nothing is downloaded).
#
# Data: DATA_ROOT is the ImageNet-2012 folder (train/, val/) with the split lists train.txt and
# val.txt ('relative/path label' lines, labels 0..999 in sorted-wnid order). There is no held-out
# selection split: VAL_LIST and TEST_LIST are both val.txt (the 50k val set), as in the original
# (its best_acc).
# Launcher (sh/launch.sh): NGPUS (default: all visible GPUs), NNODES, NODE_RANK, MASTER_ADDR,
# MASTER_PORT; DRY_RUN=1 (a quick check; synthetic data when DATA_ROOT is absent, a teacher with
# random weights when TEACHER_WEIGHTS is absent); EXTRA_ARGS="--flag value" (appended last:
# overrides any flag here). Relative paths are relative to the repository root. Under SLURM:
# bash sh/slurm.sh <this recipe> [sbatch args].
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
. "$ROOT/sh/lib/usage.bash" "$@"   # --help: print the header above
DATA_ROOT="${DATA_ROOT:-data/imagenet}"
TRAIN_LIST="${TRAIN_LIST:-$DATA_ROOT/train.txt}"
VAL_LIST="${VAL_LIST:-$DATA_ROOT/val.txt}"
TEST_LIST="${TEST_LIST:-$DATA_ROOT/val.txt}"
TEACHER_WEIGHTS="${TEACHER_WEIGHTS:-data/imagenet_teachers/resnet50-19c8e357.pth}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/KD/ImageNet/ikl_res50_mv1}"
exec bash "$ROOT/sh/launch.sh" tools/train.py \
    --method ikl_kd --arch kd_mobilenetv1 --teacher-arch resnet50 --teacher-weights "$TEACHER_WEIGHTS" \
    --kd-temperature 1 --kd-alpha 4 --kd-beta 1 --kd-t2 1 --kd-gi \
    --kd-warmup-epochs 1 --kd-ce-weight 1 --no-kd-drop-last \
    --dataset split --data-root "$DATA_ROOT" --train-list "$TRAIN_LIST" --val-list "$VAL_LIST" --test-list "$TEST_LIST" \
    --num-classes 1000 --image-size 224 --norm imagenet \
    --epochs 100 --batch-size 512 --bn-device-batch 64 --lr 0.2 --momentum 0.9 --wd 1e-4 \
    --schedule step --warmup-epochs 0 --milestones 30 60 90 \
    --aug crop_flip \
    --workers "${WORKERS:-8}" --seed "${SEED:-0}" --output-dir "$OUTPUT_DIR" --resume auto
