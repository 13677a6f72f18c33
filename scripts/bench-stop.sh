#!/usr/bin/env bash
# Stop time of the sample app (scripts/sample-app) through a berth-worker's API: as shipped
# (`init: true`, so SIGTERM reaches httpd) and with the `init` lines taken out (httpd as PID 1
# ignores SIGTERM and each service waits out its grace period). Prints seconds per stop.
#
#   scripts/bench-stop.sh              # takes the Docker lock itself
#   BERTH_WORKER_BIN=target/release/berth-worker scripts/bench-stop.sh
#
# It runs under `flock /tmp/berth-docker.lock` (re-running itself under it) and removes what it
# made: its stacks (through the worker's delete), temp dirs.
set -euo pipefail

lock=/tmp/berth-docker.lock
if [ "${BERTH_BENCH_LOCKED:-}" != 1 ]; then
  BERTH_BENCH_LOCKED=1 exec flock "$lock" "$0" "$@"
fi

root=$(cd "$(dirname "$0")/.." && pwd)
bin=${BERTH_WORKER_BIN:-}
if [ -z "$bin" ]; then
  (cd "$root" && cargo build -q -p berth-worker)
  bin=$root/target/debug/berth-worker
fi
"$root/scripts/base-image.sh" >/dev/null

work=$(mktemp -d)
token=bench-token-$$
node=benchstop$$
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base=http://127.0.0.1:$port
worker_pid=
api() {
  local method=$1 path=$2 body=${3:-}
  curl -fsS -X "$method" -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    --max-time 900 ${body:+-d "$body"} "$base$path"
}
cleanup() {
  set +e
  if [ -n "$worker_pid" ]; then
    for s in init noinit; do api DELETE "/v1/stacks/$s-$node" >/dev/null 2>&1; done
    kill "$worker_pid" 2>/dev/null
    wait "$worker_pid" 2>/dev/null
  fi
  docker ps -aq --filter "label=org.berth.node=$node" | xargs -r docker rm -f -v >/dev/null
  docker images -q --filter "label=org.berth.node=$node" | xargs -r docker rmi -f >/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

"$bin" --listen "127.0.0.1:$port" --advertise 127.0.0.1 --data-dir "$work/worker" \
  --node-name "$node" --no-registry --cluster-token "$token" >"$work/worker.log" 2>&1 &
worker_pid=$!
for _ in $(seq 200); do
  curl -fsS "$base/healthz" >/dev/null 2>&1 && break
  sleep 0.05
done

# A git repo of the sample app; with `noinit`, its `init: true` lines removed.
repo() {
  local variant=$1 dir=$work/$1
  cp -r "$root/scripts/sample-app" "$dir"
  [ "$variant" = noinit ] && sed -i '/^    init: true$/d' "$dir/compose.yaml"
  git -C "$dir" init -q
  git -C "$dir" add -A
  git -C "$dir" -c user.name=bench -c user.email=bench@berth commit -qm "$variant"
  git -C "$dir" rev-parse HEAD
}

for variant in init noinit; do
  commit=$(repo "$variant")
  id=$variant-$node
  api POST "/v1/stacks/$id/build" \
    "{\"user\":\"bench\",\"project\":\"sample\",\"commit\":\"$commit\",\"repo\":{\"url\":\"file://$work/$variant\"}}" >/dev/null
  api POST "/v1/stacks/$id/start" '{}' >/dev/null
  t=$(date +%s.%N)
  api POST "/v1/stacks/$id/stop" >/dev/null
  printf 'sample app stop, %-7s %6.2f s\n' "$variant:" "$(echo "$(date +%s.%N) - $t" | bc)"
done
