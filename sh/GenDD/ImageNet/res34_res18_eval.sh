#!/usr/bin/env bash
# GenDD, ImageNet-1k, ResNet-34 -> ResNet-18: evaluate the stage-2 student as published (5 samples
# per image).
#
# Paper row: GenDD ResNet-34 -> ResNet-18: 72.38 top-1 (GenDD README.md line 25; KD 71.24 and IKL-KD
# 71.91 on lines 23-24).
# Original: jiequancui/Generative-Distribution-Distillation @ 9246d0b,
# GenDD_imagenet/sh/imagenet_eval_res34res18_gendd.sh (main_supervised_gendd.py --evaluate
# --num_sampling 5 --resume .../model_best.pth.tar).
# CHECKPOINT defaults to the best.pth of sh/GenDD/ImageNet/res34_res18_stage2.sh (the student, its
# denoiser and the teacher classifier are loaded from it; no teacher file is read). best.pth was
# selected on the val set it is reported on, as the original's model_best;
# CHECKPOINT=$TRAIN_DIR/checkpoint.pth evaluates the last epoch instead.
# Sampling: 5 features per image, averaged, then the teacher classifier; 64 respaced steps, guidance
# 2, temperature 1 (--gendd-samples 5 --gendd-steps 64; guidance 2 is the checkpoint's --gendd-cfg,
# the value the original hard-codes with temperature 1). The noise is seeded, so a rerun prints the
# same number (the original's was not). The linear probe's accuracy is reported beside it. Cost:
# docs/method.md#gendd-sampling-cost.
#
# Data: DATA_ROOT is the ImageNet-2012 folder with val.txt; all 50,000 val images (the original adds
# a tail loader to its DistributedSampler for the same count).
# Launcher (sh/launch.sh): NGPUS (default: all visible GPUs), NNODES, NODE_RANK, MASTER_ADDR,
# MASTER_PORT; DRY_RUN=1 (a quick check; synthetic data when DATA_ROOT is absent, random weights
# when CHECKPOINT is absent); EXTRA_ARGS="--flag value" (appended last: overrides any flag here).
# Relative paths are relative to the repository root. Under SLURM: bash sh/slurm.sh <this recipe>
# [sbatch args].
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
. "$ROOT/sh/lib/usage.bash" "$@"   # --help: print the header above
DATA_ROOT="${DATA_ROOT:-data/imagenet}"
TEST_LIST="${TEST_LIST:-$DATA_ROOT/val.txt}"
TRAIN_DIR="${TRAIN_DIR:-runs/GenDD/ImageNet/res34_res18_stage2}"  # the run folder of sh/GenDD/ImageNet/res34_res18_stage2.sh
CHECKPOINT="${CHECKPOINT:-$TRAIN_DIR/best.pth}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/GenDD/ImageNet/res34_res18_eval}"
exec bash "$ROOT/sh/launch.sh" tools/eval.py \
    --checkpoint "$CHECKPOINT" --method gendd --arch resnet18 --gendd-teacher-dim 512 \
    --gendd-samples 5 --gendd-steps 64 \
    --dataset split --data-root "$DATA_ROOT" --test-list "$TEST_LIST" --num-classes 1000 --image-size 224 --norm imagenet \
    --batch-size 512 --workers "${WORKERS:-8}" --output-dir "$OUTPUT_DIR"
