#!/usr/bin/env bash
# Installs pinned pyspark releases (which ship Spark's jars) into cached venvs and prints
# the venv paths, one per line. Idempotent: a venv with a `.ok` stamp is reused.
#
#   scripts/spark-venv.sh            # every pinned version
#   scripts/spark-venv.sh 4.3.0      # just one
#
# Cache root: $KSHUFFLE_CACHE (default ~/.cache/kshuffle).
set -euo pipefail

PINNED=(4.3.0 3.5.9)
cache="${KSHUFFLE_CACHE:-$HOME/.cache/kshuffle}"
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=("${PINNED[@]}")
py="${PYTHON:-python3}"

mkdir -p "$cache"
for v in "${versions[@]}"; do
  venv="$cache/pyspark-$v"
  if [ ! -f "$venv/.ok" ]; then
    echo "installing pyspark==$v into $venv (one-time, a few hundred MB)" >&2
    rm -rf "$venv"
    "$py" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir "pyspark==$v" >&2
    touch "$venv/.ok"
  fi
  echo "$venv"
done
