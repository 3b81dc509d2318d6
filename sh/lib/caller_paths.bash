# Sourced (not run) by a script under sh/ before it changes to the repository root:
#
#   . "$ROOT/sh/lib/caller_paths.bash" DEMO_DATA DEMO_OUT
#
# Each variable named that holds a relative path is made absolute against the caller's
# directory, so `DEMO_OUT=runs/mine` from anywhere means the caller's runs/mine. Unset or empty
# variables stay so (the script's defaults are relative to the repository root).
for gpaco_var in "$@"; do
    if [ -n "${!gpaco_var:-}" ] && [ "${!gpaco_var#/}" = "${!gpaco_var}" ]; then
        printf -v "$gpaco_var" '%s' "$PWD/${!gpaco_var}"
    fi
done
unset gpaco_var
