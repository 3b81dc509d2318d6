#!/usr/bin/env bash
# GenDD stage 2, ImageNet-1k, BEiT-v2-B -> ResNet-50 (A2, 300 epochs): train the student (resnet50)
# to condition a diffusion model of the teacher's feature.
#
# Paper row: none in the README of the pinned commit (a later upstream README, not part of it, lists
# GenDD BEiT-v2-B -> ResNet-50 A2 at 82.01 top-1 for this script). The original has no eval script
# for the BEiT rows; the 5-sample protocol of the others is tools/eval.py --checkpoint
# runs/GenDD/ImageNet/beitb_res50_A2_stage2/best.pth --gendd-samples 5 --gendd-steps 64 --data-root
# data/imagenet --test-list data/imagenet/val.txt --num-classes 1000 --norm imagenet.
# Original: jiequancui/Generative-Distribution-Distillation @ 9246d0b,
# GenDD_imagenet/sh/imagenet_train_beitr50_gendd_A2.sh, its second command
# (main_supervised_gendd.py), the source of every hyperparameter below.
# GPUs: the original ran 8 GPUs x 64 images (SBATCH --gres=gpu:8, -b 512, DDP). --batch-size is the
# global batch (lr not rescaled); --device-batch 64 computes BatchNorm and timm's mixup / cutmix
# pairs over groups of 64 images, as its GPUs did, on any GPU count whose processes hold a multiple
# of 64 (docs/recipes.md#same-statistics-on-any-gpu-count).
# Hyperparameters: 300 epochs, batch 512, AdamW lr 2e-3 with beta2 rising per step from .96 to .999
# by a half cosine (--gendd-beta2-min 0.96), wd 2e-2 on every parameter but the denoiser's (0); LR:
# lr (e + 1) / 20 in epochs e < 20 (from 0), then 1e-6 + (lr - 1e-6)/2 (1 + cos(pi (e - 20 + 1) /
# (300 - 20))), the last epoch at 1e-6 (--schedule gendd_cosine --warmup-epochs 20 --min-lr 1e-6).
# Mixing: timm Mixup on every batch, mixup alpha 0.1, cutmix alpha 1.0, switch probability .5, mode
# batch, label smoothing 0 inside the mixed targets (--mixup 0.1 --cutmix 1.0 --mixup-prob 1
# --mixup-switch-prob 0.5 --label-smoothing 0); the CE takes the soft targets and the contraction
# pulls toward the targets' mix of teacher-classifier rows (y @ W).
# GenDD: the teacher's 768-d feature is cut into 12 tokens of 64 (--gendd-token-dim 64), contracted
# toward the label's teacher-classifier row with s .9 (--gendd-contraction 0.9), no feature mixup
# (--gendd-mixup-beta 0; the script passes --beta 0, the images are mixed instead), each token row
# repeated 10 times with its own step and noise (--gendd-batch-mul 10), conditions dropped with p .2
# (--gendd-cond-drop 0.2); the denoiser is an adaLN MLP, width 1024, 3 blocks, conditioned on
# LayerNorm(student feature). Loss: diffusion + CE of the linear probe (the student classifier on
# the detached feature), weight 1 each. Validation: the teacher classifier on 1 sampled feature per
# image, 64 respaced steps, guidance 2 (--gendd-samples 1 --gendd-steps 64 --gendd-cfg 2); the
# probe's accuracy beside it.
# Stage 1: STAGE1 (default: checkpoint.pth, the last epoch, of
# sh/GenDD/ImageNet/beitb_res50_A2_stage1.sh, as the script reloads stage 1's checkpoint.pth.tar;
# the trunk and the never-trained student classifier are loaded, the projection dropped; STAGE1=
# (empty) trains from scratch).
# Aug: RandomResizedCrop 224 (scale .6-1) + flip + ColorJitter(.4, .4, .4) + RandAugment
# rand-n2-m7-mstd0.5 (timm's, translate .45 x 224, fill = the mean) (the driver's --aug_type randaug
# with --crop_scale 0.6): --aug randcls06 --randaug-n 2 --randaug-m 7. Evaluation Resize 256 + CenterCrop
# 224; ImageNet mean/std.
# Teacher: BEiT-v2 Base (--teacher-arch beitv2_base_patch16_224, timm's network), TEACHER_WEIGHTS
# (default data/imagenet_teachers/beitv2_base_patch16_224_pt1k_ft21kto1k_new.pth: the flat state
# dict the original loads, or the BEiT-v2 release file ..._pt1k_ft21kto1k.pth; put there by hand,
# nothing is downloaded). Its feature is fc_norm of the mean patch token (768-d); frozen in eval
# mode on the student's augmented (and mixed) image; its head is copied into the student model as a
# frozen buffer pair.
#
# Data: DATA_ROOT is the ImageNet-2012 folder (train/, val/) with the split lists train.txt and
# val.txt ('relative/path label' lines, labels 0..999 in sorted-wnid order). There is no held-out
# selection split: VAL_LIST and TEST_LIST are both val.txt (the 50k val set), as in the original
# (its model_best.pth.tar, selected on val, is what its eval scripts report).
# Launcher (sh/launch.sh): NGPUS (default: all visible GPUs), NNODES, NODE_RANK, MASTER_ADDR,
# MASTER_PORT; DRY_RUN=1 (a quick check; synthetic data when DATA_ROOT is absent, a teacher with
# random weights when TEACHER_WEIGHTS is absent, a student from scratch when STAGE1 is absent);
# EXTRA_ARGS="--flag value" (appended last: overrides any flag here). Relative paths are relative to
# the repository root. Under SLURM: bash sh/slurm.sh <this recipe> [sbatch args].
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
. "$ROOT/sh/lib/usage.bash" "$@"   # --help: print the header above
DATA_ROOT="${DATA_ROOT:-data/imagenet}"
TRAIN_LIST="${TRAIN_LIST:-$DATA_ROOT/train.txt}"
VAL_LIST="${VAL_LIST:-$DATA_ROOT/val.txt}"
TEST_LIST="${TEST_LIST:-$DATA_ROOT/val.txt}"
TEACHER_WEIGHTS="${TEACHER_WEIGHTS:-data/imagenet_teachers/beitv2_base_patch16_224_pt1k_ft21kto1k_new.pth}"
STAGE1="${STAGE1-runs/GenDD/ImageNet/beitb_res50_A2_stage1/checkpoint.pth}"  # the run folder of sh/GenDD/ImageNet/beitb_res50_A2_stage1.sh
OUTPUT_DIR="${OUTPUT_DIR:-runs/GenDD/ImageNet/beitb_res50_A2_stage2}"
exec bash "$ROOT/sh/launch.sh" tools/train.py \
    --method gendd --arch resnet50 --teacher-arch beitv2_base_patch16_224 --teacher-weights "$TEACHER_WEIGHTS" --gendd-stage1 "$STAGE1" \
    --gendd-teacher-dim 768 --gendd-token-dim 64 --gendd-width 1024 --gendd-depth 3 --gendd-batch-mul 10 \
    --gendd-contraction 0.9 --gendd-mixup-beta 0 --gendd-cond-drop 0.2 --gendd-beta2-min 0.96 \
    --gendd-steps 64 --gendd-samples 1 --gendd-cfg 2 \
    --dataset split --data-root "$DATA_ROOT" --train-list "$TRAIN_LIST" --val-list "$VAL_LIST" --test-list "$TEST_LIST" \
    --num-classes 1000 --image-size 224 --norm imagenet \
    --epochs 300 --batch-size 512 --device-batch 64 --optimizer adamw --lr 2e-3 --wd 2e-2 \
    --schedule gendd_cosine --warmup-epochs 20 --min-lr 1e-6 \
    --aug randcls06 --randaug-n 2 --randaug-m 7 \
    --mixup 0.1 --cutmix 1.0 --mixup-prob 1 --mixup-switch-prob 0.5 --label-smoothing 0 \
    --workers "${WORKERS:-8}" --seed "${SEED:-0}" --output-dir "$OUTPUT_DIR" --resume auto
