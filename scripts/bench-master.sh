#!/usr/bin/env bash
# Measures the master's code store (issue 4 figures): time from sending a 10 MiB tar.gz upload
# to the answered commit, and a stock `git clone` of the result over smart HTTP.
# Runs the real binaries (release build) against an in-memory registry on 127.0.0.1.
# Usage: scripts/bench-master.sh [size-MiB]   (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-10}
cargo build --release -q -p berth-master -p berth-registry
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
reg_port=$(free_port); master_port=$(free_port)
target/release/berth-registry server --dev --http-addr "127.0.0.1:$reg_port" >"$work/registry.log" 2>&1 &
pids+=($!)
target/release/berth-master --listen "127.0.0.1:$master_port" --data-dir "$work/data" \
  --registry "http://127.0.0.1:$reg_port" --api-token bench-api --git-token bench-git \
  --cluster-token bench-cluster --max-upload-bytes $(( (size_mib + 8) * 1024 * 1024 )) \
  >"$work/master.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$master_port/healthz" >/dev/null 2>&1 && break; sleep 0.1; done

# Incompressible content split over 40 files plus a compose file: ~size MiB compressed.
mkdir -p "$work/src/app"
printf 'services:\n  web:\n    build: ./app\n' >"$work/src/compose.yaml"
per_file=$(( size_mib * 1024 * 1024 / 40 ))
for i in $(seq 40); do head -c "$per_file" /dev/urandom >"$work/src/app/blob-$i.bin"; done
tar -C "$work/src" -czf "$work/upload.tar.gz" .
echo "tarball: $(stat -c %s "$work/upload.tar.gz") bytes compressed"

t0=$(date +%s.%N)
curl -fsS -X PUT -H 'Authorization: Bearer bench-api' --data-binary @"$work/upload.tar.gz" \
  "http://127.0.0.1:$master_port/v1/instances/bench/code?user=bench&project=bench&build=false" >"$work/record.json"
t1=$(date +%s.%N)
git clone -q "http://berth:bench-git@127.0.0.1:$master_port/git/bench/bench.git" "$work/clone"
t2=$(date +%s.%N)
diff -r --exclude=.git "$work/src" "$work/clone" >/dev/null && echo "clone matches the upload"
touch "$work/src/app/blob-1.bin"; echo change >>"$work/src/compose.yaml"
tar -C "$work/src" -czf "$work/upload2.tar.gz" .
curl -fsS -X PUT -H 'Authorization: Bearer bench-api' --data-binary @"$work/upload2.tar.gz" \
  "http://127.0.0.1:$master_port/v1/instances/bench/code?user=bench&project=bench&build=false" >/dev/null
t3=$(date +%s.%N)
git -C "$work/clone" fetch -q origin
t4=$(date +%s.%N)
echo "commit: $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["commit"])' "$work/record.json")"
awk -v a="$t0" -v b="$t1" -v c="$t2" -v d="$t3" -v e="$t4" 'BEGIN {
  printf "upload to commit: %.3f s\ngit clone:        %.3f s\nsecond upload:    %.3f s\nincremental fetch: %.3f s\n", b-a, c-b, d-c, e-d }'
