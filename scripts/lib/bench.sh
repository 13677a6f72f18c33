# Shared steps of the Docker benchmarks (scripts/bench-deploy.sh, scripts/bench-stop.sh):
# sourced, not run.
# shellcheck shell=bash

# bench_lock "$0" "$@": re-runs the calling script under `flock /tmp/berth-docker.lock` (one
# Docker test or benchmark at a time on the machine), unless it already runs under it.
bench_lock() {
  if [ "${BERTH_BENCH_LOCKED:-}" != 1 ]; then
    BERTH_BENCH_LOCKED=1 exec flock /tmp/berth-docker.lock "$@"
  fi
}

# The repository root, and the base image the apps build from (nothing is pulled).
bench_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bench_base_image() {
  "$bench_root/scripts/base-image.sh" >/dev/null
}

now() { date +%s.%N; }
# Seconds since $1 (a `now`).
since() { echo "$(now) - $1" | bc; }

# A TCP port free on 127.0.0.1 right now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# bench_worker_bin: the berth-worker binary to run, $BERTH_WORKER_BIN or a fresh debug build.
bench_worker_bin() {
  if [ -n "${BERTH_WORKER_BIN:-}" ]; then
    echo "$BERTH_WORKER_BIN"
  else
    (cd "$bench_root" && cargo build -q -p berth-worker)
    echo "$bench_root/target/debug/berth-worker"
  fi
}

# worker_api TOKEN BASE METHOD PATH [BODY]: one request to a worker's API, signed as the worker
# wants it (worker/api/src/auth.rs: HMAC-SHA256 of method, path, body digest, date and nonce).
worker_api() {
  local token=$1 base=$2 method=$3 path=$4 body=${5:-} headers=()
  while IFS= read -r h; do headers+=(-H "$h"); done < <(
    python3 - "$token" "$method" "$path" "$body" <<'PY'
import hashlib, hmac, os, struct, sys, time
key, method, path, body = (a.encode() for a in sys.argv[1:5])
date, nonce = str(int(time.time())).encode(), os.urandom(16).hex().encode()
mac = hmac.new(key, digestmod=hashlib.sha256)
for part in (b"berth-request-v1", method, path, hashlib.sha256(body).digest(), date, nonce):
    mac.update(struct.pack(">Q", len(part)) + part)
print(f"x-berth-date: {date.decode()}\nx-berth-nonce: {nonce.decode()}\nx-berth-signature: {mac.hexdigest()}")
PY
  )
  curl -fsS -X "$method" "${headers[@]}" -H 'Content-Type: application/json' --max-time 900 \
    ${body:+--data-binary "$body"} "$base$path"
}

# bench_worker BIN DIR NODE TOKEN [ARGS...]: runs a berth-worker without a registry on a free
# port, its data in DIR (ARGS added to its command line), until it answers; sets
# bench_worker_pid and bench_worker_base.
bench_worker() {
  local bin=$1 dir=$2 node=$3 token=$4 port
  shift 4
  port=$(free_port)
  bench_worker_base=http://127.0.0.1:$port
  "$bin" --listen "127.0.0.1:$port" --advertise 127.0.0.1 --data-dir "$dir" \
    --node-name "$node" --no-registry --cluster-token "$token" "$@" >"$dir.log" 2>&1 &
  # shellcheck disable=SC2034 # read by the sourcing script
  bench_worker_pid=$!
  for _ in $(seq 200); do
    curl -fsS "$bench_worker_base/healthz" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "the worker did not come up (log $dir.log)" >&2
  return 1
}

# bench_remove_node NODE: removes whatever Docker objects labelled with berth node NODE are left.
bench_remove_node() {
  local f=label=org.berth.node=$1
  docker ps -aq --filter "$f" | xargs -r docker rm -f -v >/dev/null 2>&1
  docker network ls -q --filter "$f" | xargs -r docker network rm >/dev/null 2>&1
  docker volume ls -q --filter "$f" | xargs -r docker volume rm -f >/dev/null 2>&1
  docker images -q --filter "$f" | xargs -r docker rmi -f >/dev/null 2>&1
  return 0
}
