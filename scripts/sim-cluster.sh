#!/usr/bin/env bash
# Runs a simulated Kubernetes cluster for a developer to play with, until Ctrl-C: testkit's
# fake API server with its process kubelet on N nodes (pods run as local processes; Spark
# executor pods as JVMs from a cached pyspark venv), optionally with kshuffle's DaemonSet
# (daemonset/deploy, rendered by `kubectl kustomize`, its image run as the built
# `kshuffle-node`) or the sidecar webhook (sidecar/deploy: the `kshuffle-sidecar webhook`
# process with a certificate from a throw-away CA, the fake API server calling it on executor
# pod creation). It prints the API server's URL, the nodes, a kubeconfig, the pods as they
# change, and a ready-to-paste `spark-submit --master k8s://...` with the flags of
# daemonset/deploy/spark/ (or sidecar/README.md). No real Kubernetes is involved (see
# testkit/README.md).
#
#   scripts/sim-cluster.sh                     # 3 nodes, pyspark 4.3.0, nothing applied
#   scripts/sim-cluster.sh --daemonset         # ... with kshuffle-node on every node
#   scripts/sim-cluster.sh --sidecar           # ... or with the sidecar injector
#   scripts/sim-cluster.sh --daemonset --scheduler  # ... and the printed spark-submit has
#                                              #     kshuffle-scheduler allocate executor pods
#                                              #     (its JVM adapter, built into the work dir)
#   scripts/sim-cluster.sh --nodes 2 --spark 3.5.9 --daemonset --work-dir /tmp/sim
#
# Ctrl-C (or SIGTERM) stops the server and kills every process it and its kubelet started.
set -euo pipefail

nodes=3
spark=4.3.0
daemonset=0
sidecar=0
scheduler=0
work=""
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) nodes="$2"; shift 2 ;;
    --spark) spark="$2"; shift 2 ;;
    --daemonset) daemonset=1; shift ;;
    --sidecar) sidecar=1; shift ;;
    --work-dir) work="$2"; shift 2 ;;
    --) shift; extra+=("$@"); break ;;
    --scheduler) scheduler=1; shift ;;
    -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help; arguments after -- go to fake-apiserver)" >&2; exit 64 ;;
  esac
done

if [ "$daemonset" = 1 ] && [ "$sidecar" = 1 ]; then
  echo "--daemonset and --sidecar are two ways to deploy kshuffle: choose one" >&2; exit 64
fi

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
if [ "$scheduler" = 1 ]; then
  bash scheduler/jvm/build.sh "$pyspark" "$work/kshuffle-spark.jar"
  args+=(--submit-conf "spark.jars=$work/kshuffle-spark.jar"
         --submit-conf "spark.kubernetes.allocation.pods.allocator=io.kshuffle.spark.KshufflePodsAllocator"
         --submit-conf "spark.kshuffle.scheduler.binary=$bin/kshuffle-scheduler")
fi
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
if [ "$sidecar" = 1 ]; then
  kubectl="${KUBECTL:-kubectl}"
  "$kubectl" kustomize sidecar/deploy > "$work/sidecar.yaml"
  # The webhook's certificate, for the name the API server calls (cert-manager's job on a
  # cluster), signed by a CA made for this run and injected as the configuration's caBundle.
  svc=kshuffle-webhook.kshuffle-sidecar.svc
  tls="$work/webhook-tls"
  mkdir -p "$tls"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=kshuffle-sim-ca \
    -keyout "$tls/ca.key" -out "$tls/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$svc" \
    -keyout "$tls/tls.key" -out "$tls/tls.csr" 2>/dev/null
  printf 'subjectAltName=DNS:%s\n' "$svc" > "$tls/san.ext"
  openssl x509 -req -days 2 -in "$tls/tls.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" \
    -CAcreateserial -extfile "$tls/san.ext" -out "$tls/tls.crt" 2>/dev/null
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  # The webhook Deployment's KSHUFFLE_WEBHOOK_* env (name/value pairs as rendered).
  hook_env=()
  while read -r kv; do hook_env+=("$kv"); done < <(awk '
    /- name: KSHUFFLE_WEBHOOK_/ { name = $3; next }
    name != "" && /value:/ { v = $0; sub(/^ *value: */, "", v); gsub(/"/, "", v); print name "=" v; name = "" }
  ' "$work/sidecar.yaml")
  sidecar_image=""
  for kv in "${hook_env[@]}"; do
    case "$kv" in KSHUFFLE_WEBHOOK_IMAGE=*) sidecar_image="${kv#*=}" ;; esac
  done
  [ -n "$sidecar_image" ] || { echo "no KSHUFFLE_WEBHOOK_IMAGE in sidecar/deploy" >&2; exit 1; }
  env "${hook_env[@]}" RUST_LOG=info "$bin/kshuffle-sidecar" webhook \
    --tls-cert-file "$tls/tls.crt" --tls-key-file "$tls/tls.key" \
    --bind 127.0.0.1 --port "$port" 2> "$work/webhook.log" &
  webhook_pid=$!
  echo "sidecar webhook (pid $webhook_pid) on 127.0.0.1:$port, log $work/webhook.log" >&2
  # The spark-submit flags of sidecar/README.md.
  sed -n '/^## spark-submit flags/,/^```$/p' sidecar/README.md \
    | sed -n 's/^ *\(--conf [^ ]*\).*/\1/p' > "$work/sidecar.flags"
  args+=(--apply "$work/sidecar.yaml"
         --ca-bundle "$tls/ca.crt"
         --webhook-service "kshuffle-sidecar/kshuffle-webhook=127.0.0.1:$port"
         --image "$sidecar_image=$bin/kshuffle-sidecar"
         --address-env "$sidecar_image=KSHUFFLE_BIND,KSHUFFLE_ADMIN_BIND"
         --submit-flags "$work/sidecar.flags")
  # Not exec: the webhook must be stopped with the server.
  "$bin/fake-apiserver" "${args[@]}" "${extra[@]}" &
  server_pid=$!
  stop() { kill -TERM "$server_pid" 2>/dev/null || true; }
  trap stop INT TERM
  status=0
  wait "$server_pid" || status=$?
  # A trapped signal ends the first wait early: wait for the server to finish stopping.
  wait "$server_pid" 2>/dev/null || true
  kill -TERM "$webhook_pid" 2>/dev/null || true
  wait "$webhook_pid" 2>/dev/null || true
  exit "$status"
fi
exec "$bin/fake-apiserver" "${args[@]}" "${extra[@]}"
