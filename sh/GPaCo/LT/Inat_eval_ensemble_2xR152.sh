#!/usr/bin/env bash
# GPaCo, iNaturalist 2018, ensemble of two ResNet-152: sum of the raw logits.
#
# Paper row: GPaCo iNaturalist 2018, ensemble (2-ResNet-152): 79.8 top-1 (README table).
# Original: GPaCo/LT/paco_lt_ensemble.py sums raw logits (its released script pairs a ResNeXt-101
# with a ResNeXt-50 on ImageNet-LT); this recipe is the README row's two ResNet-152
# (docs/method.md#metrics). Two training runs of sh/GPaCo/LT/Inat_train_R152.sh
# that differ in their seed: CHECKPOINT_A defaults to its best.pth, CHECKPOINT_B to the run
#   SEED=1 OUTPUT_DIR=runs/GPaCo/LT/Inat_train_R152_seed1 bash sh/GPaCo/LT/Inat_train_R152.sh
# Ours or the original's released files (tools/eval.py detects the layout). Override the
# checkpoints through these variables, not EXTRA_ARGS (a further --checkpoint in EXTRA_ARGS would
# join the ensemble). SAVE_LOGITS=FILE.npy also writes the summed logits in test-list order.
#
# Data: DATA_ROOT is the iNaturalist 2018 folder with iNaturalist18_{train,val}.txt; the report is
# on iNaturalist18_val (24,426 images, the paper's split), many/medium/few from the train counts.
# Launcher (sh/launch.sh): NGPUS (default: all visible GPUs), NNODES, NODE_RANK, MASTER_ADDR,
# MASTER_PORT; DRY_RUN=1 (a quick check; synthetic data when DATA_ROOT is absent);
# EXTRA_ARGS="--flag value" (appended last: overrides any flag here). Relative paths are
# relative to the repository root. Under SLURM: bash sh/slurm.sh <this recipe> [sbatch args].
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
. "$ROOT/sh/lib/usage.bash" "$@"   # --help: print the header above
DATA_ROOT="${DATA_ROOT:-data/inat2018}"
TRAIN_LIST="${TRAIN_LIST:-$DATA_ROOT/iNaturalist18_train.txt}"
TEST_LIST="${TEST_LIST:-$DATA_ROOT/iNaturalist18_val.txt}"
CHECKPOINT_B="${CHECKPOINT_B:-runs/GPaCo/LT/Inat_train_R152_seed1/best.pth}"  # the SEED=1 run above
CHECKPOINT_A="${CHECKPOINT_A:-runs/GPaCo/LT/Inat_train_R152/best.pth}"        # sh/GPaCo/LT/Inat_train_R152.sh
OUTPUT_DIR="${OUTPUT_DIR:-runs/GPaCo/LT/Inat_eval_ensemble_2xR152}"
LOGITS=()
if [ -n "${SAVE_LOGITS:-}" ]; then
    LOGITS=(--save-logits "$SAVE_LOGITS")
fi
exec bash "$ROOT/sh/launch.sh" tools/eval.py \
    --checkpoint "$CHECKPOINT_B" --arch resnet152 \
    --checkpoint "$CHECKPOINT_A" --arch resnet152 \
    --method gpaco --proj-dim 128 --queue-size 8192 \
    --dataset split --data-root "$DATA_ROOT" --train-list "$TRAIN_LIST" --test-list "$TEST_LIST" \
    --num-classes 8142 --image-size 224 --norm inat \
    --batch-size 128 --workers "${WORKERS:-8}" --output-dir "$OUTPUT_DIR" ${LOGITS[@]+"${LOGITS[@]}"}
