#!/usr/bin/env bash
# GPU throughput of ResNet-50 CE, PaCo and GPaCo and of ViT-B/16 CE / GPaCo fine-tuning: bf16 autocast + channels_last, eager and
# torch.compile, synthetic data on the device, the real engine pieces (bench/gpu_speed.py); DeepLabV3+ R50
# and UPerNet Swin-T training iterations/s (pixel GPaCo, ADE20K crop and per-GPU batch); end-to-end
# images/s of a real two-view GPaCo training (tools/train.py) on a generated JPEG folder, --gpu-aug off and on.
# Prints the card's name, images/s, samples/s and it/s per configuration, peak GPU memory, and
# the ratios GPaCo(B)/CE(2B), our CE/bare CE, compiled/eager, --gpu-aug on/off. Each row prints as it
# is measured (the whole table again at the end); a step that raises prints its error in its row and the
# run goes on; the end-to-end rows need scikit-image (pip install -e .[bench]) and say so when it is missing.
#
#   bash bench/gpu.sh                      # B=128 per GPaCo view (CE at 256), 224px
#   bash bench/gpu.sh --batch 64 --no-compile
#   CUDA_VISIBLE_DEVICES=1 bash bench/gpu.sh
#   bash bench/gpu.sh --device cpu --tiny --budget-min 0.05   # CPU smoke test (tests/test_bench_gpu_smoke.py)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python; fi
fi
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1
fi
export PYTHONUNBUFFERED=1  # each row reaches a pipe or log as it is measured (a cut-short run keeps it)
exec "$PY" bench/gpu_speed.py "$@"
