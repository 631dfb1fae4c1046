#!/usr/bin/env bash
# Runs a simulated Kubernetes cluster for a developer to play with, until Ctrl-C: testkit's
# fake API server with its process kubelet on N nodes (pods run as local processes; Spark
# executor pods as JVMs from a cached pyspark venv), optionally with kshuffle's DaemonSet
# (daemonset/deploy, rendered by `kubectl kustomize`, its image run as the built
# `kshuffle-node`). It prints the API server's URL, the nodes, a kubeconfig, the pods as they
# change, and a ready-to-paste `spark-submit --master k8s://...` with the flags of
# daemonset/deploy/spark/. No real Kubernetes is involved (see testkit/README.md).
#
#   scripts/sim-cluster.sh                     # 3 nodes, pyspark 4.3.0, no DaemonSet
#   scripts/sim-cluster.sh --daemonset         # ... with kshuffle-node on every node
#   scripts/sim-cluster.sh --nodes 2 --spark 3.5.9 --daemonset --work-dir /tmp/sim
#
# Ctrl-C (or SIGTERM) stops the server and kills every process its kubelet started.
set -euo pipefail

nodes=3
spark=4.3.0
daemonset=0
work=""
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) nodes="$2"; shift 2 ;;
    --spark) spark="$2"; shift 2 ;;
    --daemonset) daemonset=1; shift ;;
    --work-dir) work="$2"; shift 2 ;;
    --) shift; extra+=("$@"); break ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help; arguments after -- go to fake-apiserver)" >&2; exit 64 ;;
  esac
done

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
# The whole workspace, so that cargo's feature unification matches every other build.
cargo build --workspace --bins >&2
bin="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug"

venv="$(bash scripts/spark-venv.sh "$spark")"
pyspark="$(ls -d "$venv"/lib/python3*/site-packages/pyspark | head -n 1)"

[ -n "$work" ] || work="$(mktemp -d "${TMPDIR:-/tmp}/kshuffle-sim.XXXXXX")"
mkdir -p "$work"
echo "work dir $work (pods' logs under pods/, nodes' hostPaths under nodes/)" >&2

args=(--nodes "$nodes" --work-dir "$work" --spark-home "$pyspark"
      --spark-submit "$venv/bin/spark-submit" --max-probe-period-ms 1000)
if [ "$daemonset" = 1 ]; then
  kubectl="${KUBECTL:-kubectl}"
  "$kubectl" kustomize daemonset/deploy > "$work/daemonset.yaml"
  # The images as rendered (kustomize's `images:` may rename them).
  node_image="$(sed -n 's/^ *image: *\(.*kshuffle-node[^ ]*\).*/\1/p' "$work/daemonset.yaml" | head -n 1)"
  init_image="$(sed -n 's/^ *image: *\(.*busybox[^ ]*\).*/\1/p' "$work/daemonset.yaml" | head -n 1)"
  args+=(--apply "$work/daemonset.yaml"
         --image "$node_image=$bin/kshuffle-node"
         --address-env "$node_image=KSHUFFLE_BIND,KSHUFFLE_ADMIN_BIND"
         --noop-image "$init_image"
         --submit-flags daemonset/deploy/spark/spark-submit.flags)
fi
exec "$bin/fake-apiserver" "${args[@]}" "${extra[@]}"
