#!/usr/bin/env bash
# Robustness of a checkpoint the DKL adversarial-training code released (WideResNet-34-10):
# natural, PGD-20, CW-20 and AutoAttack accuracy, the protocol of sh/AT/eval_autoattack.sh.
#
# Paper rows (natural / AutoAttack, the README rows whose checkpoints are linked): IKL-AT CIFAR-10
# 85.31 / 57.13 (DKLv1/Adv-training-dkl/README.md line 42; its released log ends at 57.09); IKL-AT
# CIFAR-100 66.51 / 31.43 (line 22; log cifar100_dkl_a3_b20_T4.log: the same) and 65.76 / 31.91
# (line 23); IKL-AT CIFAR-100 with AutoAugment 65.93 / 32.52 (line 12). The GKL-AT README
# (DKLv2/Adv-training-dkl/README.md) links the same files for its CIFAR rows: they are IKL-AT
# results. The released runs are alpha 3 (a3_b20_T4), not the scripts' alpha 4 / 5.
# Original: jiequancui/DKL DKLv1/Adv-training-dkl/auto_attacks/eval.py run by its sh/eval.sh
# (AutoAttack standard, L-inf 8/255, the first 10,000 test images, batch 200, --preprocess 01).
# Model: CHECKPOINT (default pretrained/dkl_at/ikl_at_cifar10.pt), a file from the README's
# links, put there by hand (nothing is downloaded): a DataParallel state dict with 'module.'
# keys (ours-model-epoch*.pt, the averaged ours-model-epoch-SWA0.91200.pt), read as --arch
# wrn34_10 on pixels in [0, 1]. DATASET=cifar10 (default) or cifar100: the test set and the class
# count. The 1M / 20M / 50M synthetic-data rows are a WideResNet-28-10 with Swish, which gpaco
# does not build.
# Resuming: as sh/AT/eval_autoattack.sh (OUTPUT_DIR, default the checkpoint's folder /adversarial).
#
# GPUs: one process on one GPU (the tool is not distributed; NGPUS is ignored).
# Data: DATA_ROOT holds cifar-10-batches-py / cifar-100-python (the test set).
# Launcher (sh/launch.sh): DRY_RUN=1 (a quick check: every row on a few synthetic images when
# DATA_ROOT is absent, a randomly initialised network when the checkpoint is absent; writes
# nothing); EXTRA_ARGS="--flag value" (appended last). Relative paths are relative to the
# repository root.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
. "$ROOT/sh/lib/usage.bash" "$@"   # --help: print the header above
DATA_ROOT="${DATA_ROOT:-data/cifar}"
DATASET="${DATASET:-cifar10}"
CHECKPOINT="${CHECKPOINT:-pretrained/dkl_at/ikl_at_${DATASET}.pt}"
case "$DATASET" in
    cifar10) NUM_CLASSES=10 ;;
    cifar100) NUM_CLASSES=100 ;;
    *) echo "error: DATASET=$DATASET: expected cifar10 or cifar100" >&2; exit 2 ;;
esac
NGPUS=1 NNODES=1 exec bash "$ROOT/sh/launch.sh" tools/eval_adversarial.py \
    --weights "$CHECKPOINT" --arch wrn34_10 --num-classes "$NUM_CLASSES" --norm none --image-size 32 \
    --dataset "$DATASET" --data-root "$DATA_ROOT" \
    --attacks clean pgd20 cw20 autoattack --epsilon 8 --step-size 2 --autoattack-version standard \
    --max-images 10000 --batch-size 200 --seed 0 \
    --workers "${WORKERS:-4}" ${OUTPUT_DIR:+--output-dir "$OUTPUT_DIR"}
