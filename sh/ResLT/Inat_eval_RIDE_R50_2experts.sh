#!/usr/bin/env bash
# RIDE-ResLT, iNaturalist 2018, RIDE ResNet-50 (3 experts): evaluate a checkpoint with 2 experts.
#
# Paper row: RIDEResNeXt-ResLT (3 experts) iNaturalist 2018: 72.9 top-1 (ResLT README, iNaturalist table).
# The README does not say which evaluation gave 72.9; report both. This recipe averages
# experts 0 and 1 ONLY: the original's eval script
# (Inat/sh/R50_ride_reslt_eval.sh, --val_num_experts 2, whose (1/2) x sum is our mean of 2).
# sh/ResLT/Inat_eval_RIDE_R50.sh scores all 3 experts.
# Original: jiequancui/ResLT Inat/sh/R50_ride_reslt_eval.sh: each expert pools its layer4 map before its
# ResLT head, scores H + M with W / ||W||^0.3 and no bias (T is never used). CHECKPOINT defaults to the
# best.pth of sh/ResLT/Inat_train_RIDE_R50.sh.
#
# Data: DATA_ROOT holds iNaturalist18_{train,val}.txt; the val list (24,426 images, 3 per class) is
# iNaturalist's only labelled test set, so top-1 is the mean per-class accuracy.
# Launcher (sh/launch.sh): NGPUS (default: all visible GPUs), NNODES, NODE_RANK, MASTER_ADDR,
# MASTER_PORT; DRY_RUN=1 (a quick check; synthetic data when DATA_ROOT is absent);
# EXTRA_ARGS="--flag value" (appended last: overrides any flag here). Relative paths are
# relative to the repository root. Under SLURM: bash sh/slurm.sh <this recipe> [sbatch args].
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
. "$ROOT/sh/lib/usage.bash" "$@"   # --help: print the header above
DATA_ROOT="${DATA_ROOT:-data/inat2018}"
TRAIN_LIST="${TRAIN_LIST:-$DATA_ROOT/iNaturalist18_train.txt}"
TEST_LIST="${TEST_LIST:-$DATA_ROOT/iNaturalist18_val.txt}"
TRAIN_DIR="${TRAIN_DIR:-runs/ResLT/Inat_train_RIDE_R50}"  # the run folder of sh/ResLT/Inat_train_RIDE_R50.sh
CHECKPOINT="${CHECKPOINT:-$TRAIN_DIR/best.pth}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/ResLT/Inat_eval_RIDE_R50_2experts}"
exec bash "$ROOT/sh/launch.sh" tools/eval.py \
    --checkpoint "$CHECKPOINT" \
    --method ride_reslt --arch resnet50 --ride-experts 3 --ride-eval-experts 2 \
    --reslt-branch-sizes 6600 --reslt-pool after --reslt-original-eval-pooling --reslt-gamma 0.3 \
    --dataset split --data-root "$DATA_ROOT" --train-list "$TRAIN_LIST" --test-list "$TEST_LIST" \
    --num-classes 8142 --image-size 224 --norm inat \
    --batch-size 128 --workers "${WORKERS:-8}" --output-dir "$OUTPUT_DIR"
