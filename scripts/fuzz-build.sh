#!/usr/bin/env bash
# Builds the cargo-fuzz targets (needs cargo-fuzz; stable Rust works with RUSTC_BOOTSTRAP=1).
# Targets: wire_decode, message_decode, block_id, index_file, auth_handshake, tls_records
# (fuzz/README.md).
#   scripts/fuzz-build.sh                    # build all targets
#   scripts/fuzz-build.sh run wire_decode -- -max_total_time=60
#   scripts/fuzz-build.sh all 300            # each target for 300 s, one after the other,
#                                            # one process each; prints libFuzzer's final stats
# Runs start from the committed seeds (fuzz/corpus/<target>/) and keep what they find in
# fuzz/target/corpus/<target>/ (not committed); crashes land in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
targets=(wire_decode message_decode block_id index_file auth_handshake tls_records)
case "${1:-}" in
  run)
    shift
    RUSTC_BOOTSTRAP=1 cargo fuzz run "$@"
    ;;
  all)
    seconds="${2:-60}"
    RUSTC_BOOTSTRAP=1 cargo fuzz build -O
    for t in "${targets[@]}"; do
      mkdir -p "target/corpus/$t" "corpus/$t"
      echo "== $t (${seconds}s)"
      RUSTC_BOOTSTRAP=1 cargo fuzz run -O "$t" "target/corpus/$t" "corpus/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 -rss_limit_mb=2048 \
        2>&1 | tee "target/fuzz-$t.log" | grep -E '^#[0-9]+\s+(INITED|DONE)|^stat::|ERROR|panicked' || true
    done
    ;;
  *)
    RUSTC_BOOTSTRAP=1 cargo fuzz build
    ;;
esac
