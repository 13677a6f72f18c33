#!/usr/bin/env bash
# Benchmark berth-registry against etcd on this machine and print one table side by side:
# KV PUT and GET throughput and p50/p99 latency at 1 and 64 concurrent clients (100-byte values),
# and blocking-query wake-up latency (PUT -> return of a watcher waiting on that key).
#
# Both servers are durable (berth: --data-dir on a temporary directory, one fsync per commit
# group; etcd: its default WAL fsync) and listen on loopback only. One Rust client drives both
# over HTTP/JSON: Consul's /v1/kv for berth, etcd's v3 JSON gateway (/v3/kv/put, /v3/kv/range,
# /v3/watch) for etcd. Every phase is bounded in operations and in time.
#
# Usage: scripts/bench-registry.sh [extra berth-registry-bench flags, e.g. --ops-many 10000]
# Needs root for the one-time `apt-get install etcd-server` if etcd is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v etcd >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends etcd-server etcd-client >/dev/null ||
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends etcd-server etcd-client >/dev/null; }
fi

cargo build --release --locked -p berth-registry --bin berth-registry --bin berth-registry-bench
target=${CARGO_TARGET_DIR:-$PWD/target}/release

work=$(mktemp -d /tmp/berth-bench.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
berth_port=$(free_port)
etcd_port=$(free_port)
etcd_peer=$(free_port)

"$target/berth-registry" server --http-addr "127.0.0.1:$berth_port" --data-dir "$work/berth" \
  --node-name bench >"$work/berth.log" 2>&1 &
pids+=($!)

etcd --name bench --data-dir "$work/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
  --initial-cluster "bench=http://127.0.0.1:$etcd_peer" --log-level warn >"$work/etcd.log" 2>&1 &
pids+=($!)

wait_for() { # name url [curl args...]
  local name=$1 url=$2; shift 2
  for _ in $(seq 1 300); do
    if curl -fsS -o /dev/null "$@" "$url" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "$name did not become ready; log:" >&2
  tail -20 "$work/$name.log" >&2
  exit 1
}
wait_for berth "http://127.0.0.1:$berth_port/v1/status/leader"
wait_for etcd "http://127.0.0.1:$etcd_port/v3/kv/range" -X POST -d '{"key":"AA=="}'

echo "berth-registry: $("$target/berth-registry" --version)"
echo "etcd: $(etcd --version | head -1)"
echo "machine: $(nproc) cores, $(uname -r), data on $(df -T "$work" | awk 'NR==2 {print $2}')"
"$target/berth-registry-bench" --berth "http://127.0.0.1:$berth_port" --etcd "http://127.0.0.1:$etcd_port" "$@"
