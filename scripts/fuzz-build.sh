#!/usr/bin/env bash
# Builds the cargo-fuzz targets (needs cargo-fuzz; stable Rust works with RUSTC_BOOTSTRAP=1).
#   scripts/fuzz-build.sh            # build all targets
#   scripts/fuzz-build.sh run wire_decode -- -max_total_time=60
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
if [ "${1:-}" = run ]; then
  shift
  RUSTC_BOOTSTRAP=1 cargo fuzz run "$@"
else
  RUSTC_BOOTSTRAP=1 cargo fuzz build
fi
