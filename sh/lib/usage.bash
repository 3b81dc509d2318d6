# Sourced (not run) by every script under sh/, right after `set -euo pipefail`:
#
#   . "$ROOT/sh/lib/usage.bash" "$@"                 # a script that takes no arguments
#   GPACO_TAKES_ARGS=1 . "$ROOT/sh/lib/usage.bash" "$@"   # one that passes its arguments on
#
# -h / --help as the first argument prints the calling script's header comment (its usage:
# what it runs, the variables it reads) and exits 0 before anything starts. A script that takes
# no arguments refuses any other with one line (a recipe's training flags go through EXTRA_ARGS,
# everything else through the variables its header lists) instead of silently ignoring it.
gpaco_usage() {
    # The leading comment block after the shebang, without '#SBATCH' directives.
    awk 'NR == 1 { next } !/^#/ { exit } /^#SBATCH/ { next } { sub(/^# ?/, ""); print }' "$1"
}
case "${1:-}" in
    -h|--help) gpaco_usage "${BASH_SOURCE[1]}"; exit 0 ;;
esac
if [ $# -gt 0 ] && [ -z "${GPACO_TAKES_ARGS:-}" ]; then
    if grep -q 'sh/launch.sh' "${BASH_SOURCE[1]}"; then  # a recipe: flags go through EXTRA_ARGS
        echo "error: ${BASH_SOURCE[1]} takes no arguments (got: $*); pass training flags as" \
             "EXTRA_ARGS=\"$*\" bash ${BASH_SOURCE[1]} (its variables: --help)" >&2
    else
        echo "error: ${BASH_SOURCE[1]} takes no arguments (got: $*); it is set through environment" \
             "variables, listed by: bash ${BASH_SOURCE[1]} --help" >&2
    fi
    exit 2
fi
unset GPACO_TAKES_ARGS
