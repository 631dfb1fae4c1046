#!/usr/bin/env bash
# Runs every test of the project: formatting and lints, unit and integration tests, and the
# end-to-end tests with real Spark (pyspark 4.x and 3.5.x, installed here into cached venvs
# on first use). Needs: a Rust toolchain, Python 3 with venv, Java 17.
set -euo pipefail
cd "$(dirname "$0")/.."
# A one-off full build gains nothing from incremental caches, which would add gigabytes.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

echo "== lint"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== pyspark venvs"
bash scripts/spark-venv.sh >/dev/null

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --profile ci
else
  echo "cargo-nextest not found; using cargo test (Spark tests run one at a time)" >&2
  cargo test --workspace --locked -- --test-threads=1
fi
