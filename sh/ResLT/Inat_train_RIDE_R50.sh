#!/usr/bin/env bash
# RIDE-ResLT, iNaturalist 2018, RIDE ResNet-50 (3 experts, full widths): train.
#
# Paper row: RIDEResNeXt-ResLT (3 experts) iNaturalist 2018: 72.9 top-1 (ResLT README, iNaturalist table;
# RIDEResNeXt without ResLT: 70.8). Which evaluation gave 72.9 is not recorded: this run's metrics.json
# (top-1 on the val list, mean of ALL 3 experts) is the original's training-time validation, which also
# chose its best checkpoint; sh/ResLT/Inat_eval_RIDE_R50_2experts.sh is the original's eval script
# (experts 0 and 1 only). Report both. The README names a ResNeXt, but the script builds a ResNet-50.
# Original: jiequancui/ResLT Inat/sh/R50_ride_reslt.sh (iNaturalTrain_reslt_ride.py,
# networks/RIDEResNet.py ResNet50Model); total batch 256.
# Network: shared stem + layer1 + layer2 of a ResNet-50, then 3 experts, each with its own full-width
# layer3 / layer4 (2048-d), its own ResLT head and classifier (8142 classes). The original's head is a
# 1x1 conv 2048 -> 3 x 2048 whose third (T) slice reaches no loss and no prediction: here it is
# 2048 -> 2 x 2048 (H and M), the same H / M outputs; 142.87 M parameters (the original's 155.47 M
# less the unused T channels).
# GPUs: the original ran 4 GPUs x 64 images (SBATCH --gres=gpu:4, nn.DataParallel: BatchNorm per GPU).
# --batch-size is the global batch (lr not rescaled); --device-batch 64 normalises BatchNorm over groups
# of 64 images on any GPU count whose processes hold a multiple of 64 (BatchNorm only for this method;
# the loss sees the whole batch) (docs/recipes.md#same-statistics-on-any-gpu-count).
# Hyperparameters (docs/method.md#ride-reslt): 200 epochs, SGD momentum .9 lr .1 (5 warmup epochs +
# the off-by-one cosine, --schedule cosine --warmup-epochs 5, unlike plain iNat ResLT), wd 1e-4 on every
# parameter, beta .85, the 3 experts' ResLT losses summed, two branches (H and the 6600 rarest classes),
# plain CE for the fused term, aug RRC + flip (--aug crop_flip). Evaluation pools before each head
# (--reslt-original-eval-pooling), gamma .3, no bias, H + M logits.
#
# Data: DATA_ROOT holds iNaturalist18_{train,val}.txt; best.pth and metrics.json both use the
# val list (iNaturalist has no separate test labels), as the original.
# Launcher (sh/launch.sh): NGPUS (default: all visible GPUs), NNODES, NODE_RANK, MASTER_ADDR,
# MASTER_PORT; DRY_RUN=1 (a quick check; synthetic data when DATA_ROOT is absent);
# EXTRA_ARGS="--flag value" (appended last: overrides any flag here). Relative paths are
# relative to the repository root. Under SLURM: bash sh/slurm.sh <this recipe> [sbatch args].
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
. "$ROOT/sh/lib/usage.bash" "$@"   # --help: print the header above
DATA_ROOT="${DATA_ROOT:-data/inat2018}"
TRAIN_LIST="${TRAIN_LIST:-$DATA_ROOT/iNaturalist18_train.txt}"
VAL_LIST="${VAL_LIST:-$DATA_ROOT/iNaturalist18_val.txt}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/ResLT/Inat_train_RIDE_R50}"
exec bash "$ROOT/sh/launch.sh" tools/train.py \
    --method ride_reslt --arch resnet50 --ride-experts 3 \
    --dataset split --data-root "$DATA_ROOT" --train-list "$TRAIN_LIST" --val-list "$VAL_LIST" --test-list "$VAL_LIST" \
    --num-classes 8142 --image-size 224 --norm inat \
    --epochs 200 --batch-size 256 --device-batch 64 --lr 0.1 --momentum 0.9 --wd 1e-4 --schedule cosine --warmup-epochs 5 \
    --reslt-beta 0.85 --reslt-gamma 0.3 --reslt-branch-sizes 6600 --reslt-pool after --reslt-original-eval-pooling \
    --aug crop_flip \
    --workers "${WORKERS:-8}" --seed "${SEED:-0}" --output-dir "$OUTPUT_DIR" --resume auto
