#!/usr/bin/env bash
# ResLT, iNaturalist 2018, ResNet-50: evaluate a checkpoint.
#
# Paper row: plain ResLT iNaturalist R50: no number in the README (a link only).
# Original: jiequancui/ResLT Inat/sh/ evaluation script of R50.sh, which evaluates with gamma 0.0
# (training used .3): this recipe passes --reslt-gamma 0.0 as the original's eval script does.
# CHECKPOINT defaults to the best.pth of sh/ResLT/Inat_train_R50.sh.
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
TRAIN_DIR="${TRAIN_DIR:-runs/ResLT/Inat_train_R50}"  # the run folder of sh/ResLT/Inat_train_R50.sh
CHECKPOINT="${CHECKPOINT:-$TRAIN_DIR/best.pth}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/ResLT/Inat_eval_R50}"
exec bash "$ROOT/sh/launch.sh" tools/eval.py \
    --checkpoint "$CHECKPOINT" \
    --method reslt --arch resnet50 --reslt-branch-sizes 6600 --reslt-head conv --reslt-pool after --reslt-gamma 0.0 \
    --dataset split --data-root "$DATA_ROOT" --train-list "$TRAIN_LIST" --test-list "$TEST_LIST" \
    --num-classes 8142 --image-size 224 --norm inat \
    --batch-size 128 --workers "${WORKERS:-8}" --output-dir "$OUTPUT_DIR"
