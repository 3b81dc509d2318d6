#!/usr/bin/env bash
# GenDD stage 2, CIFAR-100, vgg13 -> resnet20: train the student (kd_resnet20) to condition a
# diffusion model of the teacher's feature.
#
# Paper row: none in the original README (GenDD's CIFAR-100 results are in the paper's table only).
# The published protocol evaluates best.pth with 5 sampled features per image:
# sh/GenDD/CIFAR100/evaluate.sh (TRAIN_DIR=runs/GenDD/CIFAR100/vgg13_res20_stage2).
# Original: jiequancui/Generative-Distribution-Distillation @ 9246d0b,
# GenDD_cifar/sh/train_vgg13res20_gendd.sh, its second command (train_student_gendd.py), the source
# of every hyperparameter below.
# GPUs: the original ran 1 GPU x 64 images (SBATCH --gres=gpu:1). --batch-size is the global batch
# (lr not rescaled); --device-batch 64 keeps BatchNorm over all 64 images: run it on one GPU
# (NGPUS=1).
# Hyperparameters: 240 epochs, batch 64 (last partial batch kept), AdamW lr 1e-3 with beta2 rising
# per step from 0.95 to 0.999 by a half cosine (--gendd-beta2-min 0.95), wd 5e-2 on every parameter
# but the denoiser's (0). LR: lr e / 50 in the 1-based epochs e < 50, then 0.98 lr (never lr) until
# epoch 150, then x0.1 after epochs 150, 180 and 210 (--schedule gendd_step --warmup-epochs 50
# --milestones 150 180 210): the original's warm-up leaves its last value in place until the first
# decay, and the published numbers trained with that; EXTRA_ARGS="--schedule step" trains the
# intended lr in epochs 50-150 (docs/migrating.md).
# GenDD: the teacher's 512-d feature is cut into 8 tokens of 64 (--gendd-token-dim 64), contracted
# toward the label's teacher-classifier row with s 0.9 (--gendd-contraction 0.9), mixed with one m ~
# Beta(1, 1) and partner per batch together with the condition (--gendd-mixup-beta 1), each token
# row repeated 30 times with its own step and noise (--gendd-batch-mul 30), conditions dropped with
# p .2 (--gendd-cond-drop 0.2); the denoiser is an adaLN MLP, width 1024, 3 blocks (--gendd-width
# 1024 --gendd-depth 3), conditioned on LayerNorm(student feature). Loss: diffusion + CE of the
# linear probe (the student classifier on the detached feature), weight 1 each. Validation: the
# teacher classifier on 1 sampled feature per image, 100 respaced steps, guidance 2 (--gendd-samples
# 1 --gendd-steps 100 --gendd-cfg 2, the driver's per-epoch validation); the probe's accuracy is
# reported beside it.
# Stage 1: STAGE1 (default: the best.pth of sh/GenDD/CIFAR100/vgg13_res20_stage1.sh; the trunk and
# the never-trained student classifier are loaded, the projection dropped). STAGE1= (empty) trains
# from scratch: the scripts call stage 1 optional.
# Aug: RandomCrop 32 pad 4 + flip (--aug cifar_crop_flip); CIFAR-100's own mean (.5071, .4867,
# .4408) and std (.2675, .2565, .2761) (--norm cifar100), which the released teachers expect.
# Teacher: RepDistiller's released CIFAR-100 vgg13 (--teacher-arch kd_vgg13), TEACHER_WEIGHTS
# (default data/cifar_teachers/vgg13_vanilla/ckpt_epoch_240.pth: the files the original's
# fetch_pretrained_teachers.sh downloads, which mdistiller's cifar_teachers archive also ships,
# unpacked under data/ by hand; nothing is downloaded). It is frozen in eval mode on the student's
# augmented image; its classifier (512-d features) is copied into the student model as a frozen
# buffer pair (cls_centers, cls_bias).
#
# Data: DATA_ROOT holds cifar-100-python; the full, balanced CIFAR-100 (--imb-factor 1.0). There is
# no held-out split: selection (best.pth) and report (metrics.json) are both the CIFAR-100 test set,
# as in the original (its _best.pth).
# Launcher (sh/launch.sh): NGPUS (default: all visible GPUs), NNODES, NODE_RANK, MASTER_ADDR,
# MASTER_PORT; DRY_RUN=1 (a quick check; synthetic data when DATA_ROOT is absent, a teacher with
# random weights when TEACHER_WEIGHTS is absent, a student from scratch when STAGE1 is absent);
# EXTRA_ARGS="--flag value" (appended last: overrides any flag here). Relative paths are relative to
# the repository root. Under SLURM: bash sh/slurm.sh <this recipe> [sbatch args].
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
. "$ROOT/sh/lib/usage.bash" "$@"   # --help: print the header above
DATA_ROOT="${DATA_ROOT:-data/cifar}"
TEACHER_WEIGHTS="${TEACHER_WEIGHTS:-data/cifar_teachers/vgg13_vanilla/ckpt_epoch_240.pth}"
STAGE1="${STAGE1-runs/GenDD/CIFAR100/vgg13_res20_stage1/best.pth}"  # the run folder of sh/GenDD/CIFAR100/vgg13_res20_stage1.sh
OUTPUT_DIR="${OUTPUT_DIR:-runs/GenDD/CIFAR100/vgg13_res20_stage2}"
exec bash "$ROOT/sh/launch.sh" tools/train.py \
    --method gendd --arch kd_resnet20 --teacher-arch kd_vgg13 --teacher-weights "$TEACHER_WEIGHTS" --gendd-stage1 "$STAGE1" \
    --gendd-teacher-dim 512 --gendd-token-dim 64 --gendd-width 1024 --gendd-depth 3 --gendd-batch-mul 30 \
    --gendd-contraction 0.9 --gendd-mixup-beta 1 --gendd-cond-drop 0.2 --gendd-beta2-min 0.95 \
    --gendd-steps 100 --gendd-samples 1 --gendd-cfg 2 \
    --dataset cifar100 --data-root "$DATA_ROOT" --num-classes 100 --image-size 32 --norm cifar100 --imb-factor 1.0 \
    --epochs 240 --batch-size 64 --device-batch 64 --optimizer adamw --lr 1e-3 --wd 5e-2 \
    --schedule gendd_step --warmup-epochs 50 --milestones 150 180 210 \
    --aug cifar_crop_flip \
    --workers "${WORKERS:-4}" --seed "${SEED:-0}" --output-dir "$OUTPUT_DIR" --resume auto
