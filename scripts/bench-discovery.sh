#!/usr/bin/env bash
# Discovery benchmark: a durable berth-registry server with 1,000 nodes x 10 services, and one
# agent joined to it. Prints p50/p99 of /v1/health/service/<name>?passing and
# /v1/catalog/service/<name> (1,000 entries each), and of the time from a service registration
# through the agent to its visibility on the server (a blocking query wakes on it).
#
# Usage: scripts/bench-discovery.sh [extra berth-registry-discovery-bench flags]
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked -p berth-registry --bin berth-registry --bin berth-registry-discovery-bench
target=${CARGO_TARGET_DIR:-$PWD/target}/release

work=$(mktemp -d /tmp/berth-disc-bench.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c "import socket,sys; s=socket.socket(); s.bind((sys.argv[1],0)); print(s.getsockname()[1])" "$1"; }
server_port=$(free_port 127.0.0.1)
agent_port=$(free_port 127.0.0.2)

"$target/berth-registry" server --http-addr "127.0.0.1:$server_port" --data-dir "$work/server" \
  --node-name bench-server >"$work/server.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$server_port/v1/status/leader" >/dev/null 2>&1 && break
  sleep 0.1
done
"$target/berth-registry" agent --join "127.0.0.1:$server_port" --http-addr "127.0.0.2:$agent_port" \
  --node-name bench-agent --data-dir "$work/agent" >"$work/agent.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  curl -fs "http://127.0.0.2:$agent_port/v1/agent/self" >/dev/null 2>&1 && break
  sleep 0.1
done

"$target/berth-registry-discovery-bench" --server "http://127.0.0.1:$server_port" \
  --agent "http://127.0.0.2:$agent_port" "$@"
