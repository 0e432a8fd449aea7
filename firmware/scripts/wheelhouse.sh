#!/bin/sh
# Build a wheelhouse for a device profile: llama-cpp-python compiled with the profile's CMAKE_ARGS,
# then edge-llm and every dependency (models come in bundles), so the device installs with `pip --no-index`.
#
#   firmware/scripts/wheelhouse.sh PROFILE OUTDIR [--dry-run]
#
# Run it where pip can reach PyPI on a machine with the TARGET's CPU architecture, OS release and
# Python version (the device itself before it goes offline, or an identical board): pip does not
# cross-compile llama.cpp. --dry-run prints the commands instead of running them.
set -eu
[ $# -ge 2 ] || { echo "usage: $0 PROFILE OUTDIR [--dry-run]" >&2; exit 2; }
PROFILE=$1
OUT=$2
DRY=${3:-}
PY=${PYTHON:-python3}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
CMAKE_ARGS=$(cd "$REPO" && "$PY" -c "import sys; from profiles.profile import get_profile; print(get_profile(sys.argv[1]).build.cmake_args)" "$PROFILE")

run() {
    if [ "$DRY" = "--dry-run" ]; then echo "+ $*"; else "$@"; fi
}

run mkdir -p "$OUT"
run env CMAKE_ARGS="$CMAKE_ARGS" FORCE_CMAKE=1 "$PY" -m pip wheel --no-binary llama-cpp-python --wheel-dir "$OUT" "llama-cpp-python==0.3.36"
run "$PY" -m pip wheel --find-links "$OUT" --wheel-dir "$OUT" "$REPO"
echo "wheelhouse for $PROFILE in $OUT (CMAKE_ARGS=\"$CMAKE_ARGS\")"
