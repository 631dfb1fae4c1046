#!/usr/bin/env bash
# Deterministic per-block costs of kshuffled (no wall-clock figures): runs the release daemon
# under a counting tool while `kshuffle-bench load` fetches a fixed number of requests, then
# prints the tool's summary and the load generator's own line.
#
#   scripts/profile.sh strace   small   # syscalls by type (strace -c -f), 4 KiB blocks
#   scripts/profile.sh strace   large   # the same with 4 MiB blocks
#   scripts/profile.sh callgrind small  # instructions (Ir) of the daemon, callgrind.out in $WORK
#   scripts/profile.sh dhat      small  # heap allocations of the daemon (valgrind DHAT)
#   scripts/profile.sh none     small   # no tool: the load generator's own counts only
#
# Workloads (fixed amount of work): small = 4 KiB blocks, 64 maps x 1 partition per request,
# 200 requests (12,800 blocks); small-batch = 64 maps x 8 partitions per request, 100
# requests; large = 4 MiB blocks, 2 maps x 1 partition, 100 requests (200 blocks).
# Per-block figures divide the daemon's totals (startup and registration included, a few
# hundred syscalls) by the blocks fetched. Extra arguments go to `kshuffle-bench load`.
set -euo pipefail
cd "$(dirname "$0")/.."
tool=${1:-strace}
workload=${2:-small}
shift $(($# < 2 ? $# : 2))
cargo build --release --locked -p kshuffle -p kshuffle-benches >&2
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$WORK/root" "$WORK/state"
case $workload in
small) shape=(--maps 64 --reducers 64 --block-bytes 4096 --maps-per-request 64 --reduces-per-request 1 --max-requests 200) ;;
small-batch) shape=(--maps 64 --reducers 64 --block-bytes 4096 --maps-per-request 64 --reduces-per-request 8 --batch --max-requests 100) ;;
small-multi) shape=(--maps 64 --reducers 64 --block-bytes 4096 --maps-per-request 8 --reduces-per-request 8 --max-requests 200) ;;
large) shape=(--maps 8 --reducers 8 --block-bytes 4194304 --maps-per-request 2 --reduces-per-request 1 --max-requests 100) ;;
*) echo "unknown workload $workload" >&2; exit 64 ;;
esac
port=$((20000 + RANDOM % 20000))
daemon=("${KSHUFFLED:-target/release/kshuffled}" --bind 127.0.0.1 --port "$port" --admin-bind 127.0.0.1
  --admin-port 0 --log-level warn --allowed-root "$WORK/root" --state-dir "$WORK/state")
case $tool in
strace) wrap=(strace -c -f -o "$WORK/strace.txt") ;;
callgrind) wrap=(valgrind --tool=callgrind "--callgrind-out-file=$WORK/callgrind.out") ;;
dhat) wrap=(valgrind --tool=dhat "--dhat-out-file=$WORK/dhat.json" "--log-file=$WORK/dhat.log") ;;
none) wrap=() ;;
*) echo "unknown tool $tool" >&2; exit 64 ;;
esac
"${wrap[@]}" "${daemon[@]}" 2>"$WORK/daemon.log" &
pid=$!
for _ in $(seq 1 300); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
target/release/kshuffle-bench load --addr "127.0.0.1:$port" --root "$WORK/root" \
  "${shape[@]}" --secs 600 "$@"
# strace does not pass SIGTERM on: stop the daemon itself (strace's child), then the tool.
kill -TERM "$(pgrep -P "$pid" || echo "$pid")"
wait "$pid" || true
case $tool in
strace) cat "$WORK/strace.txt" ;;
callgrind) callgrind_annotate "$WORK/callgrind.out" 2>/dev/null | head -60 ;;
dhat) grep -E "Total:|At t-gmax|At t-end" "$WORK/dhat.log" ;;
esac
echo "work dir: $WORK" >&2
