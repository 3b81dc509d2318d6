#!/usr/bin/env bash
# GKL-AT adversarial training with AutoAugment, CIFAR-10, WideResNet-34-10: train, then write the
# weight average.
#
# Paper row: none (the READMEs have no CIFAR-10 AutoAugment row).
# Original: jiequancui/DKL DKLv2/Adv-training-dkl/sh/train_dkl_cifar10_autoaug.sh
# (train_dkl_cifar10.py on CIFAR10V2, then swa.py DIR 0.9 1 200) (GKL-AT, TPAMI 2026, arXiv
# 2503.08038). The source of every hyperparameter below.
# GPUs: the original ran 4 GPUs x 64 images (DataParallel: BatchNorm per GPU; its batch of 128
# samples is 256 images, [128 plain views; 128 AutoAugment views], split in four: two GPUs saw plain
# views, two AutoAugment ones). --batch-size is the global batch of samples (lr not rescaled);
# --bn-device-batch 64 normalises BatchNorm over the same groups of 64 images. Run it on 1 or 2 GPUs
# (NGPUS=1 or 2): each process then holds whole groups of 64 plain or 64 AutoAugment images
# (docs/recipes.md#which-recipes-reproduce-the-per-gpu-statistics). The loss is each process's batch
# mean, as DataParallel's gathered logits gave one loss over the whole batch.
# Hyperparameters: 200 epochs, batch 128 (last partial batch kept), SGD momentum .9 lr 0.2, wd 5e-4,
# cosine LR per epoch with no warm-up (the original's lr x (1 + cos(pi e / 201)) / 2 on its 1-based
# epochs is --schedule cosine --warmup-epochs 0 on ours). Attack (model in eval mode): random start
# x + 0.001 N(0, 1), radius 8/255 ramped with the epoch (8/255 x e / 200), 5 sign-gradient steps of
# radius / 2 at every epoch (the 'high' budget as the released code runs it, docs/migrating.md),
# objective GKL-AT with alpha 1, beta 0 (the soft CE alone, i.e. KL), gamma 1 (the training alpha,
# beta and gamma are not used, docs/migrating.md). Loss CE(natural) + GKL-AT(alpha 4, beta 20, gamma
# 1, T 1 in the loss (the script never passes T to it); teacher = the natural logits, student = the
# adversarial ones, both with gradient; pair weights = the class-wise mean softmax(natural / T), T
# 4, of the previous epoch, raised to gamma; the MSE divided by the weights' sum). The AutoAugment
# half's robust term is weighted 0.5 (the script's --aug_weight 0.5). AWP gamma .005 from epoch 10
# (one proxy SGD step at the initial lr on the method's proxy loss). After training, the exponential
# average of the epoch weights with decay 0.9 (swa.py DIR 0.9 1 200). Sources: the script
# (WideResNet34_10, epsilon 8, lr 0.2, budget high, alpha, beta, T, gamma, the AutoAugment weight
# .5, seed 0, 200 epochs, the swa.py call); the training script's defaults (batch, momentum, wd, AWP
# gamma and warm-up, the attack's alpha 1, beta 0, gamma 1).
# Data: no normalisation, the model sees pixels in [0, 1] (--norm none). Each image gives two views,
# RandomCrop 32 pad 4 + flip, and the same followed by the CIFAR-10 AutoAugment policy (for CIFAR-10
# too, as the original's CIFAR10V2; torchvision's policy, docs/migrating.md) (--aug
# cifar_crop_flip_cifar_autoaugment): the CE and the AWP proxy take the 256 images whole, the robust
# term is R(plain half) + w x R(AutoAugment half), the class statistics read the plain half. Each
# step costs twice a plain recipe's.
#
# After training (once, on node 0): tools/average_weights.py writes OUTPUT_DIR/averaged.pth, the
# model the original reports (its ours-model-epoch-SWA0.91200.pt); EVAL=1 then runs
# sh/AT/eval_autoattack.sh on it (AutoAttack takes hours: docs/adversarial.md). A run stopped before
# its last epoch is not averaged: run the recipe again, it resumes and then averages.
# Data: DATA_ROOT holds cifar-10-batches-py; the full CIFAR-10 (--imb-factor 1.0). best.pth is
# selected on natural test accuracy, as the original's per-epoch evaluation; the reported model is
# averaged.pth.
# Launcher (sh/launch.sh): NGPUS (default: all visible GPUs), NNODES, NODE_RANK, MASTER_ADDR,
# MASTER_PORT; DRY_RUN=1 (a quick check of the training; synthetic data when DATA_ROOT is absent;
# no averaging); EXTRA_ARGS="--flag value" (appended last to the training: overrides any flag
# here). Relative paths are relative to the repository root. Under SLURM: bash sh/slurm.sh <this
# recipe> [sbatch args].
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
. "$ROOT/sh/lib/usage.bash" "$@"   # --help: print the header above
DATA_ROOT="${DATA_ROOT:-data/cifar}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/AT/CIFAR10/gkl_at_autoaug}"
bash "$ROOT/sh/launch.sh" tools/train.py \
    --method gkl_at --arch wrn34_10 \
    --at-alpha 4 --at-beta 20 --at-temperature 4 --at-gamma 1 --at-aug-weight 0.5 --attack-alpha 1 --attack-beta 0 \
    --at-epsilon 8 --at-ramp --at-budget high --awp-gamma 0.005 --awp-warmup 10 --at-average-decay 0.9 \
    --dataset cifar10 --data-root "$DATA_ROOT" --num-classes 10 --image-size 32 --norm none --imb-factor 1.0 \
    --epochs 200 --batch-size 128 --bn-device-batch 64 --lr 0.2 --momentum 0.9 --wd 5e-4 \
    --schedule cosine --warmup-epochs 0 \
    --aug cifar_crop_flip_cifar_autoaugment \
    --workers "${WORKERS:-4}" --seed "${SEED:-0}" --output-dir "$OUTPUT_DIR" --resume auto
bash "$ROOT/sh/AT/after_training.bash" "$OUTPUT_DIR"
