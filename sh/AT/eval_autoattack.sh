#!/usr/bin/env bash
# Robustness of an adversarial-training run: natural, PGD-20, CW-20 and AutoAttack accuracy.
#
# Paper rows: the natural / AutoAttack numbers of the DKL adversarial-training READMEs are this
# protocol's clean and autoattack rows (each train recipe under sh/AT/ quotes its row).
# Original: jiequancui/DKL DKLv1/Adv-training-dkl/auto_attacks/eval.py (from the AWP repository),
# run by its sh/eval.sh: fra31 AutoAttack, version standard (APGD-CE, APGD-T with 9 targets, FAB-T
# with 9 targets, Square with 5,000 queries), L-inf epsilon 8/255, the first 10,000 test images in
# batches of 200, the model in eval mode on pixels in [0, 1] (--preprocess 01). Here AutoAttack
# comes from the package pyautoattack (pip install 'gpaco[autoattack]'); the PGD-20 and CW-20 rows
# (20 steps of 2/255, uniform random start) are the literature's usual companions, minutes on a
# GPU next to AutoAttack's hours.
# Model: TRAIN_DIR (default runs/AT/CIFAR10/ikl_at, the run of sh/AT/CIFAR10/ikl_at.sh) and its
# averaged.pth, the weight average the train recipes write after training and the model the
# original reports; CHECKPOINT=file for any other gpaco checkpoint (a run's best.pth, ...). The
# network's weights, normalisation, image size and dataset (cifar10 / cifar100) come from the file;
# --arch wrn34_10 is checked against it (EXTRA_ARGS="--arch NAME" for another network), and the
# images are CIFAR's 32 px.
# The original's released files are evaluated by sh/AT/eval_released.sh.
# Resuming: the results of every finished batch are kept in OUTPUT_DIR (default: the checkpoint's
# folder /adversarial): stop it at any time (SIGTERM, Ctrl-C, the end of a job) and run the same
# command again; it skips the finished batches and ends with the same numbers (docs/adversarial.md).
# A different checkpoint or setting in the same OUTPUT_DIR is refused: give another OUTPUT_DIR.
#
# GPUs: one process on one GPU (the tool is not distributed; NGPUS is ignored). Standard AutoAttack
# on 10,000 CIFAR images with WideResNet-34-10 takes hours on one GPU (docs/adversarial.md).
# Data: DATA_ROOT holds cifar-10-batches-py / cifar-100-python (the test set).
# Launcher (sh/launch.sh): DRY_RUN=1 (a quick check: every row on a few synthetic images when
# DATA_ROOT is absent, a randomly initialised network when the checkpoint is absent; writes
# nothing); EXTRA_ARGS="--flag value" (appended last: e.g. "--attacks clean pgd20" for the fast
# rows only, "--stop-after-batches 10" to split the work over several jobs). Relative paths are
# relative to the repository root.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
. "$ROOT/sh/lib/usage.bash" "$@"   # --help: print the header above
DATA_ROOT="${DATA_ROOT:-data/cifar}"
TRAIN_DIR="${TRAIN_DIR:-runs/AT/CIFAR10/ikl_at}"  # the run folder of a train recipe under sh/AT/
CHECKPOINT="${CHECKPOINT:-$TRAIN_DIR/averaged.pth}"
NGPUS=1 NNODES=1 exec bash "$ROOT/sh/launch.sh" tools/eval_adversarial.py \
    --checkpoint "$CHECKPOINT" --arch wrn34_10 --image-size 32 --data-root "$DATA_ROOT" \
    --attacks clean pgd20 cw20 autoattack --epsilon 8 --step-size 2 --autoattack-version standard \
    --max-images 10000 --batch-size 200 --seed 0 \
    --workers "${WORKERS:-4}" ${OUTPUT_DIR:+--output-dir "$OUTPUT_DIR"}
