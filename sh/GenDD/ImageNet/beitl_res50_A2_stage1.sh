#!/usr/bin/env bash
# GenDD stage 1, ImageNet-1k, BEiT-v2-L -> ResNet-50 (A2, 300 epochs): pre-train the student
# (resnet50) through the frozen teacher classifier.
#
# Paper row: GenDD BEiT-v2-L -> ResNet-50 (A2, 300 epochs): 81.64 top-1 (GenDD README.md line 33; KD
# 80.89 and DKD 80.77 on lines 31-32; a later upstream README, not the pinned commit, gives 81.83).
# This stage prepares sh/GenDD/ImageNet/beitl_res50_A2_stage2.sh, which starts from its last epoch
# (checkpoint.pth; the script --reload's stage 1's checkpoint.pth.tar).
# Original: jiequancui/Generative-Distribution-Distillation @ 9246d0b,
# GenDD_imagenet/sh/imagenet_train_beitlr50_gendd_A2.sh, its first command (main_gendd_pretrain.py),
# the source of every hyperparameter below.
# GPUs: the original ran 8 GPUs x 64 images (SBATCH --gres=gpu:8, -b 512, DDP). --batch-size is the
# global batch (lr not rescaled); --device-batch 64 computes BatchNorm and timm's mixup / cutmix
# pairs over groups of 64 images, as its GPUs did, on any GPU count whose processes hold a multiple
# of 64 (docs/recipes.md#same-statistics-on-any-gpu-count).
# Hyperparameters: 20 epochs, batch 512, AdamW betas (0.9, 0.999) lr 2e-3, wd 2e-2 on every
# trainable parameter (--optimizer adamw), per-epoch cosine without warmup from lr to 1e-6, epoch e
# from 0 at 1e-6 + (lr - 1e-6)/2 (1 + cos(pi (e + 1) / 20)), the last at 1e-6 (--schedule
# gendd_cosine --warmup-epochs 0 --min-lr 1e-6); loss CE of the frozen teacher classifier applied to
# Linear(2048 -> 1024)(student feature), a projection dropped after this stage (--method
# gendd_stage1 --gendd-teacher-dim 1024); the student's own classifier is not trained (it becomes
# stage 2's linear probe). Mixing: timm Mixup on every batch, mixup alpha 0.1, cutmix alpha 1.0,
# switch probability .5, mode batch, label smoothing 0 inside the mixed targets (--mixup 0.1
# --cutmix 1.0 --mixup-prob 1 --mixup-switch-prob 0.5 --label-smoothing 0); the CE takes the soft
# targets. The student trains from scratch.
# Aug: RandomResizedCrop 224 (scale .08-1) + flip + ColorJitter(.4, .4, .4) + RandAugment
# rand-n2-m7-mstd0.5 (timm's, translate .45 x 224, fill = the mean) (--aug randcls --randaug-n 2
# --randaug-m 7: the driver's --aug_type randaug, whose stage-1 crop keeps torchvision's default
# scale); evaluation Resize 256 + CenterCrop 224; ImageNet mean/std.
# Teacher: BEiT-v2 Large (--teacher-arch beitv2_large_patch16_224, timm's network), TEACHER_WEIGHTS
# (default data/imagenet_teachers/beitv2_large_patch16_224_pt1k_ft21kto1k_new.pth: the flat state
# dict the original loads, or the BEiT-v2 release file ..._pt1k_ft21kto1k.pth; put there by hand,
# nothing is downloaded). Its feature is fc_norm of the mean patch token (1024-d); frozen in eval
# mode on the student's augmented (and mixed) image; its head is copied into the student model as a
# frozen buffer pair.
#
# Data: DATA_ROOT is the ImageNet-2012 folder (train/, val/) with the split lists train.txt and
# val.txt ('relative/path label' lines, labels 0..999 in sorted-wnid order). There is no held-out
# selection split: VAL_LIST and TEST_LIST are both val.txt (the 50k val set), as in the original
# (its model_best.pth.tar, selected on val, is what its eval scripts report).
# Launcher (sh/launch.sh): NGPUS (default: all visible GPUs), NNODES, NODE_RANK, MASTER_ADDR,
# MASTER_PORT; DRY_RUN=1 (a quick check; synthetic data when DATA_ROOT is absent, a teacher with
# random weights when TEACHER_WEIGHTS is absent); EXTRA_ARGS="--flag value" (appended last:
# overrides any flag here). Relative paths are relative to the repository root. Under SLURM: bash
# sh/slurm.sh <this recipe> [sbatch args].
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
. "$ROOT/sh/lib/usage.bash" "$@"   # --help: print the header above
DATA_ROOT="${DATA_ROOT:-data/imagenet}"
TRAIN_LIST="${TRAIN_LIST:-$DATA_ROOT/train.txt}"
VAL_LIST="${VAL_LIST:-$DATA_ROOT/val.txt}"
TEST_LIST="${TEST_LIST:-$DATA_ROOT/val.txt}"
TEACHER_WEIGHTS="${TEACHER_WEIGHTS:-data/imagenet_teachers/beitv2_large_patch16_224_pt1k_ft21kto1k_new.pth}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/GenDD/ImageNet/beitl_res50_A2_stage1}"
exec bash "$ROOT/sh/launch.sh" tools/train.py \
    --method gendd_stage1 --arch resnet50 --teacher-arch beitv2_large_patch16_224 --teacher-weights "$TEACHER_WEIGHTS" --gendd-teacher-dim 1024 \
    --dataset split --data-root "$DATA_ROOT" --train-list "$TRAIN_LIST" --val-list "$VAL_LIST" --test-list "$TEST_LIST" \
    --num-classes 1000 --image-size 224 --norm imagenet \
    --epochs 20 --batch-size 512 --device-batch 64 --optimizer adamw --lr 2e-3 --wd 2e-2 \
    --schedule gendd_cosine --warmup-epochs 0 --min-lr 1e-6 \
    --aug randcls --randaug-n 2 --randaug-m 7 \
    --mixup 0.1 --cutmix 1.0 --mixup-prob 1 --mixup-switch-prob 0.5 --label-smoothing 0 \
    --workers "${WORKERS:-8}" --seed "${SEED:-0}" --output-dir "$OUTPUT_DIR" --resume auto
