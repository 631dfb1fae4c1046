#!/usr/bin/env bash
# Regenerates fuzz/corpus/<target>/ from real Spark traffic: runs pyspark 4.3.0 jobs (SASL and
# AuthEngine auth, the old OpenBlocks protocol) against kshuffled through a recording proxy
# and splits what the clients sent into seeds (see record_corpus.py). Takes ~3 minutes.
#   fuzz/record-corpus.sh            # replaces fuzz/corpus/
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/.."
cd "$root"
cargo build --workspace --bins
venv="$(bash scripts/spark-venv.sh 4.3.0 | tail -n 1)"
rm -rf "$here/corpus"
mkdir -p "$here/corpus"
python3 "$here/record_corpus.py" --daemon "$root/target/debug/kshuffled" --venv "$venv" \
  --jobs "$root/shuffle/tests/spark" --out "$here/corpus"
du -sh "$here/corpus"
