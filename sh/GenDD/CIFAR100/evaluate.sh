#!/usr/bin/env bash
# GenDD, CIFAR-100: evaluate a stage-2 student as published, with 5 sampled features per image.
#
# Paper row: none in the original README (GenDD's CIFAR-100 results are in the paper's table only).
# Original: jiequancui/Generative-Distribution-Distillation @ 9246d0b, GenDD_cifar/sh/evaluate.sh.
# Mended: every line of that script is commented out, so it evaluates nothing; its lines show the
# intended call, train_student_gendd.py --evaluate --num_sampling 5 --resume
# <run>/<student>_best.pth, which is this recipe: tools/eval.py --checkpoint <stage-2 run>/best.pth
# --gendd-samples 5. Its lines also name ShuffleV1, ShuffleV2 and MobileNetV2 students, which have
# no GenDD training script (and no recipe here).
# PAIR (default res32x4_res8x4; one of res110_res32, res56_res20, res32x4_res8x4, vgg13_vgg8,
# vgg13_res20, wrn40_2_res8x4, wrn40_2_wrn_16_2, wrn40_2_wrn_40_1) names the stage-2 recipe
# sh/GenDD/CIFAR100/<PAIR>_stage2.sh, whose student and teacher feature size the model is built
# with; CHECKPOINT defaults to that run's best.pth (the student, its denoiser and the teacher
# classifier are loaded from it; no teacher file is read). best.pth was selected on the test set, as
# the original's _best.pth the published numbers came from; CHECKPOINT=$TRAIN_DIR/checkpoint.pth
# evaluates the last epoch instead, what the driver's comment says its numbers are.
# Sampling: 5 features per image, averaged, then the teacher classifier; 100 respaced steps,
# guidance 2, temperature 1 (--gendd-samples 5 --gendd-steps 100; guidance 2 is the checkpoint's
# --gendd-cfg, the value the original hard-codes with temperature 1). The noise is seeded, so a
# rerun prints the same number (the original's was not). The linear probe's accuracy is reported
# beside it.
#
# Data: DATA_ROOT holds cifar-100-python; the CIFAR-100 test set, normalised with CIFAR-100's mean
# and std (--norm cifar100).
# Launcher (sh/launch.sh): NGPUS (default: all visible GPUs), NNODES, NODE_RANK, MASTER_ADDR,
# MASTER_PORT; DRY_RUN=1 (a quick check; synthetic data when DATA_ROOT is absent, random weights
# when CHECKPOINT is absent); EXTRA_ARGS="--flag value" (appended last: overrides any flag here).
# Relative paths are relative to the repository root. Under SLURM: bash sh/slurm.sh <this recipe>
# [sbatch args].
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
. "$ROOT/sh/lib/usage.bash" "$@"   # --help: print the header above
DATA_ROOT="${DATA_ROOT:-data/cifar}"
PAIR="${PAIR:-res32x4_res8x4}"  # the student of sh/GenDD/CIFAR100/<PAIR>_stage2.sh
case "$PAIR" in
    res110_res32) STUDENT=kd_resnet32 TEACHER_DIM=64 ;;
    res56_res20) STUDENT=kd_resnet20 TEACHER_DIM=64 ;;
    res32x4_res8x4) STUDENT=kd_resnet8x4 TEACHER_DIM=256 ;;
    vgg13_vgg8) STUDENT=kd_vgg8 TEACHER_DIM=512 ;;
    vgg13_res20) STUDENT=kd_resnet20 TEACHER_DIM=512 ;;
    wrn40_2_res8x4) STUDENT=kd_resnet8x4 TEACHER_DIM=128 ;;
    wrn40_2_wrn_16_2) STUDENT=kd_wrn_16_2 TEACHER_DIM=128 ;;
    wrn40_2_wrn_40_1) STUDENT=kd_wrn_40_1 TEACHER_DIM=128 ;;
    *) echo "error: PAIR=$PAIR: no sh/GenDD/CIFAR100/${PAIR}_stage2.sh (pairs: res110_res32 res56_res20 res32x4_res8x4 vgg13_vgg8 vgg13_res20 wrn40_2_res8x4 wrn40_2_wrn_16_2 wrn40_2_wrn_40_1)" >&2; exit 2 ;;
esac
TRAIN_DIR="${TRAIN_DIR:-runs/GenDD/CIFAR100/${PAIR}_stage2}"  # its run folder
CHECKPOINT="${CHECKPOINT:-$TRAIN_DIR/best.pth}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/GenDD/CIFAR100/evaluate}"
exec bash "$ROOT/sh/launch.sh" tools/eval.py \
    --checkpoint "$CHECKPOINT" --method gendd --arch "$STUDENT" --gendd-teacher-dim "$TEACHER_DIM" \
    --gendd-samples 5 --gendd-steps 100 \
    --dataset cifar100 --data-root "$DATA_ROOT" --num-classes 100 --image-size 32 --norm cifar100 --imb-factor 1.0 \
    --batch-size 64 --workers "${WORKERS:-4}" --output-dir "$OUTPUT_DIR"
