#!/usr/bin/env bash
# Start after stop of the sample app (scripts/sample-app) through a berth-worker's API alone (no
# registry, no master), with forwarders when the static berth-forward binary is built: each
# round stops the stack, then times `POST /v1/stacks/{id}/start` to its answer and to the first
# HTTP 200 on the published port (both clocks include signing the request, a python3 start).
# Prints both per round and the worker's operation log of the
# last start (its lines carry the seconds since the start began), the step-by-step profile.
#
#   scripts/bench-start.sh             # takes the Docker lock itself; 5 rounds
#   BERTH_BENCH_ROUNDS=10 BERTH_WORKER_BIN=target/release/berth-worker scripts/bench-start.sh
#
# It runs under `flock /tmp/berth-docker.lock` (re-running itself under it) and removes what it
# made: its stack (through the worker's delete), temp dirs.
set -euo pipefail
# shellcheck source=scripts/lib/bench.sh
. "$(dirname "$0")/lib/bench.sh"
bench_lock "$0" "$@"
bin=$(bench_worker_bin)
bench_base_image
rounds=${BERTH_BENCH_ROUNDS:-5}

work=$(mktemp -d)
token=bench-token-$$
node=benchstart$$
id=start-$node
bench_worker_pid=
api() { worker_api "$token" "$bench_worker_base" "$@"; }
cleanup() {
  set +e
  if [ -n "$bench_worker_pid" ]; then
    api DELETE "/v1/stacks/$id" >/dev/null 2>&1
    kill "$bench_worker_pid" 2>/dev/null
    wait "$bench_worker_pid" 2>/dev/null
  fi
  bench_remove_node "$node"
  rm -rf "$work"
}
trap cleanup EXIT
fwd=$bench_root/target/x86_64-unknown-linux-musl/release/berth-forward
extra=()
what="no forwarder"
if [ -x "$fwd" ]; then
  extra=(--forwarder-bin "$fwd")
  what="forwarders on"
fi
bench_worker "$bin" "$work/worker" "$node" "$token" "${extra[@]}"

cp -r "$bench_root/scripts/sample-app" "$work/app"
git -C "$work/app" init -q
git -C "$work/app" add -A
git -C "$work/app" -c user.name=bench -c user.email=bench@berth commit -qm app
commit=$(git -C "$work/app" rev-parse HEAD)
api POST "/v1/stacks/$id/build" \
  "{\"user\":\"bench\",\"project\":\"sample\",\"commit\":\"$commit\",\"repo\":{\"url\":\"file://$work/app\"}}" >/dev/null
api POST "/v1/stacks/$id/start" '{}' >/dev/null
echo "sample app, start after stop ($what), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq "$rounds"); do
  api POST "/v1/stacks/$id/stop" >/dev/null
  t=$(now)
  addr=$(api POST "/v1/stacks/$id/start" '{}' |
    jq -r '.endpoints[] | select(.service == "web") | "\(.host):\(.host_port)"')
  answered=$(since "$t")
  until curl -fsS -o /dev/null --max-time 1 "http://$addr/" 2>/dev/null; do sleep 0.01; done
  printf 'round %d: answered %5.2f s, first 200 %5.2f s\n' "$round" "$answered" "$(since "$t")"
done
echo "operation log of the last start:"
api GET "/v1/stacks/$id/logs" | awk '/== start /{buf=""} {buf=buf $0 "\n"} END{printf "%s", buf}'
