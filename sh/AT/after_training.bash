#!/usr/bin/env bash
# The second step of every adversarial-training recipe under sh/AT/ (not a recipe itself):
#
#   bash sh/AT/after_training.bash OUTPUT_DIR
#
# After a finished run it writes OUTPUT_DIR/averaged.pth, the exponential average of the epoch
# weights that the run kept (tools/average_weights.py; the original's `swa.py DIR 0.9 1 200`,
# run after training), and with EVAL=1 evaluates it (sh/AT/eval_autoattack.sh). It does nothing
# when the launcher only printed or dry-ran the training (GPACO_PRINT_ARGV, GPACO_PRINT_CMD,
# DRY_RUN), on nodes other than NODE_RANK 0, and for a run that stopped before its last epoch
# (no OUTPUT_DIR/metrics.json yet: preempted runs exit 0; run the recipe again to resume).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
OUT="${1:?usage: bash sh/AT/after_training.bash OUTPUT_DIR}"

is_true() { case "${1:-}" in ""|0|false|False|no|off) return 1 ;; *) return 0 ;; esac; }
if is_true "${GPACO_PRINT_ARGV:-}" || is_true "${GPACO_PRINT_CMD:-}" || is_true "${DRY_RUN:-}" \
        || [ "${NODE_RANK:-0}" != 0 ]; then
    exit 0
fi
if [ ! -f "$OUT/metrics.json" ]; then
    echo "[AT] $OUT has no metrics.json: the training stopped before its last epoch; run the recipe again to" \
         "resume it (it averages the weights once the run has finished)"
    exit 0
fi
# One process; the training's EXTRA_ARGS are not this tool's.
NGPUS=1 NNODES=1 EXTRA_ARGS= bash sh/launch.sh tools/average_weights.py "$OUT" --overwrite
if is_true "${EVAL:-}"; then
    env -u CHECKPOINT -u OUTPUT_DIR -u EXTRA_ARGS TRAIN_DIR="$OUT" bash sh/AT/eval_autoattack.sh
else
    echo "[AT] evaluate it: TRAIN_DIR=$OUT bash sh/AT/eval_autoattack.sh   (AutoAttack, hours on one GPU)"
fi
