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
# shellcheck source=scripts/lib/bench.sh
. "$(dirname "$0")/lib/bench.sh"
bench_lock "$0" "$@"
bin=$(bench_worker_bin)
bench_base_image

work=$(mktemp -d)
token=bench-token-$$
node=benchstop$$
bench_worker_pid=
api() { worker_api "$token" "$bench_worker_base" "$@"; }
cleanup() {
  set +e
  if [ -n "$bench_worker_pid" ]; then
    for s in init noinit; do api DELETE "/v1/stacks/$s-$node" >/dev/null 2>&1; done
    kill "$bench_worker_pid" 2>/dev/null
    wait "$bench_worker_pid" 2>/dev/null
  fi
  bench_remove_node "$node"
  rm -rf "$work"
}
trap cleanup EXIT
bench_worker "$bin" "$work/worker" "$node" "$token"

# A git repo of the sample app; with `noinit`, its `init: true` lines removed.
repo() {
  local variant=$1 dir=$work/$1
  cp -r "$bench_root/scripts/sample-app" "$dir"
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
  t=$(now)
  api POST "/v1/stacks/$id/stop" >/dev/null
  printf 'sample app stop, %-7s %6.2f s\n' "$variant:" "$(since "$t")"
done
