#!/usr/bin/env bash
# Starts the README's three-node cluster on the ClusterKit example's ports,
# with data under ./data and every log line prefixed by its node. Ctrl-C
# stops all three (each node hands its leaderships over and exits cleanly).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=./bin/kvnode
mkdir -p data
pids=()
stop() {
  trap - INT TERM
  echo "stopping the cluster..."
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  exit 0
}
trap stop INT TERM
start() { # NODE_ID HTTP_PORT KV_PORT [JOIN_ADDR]
  NODE_ID=$1 HTTP_PORT=$2 KV_PORT=$3 JOIN_ADDR=${4:-} DATA_DIR=data/$1 \
    "$bin" > >(sed -u "s/^/[$1] /") 2>&1 &
  pids+=($!)
}
start node-1 8080 9080
for _ in $(seq 1 50); do curl -sf localhost:8080/health >/dev/null && break; sleep 0.1; done
start node-2 8081 9081 localhost:8080
start node-3 8082 9082 localhost:8080
for _ in $(seq 1 300); do
  ok=0
  for p in 8080 8081 8082; do curl -sf localhost:$p/ready >/dev/null && ok=$((ok+1)); done
  [ "$ok" = 3 ] && break
  sleep 0.2
done
echo "kvnode: 3-node cluster ready: HTTP on :8080 :8081 :8082, KV on :9080 :9081 :9082 (Ctrl-C stops it)"
wait
