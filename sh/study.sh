#!/usr/bin/env bash
# The study demo: CE, balanced CE and GPaCo on MNIST-LT (sh/demo.sh's data and flags) x 3 seeds,
# on CPU, then the report: mean ± std and 95 % t-intervals over seeds, paired differences
# against CE seed by seed, per-class accuracy against training frequency, reliability diagrams.
#
#   bash sh/study.sh                          # writes runs/study/ (study.md, study.csv, figures, the runs)
#   STUDY_OUT=runs/mine bash sh/study.sh      # elsewhere (a relative path is read from your directory)
#   bash sh/study.sh --seeds 0 1 2 3 4        # more seeds: the finished ones are kept
#   bash sh/study.sh --methods ce gpaco reslt -- --lr 0.1   # any tools/study.py flag; after -- training flags
#   STUDY_TASK=segmentation bash sh/study.sh  # CE, GPaCo, CeCo on sh/demo_seg.sh's digit scenes instead
#   bash sh/study.sh --help                   # this text
#
# What it runs, to fit in 10 minutes on a 2-core CPU: the demo's flags (ResNet-8, 32 px, batch
# 64, lr 0.05) for STUDY_EPOCHS=15 epochs instead of the demo's 30, two runs at a time with one
# thread each (--parallel 2); 9 runs. STUDY_EPOCHS=30 is the demo's schedule (about twice as
# long). Segmentation: STUDY_ITERS=300 iterations (the demo's 700 took 15 min 45 s for the 9 runs,
# the README's table), same 3 seeds; one 300-iteration GPaCo run took 94 CPU-seconds, so about 13
# CPU-minutes for the 9 runs (6-7 minutes on an idle 2-core CPU, estimated). An interrupted study
# continues where it stopped when run again.
# Measured 2026-12-07 on a fresh clone, 2-core Intel Xeon otherwise idle: 7 min 23 s (2 min 7 s to
# create .venv, 5 min 16 s for the runs and the report); top-1 over seeds 0-2: CE 46.00 ± 0.98,
# balanced CE 64.13 ± 2.44, GPaCo 58.73 ± 2.11 (docs/study.md has the report).
# Docs: docs/study.md.
set -euo pipefail
GPACO_TAKES_ARGS=1 . "$(dirname "${BASH_SOURCE[0]}")/lib/usage.bash" "$@"   # --help: print the header above
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$ROOT/sh/lib/caller_paths.bash" STUDY_OUT  # relative: from the caller's directory
cd "$ROOT"
OUT="${STUDY_OUT:-runs/study}"
bash sh/setup_env.sh demo
PY="$ROOT/.venv/bin/python"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" HF_HUB_OFFLINE=1
TASK="${STUDY_TASK:-classification}"

# split the arguments at -- (study flags | training flags), so that ours go in between
own=() extra=() after=0
for a in "$@"; do
    if [ "$after" = 0 ] && [ "$a" = -- ]; then after=1
    elif [ "$after" = 0 ]; then own+=("$a")
    else extra+=("$a"); fi
done

T0=$(date +%s)
case "$TASK" in
    classification)
        "$PY" tools/study.py --out "$OUT" --methods ce balanced_ce gpaco --seeds 0 1 2 --parallel 2 \
            ${own[@]+"${own[@]}"} -- --epochs "${STUDY_EPOCHS:-15}" ${extra[@]+"${extra[@]}"} ;;
    segmentation)
        iters="${STUDY_ITERS:-300}"
        "$PY" tools/study.py --task segmentation --out "$OUT" --methods ce gpaco ceco --seeds 0 1 2 --parallel 2 \
            ${own[@]+"${own[@]}"} -- --iters "$iters" --ckpt-interval "$iters" ${extra[@]+"${extra[@]}"} ;;
    *) echo "error: STUDY_TASK=$TASK: expected classification or segmentation" >&2; exit 2 ;;
esac
echo "study: $OUT/study.md; total $(( $(date +%s) - T0 )) s"
