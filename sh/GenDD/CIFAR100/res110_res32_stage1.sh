#!/usr/bin/env bash
# GenDD stage 1, CIFAR-100, resnet110 -> resnet32: pre-train the student (kd_resnet32) through the
# frozen teacher classifier.
#
# Paper row: none in the original README (GenDD's CIFAR-100 results are in the paper's table only).
# This stage prepares sh/GenDD/CIFAR100/res110_res32_stage2.sh, which starts from its last epoch
# (checkpoint.pth; the script resumes stage 1's _last.pth).
# Original: jiequancui/Generative-Distribution-Distillation @ 9246d0b,
# GenDD_cifar/sh/train_res110_res32_gendd.sh, its first command (train_student_pretrain.py,
# "optional pretraining" in the scripts), the source of every hyperparameter below.
# GPUs: the original ran 1 GPU x 64 images (SBATCH --gres=gpu:1). --batch-size is the global batch
# (lr not rescaled); --device-batch 64 keeps BatchNorm over all 64 images: run it on one GPU
# (NGPUS=1).
# Hyperparameters: 50 epochs (the command passes --epochs 240 and then --epochs 50: the last wins),
# batch 64 (last partial batch kept), AdamW betas (0.9, 0.999) lr 3e-3, wd 5e-2 on every trainable
# parameter (--optimizer adamw --wd 5e-2), per-epoch cosine from lr to 0 without warmup: epoch e =
# 1..50 at lr/2 (1 + cos(pi e / 50)), the last at 0 (--schedule gendd_cosine --warmup-epochs 0
# --min-lr 0); loss CE of the frozen teacher classifier applied to the student feature as it is (F =
# D = 64) (--method gendd_stage1 --gendd-teacher-dim 64); the student's own classifier is not
# trained (it becomes stage 2's linear probe).
# Aug: RandomCrop 32 pad 4 + flip (--aug cifar_crop_flip); CIFAR-100's own mean (.5071, .4867,
# .4408) and std (.2675, .2565, .2761) (--norm cifar100), which the released teachers expect.
# Teacher: RepDistiller's released CIFAR-100 resnet110 (--teacher-arch kd_resnet110),
# TEACHER_WEIGHTS (default data/cifar_teachers/resnet110_vanilla/ckpt_epoch_240.pth: the files the
# original's fetch_pretrained_teachers.sh downloads, which mdistiller's cifar_teachers archive also
# ships, unpacked under data/ by hand; nothing is downloaded). It is frozen in eval mode on the
# student's augmented image; its classifier (64-d features) is copied into the student model as a
# frozen buffer pair (cls_centers, cls_bias).
#
# Data: DATA_ROOT holds cifar-100-python; the full, balanced CIFAR-100 (--imb-factor 1.0). There is
# no held-out split: selection (best.pth) and report (metrics.json) are both the CIFAR-100 test set,
# as in the original (its _best.pth).
# Launcher (sh/launch.sh): NGPUS (default: all visible GPUs), NNODES, NODE_RANK, MASTER_ADDR,
# MASTER_PORT; DRY_RUN=1 (a quick check; synthetic data when DATA_ROOT is absent, a teacher with
# random weights when TEACHER_WEIGHTS is absent); EXTRA_ARGS="--flag value" (appended last:
# overrides any flag here). Relative paths are relative to the repository root. Under SLURM: bash
# sh/slurm.sh <this recipe> [sbatch args].
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
. "$ROOT/sh/lib/usage.bash" "$@"   # --help: print the header above
DATA_ROOT="${DATA_ROOT:-data/cifar}"
TEACHER_WEIGHTS="${TEACHER_WEIGHTS:-data/cifar_teachers/resnet110_vanilla/ckpt_epoch_240.pth}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/GenDD/CIFAR100/res110_res32_stage1}"
exec bash "$ROOT/sh/launch.sh" tools/train.py \
    --method gendd_stage1 --arch kd_resnet32 --teacher-arch kd_resnet110 --teacher-weights "$TEACHER_WEIGHTS" --gendd-teacher-dim 64 \
    --dataset cifar100 --data-root "$DATA_ROOT" --num-classes 100 --image-size 32 --norm cifar100 --imb-factor 1.0 \
    --epochs 50 --batch-size 64 --device-batch 64 --optimizer adamw --lr 3e-3 --wd 5e-2 \
    --schedule gendd_cosine --warmup-epochs 0 --min-lr 0 \
    --aug cifar_crop_flip \
    --workers "${WORKERS:-4}" --seed "${SEED:-0}" --output-dir "$OUTPUT_DIR" --resume auto
