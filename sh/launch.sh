#!/usr/bin/env bash
# The one launcher every recipe under sh/ calls:
#
#   bash sh/launch.sh tools/train.py --flag value ...     (or tools/eval.py)
#
# One process on one node -> `$PYTHON SCRIPT ARGS` (works on a CPU laptop). Otherwise one
# torchrun per node with its standard static rendezvous:
#   $PYTHON -m torch.distributed.run --nnodes $NNODES --node_rank $NODE_RANK
#       --nproc_per_node $NGPUS --master_addr $MASTER_ADDR --master_port $MASTER_PORT SCRIPT ARGS
# Multi-node: run the same recipe on every node with NNODES/NODE_RANK/MASTER_ADDR set
# (sh/slurm.sh does this under SLURM). --batch-size is the GLOBAL batch and --device-batch the
# original's per-GPU batch, so a recipe computes the original's per-GPU statistics on any number
# of GPUs that divides it (docs/recipes.md#same-statistics-on-any-gpu-count); the launcher prints
# the original's GPU count next to this run's.
#
# Environment:
#   NGPUS        processes per node (default: visible CUDA GPUs -- the entries of
#                CUDA_VISIBLE_DEVICES if set, else `nvidia-smi -L` -- or 1 without any)
#   NNODES       nodes (1)            NODE_RANK    this node's rank (0)
#   MASTER_ADDR  rank-0 host (127.0.0.1)          MASTER_PORT  (29500)
#   PYTHON       interpreter (default: the repo's .venv/bin/python if present, else python3)
#   DRY_RUN=1    append --dry-run (check the config, two small steps, write nothing; the
#                data is replaced by a synthetic stand-in when DATA_ROOT is absent)
#   EXTRA_ARGS   appended LAST, so it overrides any recipe flag without editing the recipe,
#                e.g. EXTRA_ARGS="--epochs 100 --output-dir 'runs/my run'" (shell quoting is
#                honoured: the string is parsed as a bash word list).
#   GPACO_PRINT_ARGV=1  print the script's final argv (everything after SCRIPT) as one JSON
#                line `GPACO_ARGV [...]` (preceded by `GPACO_SCRIPT <script>`) and exit 0
#                without running anything. tests/test_recipes.py uses it to run every recipe's
#                dry run in-process (no interpreter start-up per recipe).
#   GPACO_PRINT_CMD=1   print the full command (interpreter, torchrun flags, script, argv) as
#                one JSON line `GPACO_CMD [...]` and exit 0 without running it.
#
# Relative paths (recipes' DATA_ROOT, OUTPUT_DIR, ...) are relative to the repository root:
# the launcher runs from there.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GPACO_TAKES_ARGS=1 . "$ROOT/sh/lib/usage.bash" "$@"   # --help: print the header above
cd "$ROOT"

if [ $# -lt 1 ]; then
    echo "usage: bash sh/launch.sh SCRIPT [ARGS...]   (SCRIPT: tools/train.py or tools/eval.py)" >&2
    exit 2
fi
SCRIPT="$1"
shift
ARGS=("$@")

is_true() { case "${1:-}" in ""|0|false|False|no|off) return 1 ;; *) return 0 ;; esac; }

if is_true "${DRY_RUN:-}"; then
    ARGS+=(--dry-run)
fi
if [ -n "${EXTRA_ARGS:-}" ]; then
    eval "EXTRA=(${EXTRA_ARGS})"
    ARGS+=("${EXTRA[@]}")
fi

count_gpus() {
    if [ -n "${CUDA_VISIBLE_DEVICES+x}" ]; then
        # Set (even empty: no GPU visible): count its comma-separated entries.
        local n=0 d
        IFS=',' read -r -a devs <<< "$CUDA_VISIBLE_DEVICES"
        for d in "${devs[@]}"; do [ -n "${d// /}" ] && n=$((n + 1)); done
        echo "$n"
    elif command -v nvidia-smi >/dev/null 2>&1; then
        { nvidia-smi -L 2>/dev/null || true; } | grep -c '^GPU ' || true
    else
        echo 0
    fi
}

NGPUS="${NGPUS:-$(count_gpus)}"
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
for v in NGPUS NNODES NODE_RANK; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || { echo "error: $v=${!v} is not a non-negative integer" >&2; exit 2; }
done
[ "$NGPUS" -ge 1 ] || NGPUS=1   # no GPU: one CPU process
[ "$NNODES" -ge 1 ] || NNODES=1
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi

# JSON string of one argument (escapes \ " and control characters).
json_str() {
    local s="$1"
    s="${s//\\/\\\\}"
    s="${s//\"/\\\"}"
    s="${s//$'\n'/\\n}"
    s="${s//$'\r'/\\r}"
    s="${s//$'\t'/\\t}"
    printf '"%s"' "$s"
}
json_list() {
    local first=1 a
    printf '['
    for a in "$@"; do
        [ $first -eq 1 ] || printf ', '
        first=0
        json_str "$a"
    done
    printf ']\n'
}

if is_true "${GPACO_PRINT_ARGV:-}"; then
    echo "GPACO_SCRIPT $SCRIPT"
    printf 'GPACO_ARGV '
    json_list ${ARGS[@]+"${ARGS[@]}"}
    exit 0
fi

if [ "$NGPUS" -eq 1 ] && [ "$NNODES" -eq 1 ]; then
    CMD=("$PYTHON" "$SCRIPT")
else
    CMD=("$PYTHON" -m torch.distributed.run --nnodes "$NNODES" --node_rank "$NODE_RANK"
         --nproc_per_node "$NGPUS" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" "$SCRIPT")
fi
CMD+=(${ARGS[@]+"${ARGS[@]}"})

if is_true "${GPACO_PRINT_CMD:-}"; then
    printf 'GPACO_CMD '
    json_list "${CMD[@]}"
    exit 0
fi

# Per-device statistics next to this run's layout: --device-batch / --bn-device-batch images per
# device, each process here emulating (its share of the batch) / N of them. The original's GPU
# count is the recipe header's to state (some originals did not record it).
flag_value() {
    local name="$1" prev="" a value=""
    for a in ${ARGS[@]+"${ARGS[@]}"}; do
        [ "$prev" = "$name" ] && value="$a"
        prev="$a"
    done
    echo "$value"
}
BATCH="$(flag_value --batch-size)"
PROCS=$((NGPUS * NNODES))
for GROUP_FLAG in --device-batch --bn-device-batch; do
    DEVICE_BATCH="$(flag_value "$GROUP_FLAG")"
    if [[ "$BATCH" =~ ^[0-9]+$ && "$DEVICE_BATCH" =~ ^[1-9][0-9]*$ ]]; then
        WHAT="per-GPU statistics"
        [ "$GROUP_FLAG" = --bn-device-batch ] && WHAT="per-GPU BatchNorm"
        echo "[launch] GPUs: $WHAT over $DEVICE_BATCH images ($GROUP_FLAG), as one of the original's GPUs;" \
             "--batch-size $BATCH = $((BATCH / DEVICE_BATCH)) such devices; this run: $PROCS process(es) x" \
             "$((BATCH / PROCS)) images = $((BATCH / PROCS / DEVICE_BATCH)) virtual device(s) of $DEVICE_BATCH each"
    fi
done
echo "[launch] $(printf '%q ' "${CMD[@]}")"
exec "${CMD[@]}"
