#!/usr/bin/env bash
# Side-by-side benchmark of kshuffled against Spark's own Java shuffle service (pyspark 4.3.0
# jars, installed on first use by scripts/spark-venv.sh), plus this machine's loopback limit.
# Prints a Markdown table; progress goes to stderr. Extra arguments go to `compare`, e.g.
#
#   scripts/bench.sh                       # every workload, 3 x 5 s runs per service
#   scripts/bench.sh --only small,large --reps 1 --secs 2
#   scripts/bench.sh --no-java             # ours and loopback only
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p kshuffle -p kshuffle-benches
exec target/release/kshuffle-bench compare "$@"
