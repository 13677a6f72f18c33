#!/usr/bin/env bash
# Deploy speed, side by side, on the sample app (scripts/sample-app: `api` with a healthcheck,
# `web` waiting for it to be healthy and publishing the port): berth through the master API
# (a cluster of its own: registry, master and worker started by scripts/up.sh on free ports,
# in a temp dir, under a node name of its own) beside plain tools (the code committed and
# pushed with stock git to a local `git daemon`, cloned and fetched on the "worker" side,
# `docker-compose build`, `docker-compose up -d`, polling until HTTP 200). Steps, timed from the
# user's first command to the answer they wait for:
#   cold deploy                upload (tarball made and sent) to the first 200
#   redeploy, one file changed (web/index.html) upload to the new content served
#   stop
#   start after stop           to the first 200
#   rollback                   to the previous release served
#   delete
# and, with a client loop on the published port (one request every 10 ms), the failed
# requests during the redeploy and the rollback. Prints seconds, the ratio berth / plain, and
# the failed requests.
#
#   scripts/bench-deploy.sh                  # takes the Docker lock itself
#   BERTH_PROFILE=release scripts/bench-deploy.sh
#   BERTH_BENCH_OPS_LOG=/tmp/ops.log scripts/bench-deploy.sh   # keeps berth's operation log
#                                            # (and the master's log as /tmp/ops.log.master)
#
# It runs under `flock /tmp/berth-docker.lock` (re-running itself under it) and removes what it
# made on exit: the instance (through the master), the cluster (scripts/down.sh --purge), the
# compose project with its images, the git daemon, temp dirs.
set -euo pipefail
# shellcheck source=scripts/lib/bench.sh
. "$(dirname "$0")/lib/bench.sh"
bench_lock "$0" "$@"
bench_base_image

work=$(mktemp -d /tmp/berth-bench-deploy.XXXXXX)
node=benchdeploy$$
id=bench-$$
project=plain$$
export BERTH_HOME=$work/berth BERTH_NODE=$node
BERTH_REGISTRY=127.0.0.1:$(free_port)
BERTH_MASTER=127.0.0.1:$(free_port)
BERTH_WORKER=127.0.0.1:$(free_port)
export BERTH_REGISTRY BERTH_MASTER BERTH_WORKER
master=http://$BERTH_MASTER
plain_port=$(free_port)
gitd_pid=
loop_pid=
cleanup() {
  set +e
  [ -n "$loop_pid" ] && kill "$loop_pid" 2>/dev/null
  [ -d "$work/worker-side/app" ] &&
    (cd "$work/worker-side/app" && docker-compose -p "$project" down -v --rmi local >/dev/null 2>&1)
  [ -n "$gitd_pid" ] && kill "$gitd_pid" 2>/dev/null
  "$bench_root/scripts/down.sh" --purge >/dev/null 2>&1
  bench_remove_node "$node"
  rm -rf "$work"
}
trap cleanup EXIT

"$bench_root/scripts/up.sh" >"$work/up.log" 2>&1 || {
  tail -n 30 "$work/up.log" >&2
  exit 1
}
token=$(cat "$BERTH_HOME/master/api-token")
# master METHOD PATH [curl args...]: one call to the master API; fails on >= 400.
master() {
  local method=$1 path=$2
  shift 2
  curl -fsS -X "$method" -H "Authorization: Bearer $token" --max-time 900 "$@" "$master$path"
}
# upload DIR [deploy query]: the folder as a tarball, as the main system sends it.
upload() {
  tar -C "$1" -czf - . |
    master PUT "/v1/instances/$id/code?user=bench&project=sample&wait=10m&$2" \
      -H 'Content-Type: application/gzip' --data-binary @-
}
web_endpoint() { jq -r '.endpoints[] | select(.service == "web") | "\(.host):\(.host_port)"'; }

# serves ADDR [TEXT [absent]]: waits until http://ADDR/ answers 200 (with a body containing
# TEXT, or with `absent`, not containing it).
serves() {
  local addr=$1 text=${2:-} absent=${3:-} body
  for _ in $(seq 6000); do
    if body=$(curl -fsS --max-time 1 "http://$addr/" 2>/dev/null); then
      if [ -z "$text" ]; then return 0; fi
      if [ -z "$absent" ] && grep -q "$text" <<<"$body"; then return 0; fi
      if [ -n "$absent" ] && ! grep -q "$text" <<<"$body"; then return 0; fi
    fi
    sleep 0.01
  done
  echo "http://$addr/ never served ${absent:+anything but }$text" >&2
  return 1
}

# A client loop on http://$1/ (one request every 10 ms, one status a line) until loop_stop.
loop_start() {
  local addr=$1
  rm -f "$work/loop" "$work/loop-stop"
  (while [ ! -e "$work/loop-stop" ]; do
    curl -s -o /dev/null --max-time 1 -w '%{http_code}\n' "http://$addr/" || true
    sleep 0.01
  done >"$work/loop") &
  loop_pid=$!
}
# Stops the loop; prints "failed/total" (failed: anything but 200).
loop_stop() {
  touch "$work/loop-stop"
  wait "$loop_pid" 2>/dev/null || true
  loop_pid=
  echo "$(grep -vc '^200$' "$work/loop" || true)/$(wc -l <"$work/loop")"
}

results=()
row() { results+=("$1|$2|$3"); }
failures=()
fails() { failures+=("$1|$2|$3"); }

# The same app on both sides; each side gets its own nonce in every build context, so each
# cold build is cold. The plain copy publishes a fixed host port (what a plain deployment
# does: `up -d` recreating a container with a random port would move the address).
berth_dir=$work/berth-app
dev=$work/dev/app
for side in "$berth_dir" "$dev"; do
  mkdir -p "$side"
  cp -a "$bench_root/scripts/sample-app/." "$side/"
  nonce=$(basename "$side")-$$-$RANDOM
  echo "GREETING=hello $nonce" >"$side/.env"
  echo "<!-- $nonce -->" >>"$side/web/index.html"
done
sed -i "s|^      - \"8000\"$|      - \"127.0.0.1:$plain_port:8000\"|" "$dev/compose.yaml"
grep -q "127.0.0.1:$plain_port:8000" "$dev/compose.yaml"

# Plain tools' code store: a bare repository served by stock `git daemon` (push enabled).
mkdir -p "$work/gitd" "$work/worker-side"
git init -q --bare -b main "$work/gitd/app.git"
gitd_port=$(free_port)
git daemon --reuseaddr --base-path="$work/gitd" --export-all --enable=receive-pack \
  --listen=127.0.0.1 --port="$gitd_port" "$work/gitd" >"$work/gitd.log" 2>&1 &
gitd_pid=$!
remote=git://127.0.0.1:$gitd_port/app.git
for _ in $(seq 100); do git ls-remote "$remote" >/dev/null 2>&1 && break; sleep 0.05; done
git -C "$dev" init -q -b main
git -C "$dev" remote add origin "$remote"
gitc() { git -C "$dev" -c user.name=bench -c user.email=bench@localhost "$@"; }
push() {
  gitc add -A
  gitc commit -qm "$1"
  gitc push -q origin main 2>/dev/null
}
checkout=$work/worker-side/app
compose() { (cd "$checkout" && docker-compose -p "$project" "$@" >/dev/null 2>&1); }
plain_addr=127.0.0.1:$plain_port

# cold deploy
t=$(now)
addr=$(upload "$berth_dir" deploy=true | web_endpoint)
serves "$addr"
b=$(since "$t")
t=$(now)
push one
git clone -q "$remote" "$checkout"
compose build
compose up -d
serves "$plain_addr"
row "cold deploy (upload to first 200)" "$b" "$(since "$t")"

# redeploy after a one-file change in one service, under the client loop
echo "<p>release two</p>" >>"$berth_dir/web/index.html"
echo "<p>release two</p>" >>"$dev/web/index.html"
loop_start "$addr"
t=$(now)
upload "$berth_dir" deploy=true >/dev/null
serves "$addr" "release two"
b=$(since "$t")
bf=$(loop_stop)
loop_start "$plain_addr"
t=$(now)
push two
git -C "$checkout" pull -q --ff-only
compose build
compose up -d
serves "$plain_addr" "release two"
p=$(since "$t")
fails "redeploy, one file changed" "$bf" "$(loop_stop)"
row "redeploy, one file changed (to new content)" "$b" "$p"

# stop, then start after stop to the first 200
t=$(now)
master POST "/v1/instances/$id/stop" >/dev/null
b=$(since "$t")
t=$(now)
compose stop
row "stop" "$b" "$(since "$t")"
t=$(now)
addr=$(master POST "/v1/instances/$id/start" | web_endpoint)
serves "$addr"
b=$(since "$t")
t=$(now)
compose up -d
serves "$plain_addr"
row "start after stop (to first 200)" "$b" "$(since "$t")"

# rollback to the previous release, under the client loop
loop_start "$addr"
t=$(now)
master POST "/v1/instances/$id/rollback?wait=10m" >/dev/null
serves "$addr" "release two" absent
b=$(since "$t")
bf=$(loop_stop)
loop_start "$plain_addr"
t=$(now)
git -C "$checkout" checkout -q HEAD~1
compose build
compose up -d
serves "$plain_addr" "release two" absent
p=$(since "$t")
fails "rollback to the previous release" "$bf" "$(loop_stop)"
row "rollback (to the previous release served)" "$b" "$p"

if [ -n "${BERTH_BENCH_OPS_LOG:-}" ]; then
  master GET "/v1/instances/$id/logs?source=ops" >"$BERTH_BENCH_OPS_LOG" || true
  cp "$BERTH_HOME/logs/master.log" "$BERTH_BENCH_OPS_LOG.master" 2>/dev/null || true
fi

# delete: containers, volumes, images, network, and the checkout (berth: also the repository)
t=$(now)
master DELETE "/v1/instances/$id" >/dev/null
b=$(since "$t")
t=$(now)
compose down -v --rmi local
rm -rf "$checkout"
row "delete" "$b" "$(since "$t")"

engine=$(docker version --format '{{.Server.Version}}')
driver=$(docker info --format '{{.Driver}}')
echo "berth (master API, ${BERTH_PROFILE:-dev} build) vs git $(git --version | cut -d' ' -f3) + docker-compose $(docker-compose version --short); Docker $engine, $driver, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '| %-44s | %8s | %8s | %6s |\n' "sample app" berth plain ratio
printf '|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' $(seq 46))" ---------- ---------- --------
for r in "${results[@]}"; do
  IFS='|' read -r step ours theirs <<<"$r"
  printf '| %-44s | %6.2f s | %6.2f s | %5.2fx |\n' "$step" "$ours" "$theirs" \
    "$(echo "scale=2; $ours / $theirs" | bc)"
done
echo
printf '| %-44s | %10s | %10s |\n' "failed requests (failed/sent, every 10 ms)" berth plain
printf '|%s|%s|%s|\n' "$(printf -- '-%.0s' $(seq 46))" ------------ ------------
for r in "${failures[@]}"; do
  IFS='|' read -r step ours theirs <<<"$r"
  printf '| %-44s | %10s | %10s |\n' "$step" "$ours" "$theirs"
done
