#!/usr/bin/env bash
# Deploy speed, side by side: berth (a berth-worker through its HTTP API, the app as a git
# commit it clones) and plain tools (docker-compose 1.29 on a plain copy of the same files), on
# two apps: the sample app (scripts/sample-app, two services, a healthcheck gate) and a
# three-service app. Steps: cold build (no cached layers), warm build (every layer cached), a
# rebuild after a one-file change in one service, start to the port answering HTTP 200, stop,
# and start after stop to the port answering; then, with a client loop on the published port
# (one request every 10 ms), berth's deploy of the rebuilt release (to the new release
# answering) beside `docker-compose up -d` recreating in place, and berth's rollback to the
# kept first release. Prints seconds and the ratio berth / plain, then the failed requests.
#
#   scripts/bench-deploy.sh            # takes the Docker lock itself
#   BERTH_WORKER_BIN=target/release/berth-worker scripts/bench-deploy.sh
#
# It runs under `flock /tmp/berth-docker.lock` (re-running itself under it) and removes what it
# made: its stacks (through the worker's delete), compose projects, images, temp dirs.
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
node=bench$$
worker_pid=
projects=()
cleanup() {
  set +e
  for p in "${projects[@]}"; do
    [ -d "$work/plain-$p" ] &&
      (cd "$work/plain-$p" && docker-compose -p "plain$p$$" down -v --rmi local >/dev/null 2>&1)
  done
  if [ -n "$worker_pid" ]; then
    for p in "${projects[@]}"; do
      for s in "b$p" "w$p"; do
        api DELETE "/v1/stacks/$s-$node" >/dev/null 2>&1
      done
    done
    kill "$worker_pid" 2>/dev/null
    wait "$worker_pid" 2>/dev/null
  fi
  # Anything of this node the worker could not remove.
  docker ps -aq --filter "label=org.berth.node=$node" | xargs -r docker rm -f -v >/dev/null
  docker images -q --filter "label=org.berth.node=$node" | xargs -r docker rmi -f >/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc; }

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
base=http://127.0.0.1:$port
# The worker API wants each request signed (worker/api/src/auth.rs): prints the three headers.
sign() {
  python3 - "$token" "$1" "$2" "$3" <<'PY'
import hashlib, hmac, os, struct, sys, time
key, method, path, body = (a.encode() for a in sys.argv[1:5])
date, nonce = str(int(time.time())).encode(), os.urandom(16).hex().encode()
mac = hmac.new(key, digestmod=hashlib.sha256)
for part in (b"berth-request-v1", method, path, hashlib.sha256(body).digest(), date, nonce):
    mac.update(struct.pack(">Q", len(part)) + part)
print(f"x-berth-date: {date.decode()}\nx-berth-nonce: {nonce.decode()}\nx-berth-signature: {mac.hexdigest()}")
PY
}
api() {
  local method=$1 path=$2 body=${3:-}
  local headers=()
  while IFS= read -r h; do headers+=(-H "$h"); done < <(sign "$method" "$path" "$body")
  if [ -n "$body" ]; then
    curl -fsS -X "$method" "${headers[@]}" -H 'Content-Type: application/json' \
      --max-time 900 --data-binary "$body" "$base$path"
  else
    curl -fsS -X "$method" "${headers[@]}" --max-time 900 "$base$path"
  fi
}

"$bin" --listen "127.0.0.1:$port" --advertise 127.0.0.1 --data-dir "$work/worker" \
  --node-name "$node" --no-registry --cluster-token "$token" >"$work/worker.log" 2>&1 &
worker_pid=$!
for _ in $(seq 200); do
  curl -fsS "$base/healthz" >/dev/null 2>&1 && break
  sleep 0.05
done

# Waits until http://$1/ answers 200.
answers() {
  for _ in $(seq 3000); do
    curl -fsS -o /dev/null --max-time 1 "http://$1/" 2>/dev/null && return 0
    sleep 0.01
  done
  echo "http://$1/ never answered" >&2
  return 1
}

# The three-service app: two back ends and a front that publishes a port.
three_service_app() {
  local dir=$1
  mkdir -p "$dir/front" "$dir/users" "$dir/orders"
  cat >"$dir/compose.yaml" <<'EOF'
services:
  users:
    build: ./users
  orders:
    build: ./orders
  front:
    build: ./front
    depends_on: [users, orders]
    ports:
      - "8000"
EOF
  for s in users orders front; do
    echo "<p>$s</p>" >"$dir/$s/index.html"
    cat >"$dir/$s/Dockerfile" <<'EOF'
FROM berth-base:latest
COPY index.html /www/index.html
RUN mkdir -p /www/data && echo built > /www/data/stamp
EXPOSE 8000
CMD ["httpd", "-f", "-p", "8000", "-h", "/www"]
EOF
  done
}

# A copy of app $1 in $2 whose every layer is new (a nonce in what each service builds from).
fresh_copy() {
  local app=$1 dir=$2 nonce=$3
  mkdir -p "$dir"
  if [ "$app" = sample ]; then
    cp -a "$root/scripts/sample-app/." "$dir/"
    echo "GREETING=hello $nonce" >"$dir/.env"
    echo "<!-- $nonce -->" >>"$dir/web/index.html"
  else
    three_service_app "$dir"
    for s in users orders front; do echo "<!-- $nonce -->" >>"$dir/$s/index.html"; done
  fi
}

# The file a one-service change edits, and the service that serves on the port.
changed_file() { if [ "$1" = sample ]; then echo web/index.html; else echo front/index.html; fi; }
front() { if [ "$1" = sample ]; then echo web; else echo front; fi; }

commit() {
  git -C "$1" -c user.name=bench -c user.email=bench@localhost add -A
  git -C "$1" -c user.name=bench -c user.email=bench@localhost commit -qm "$2"
  git -C "$1" rev-parse HEAD
}

build_body() {
  printf '{"user":"bench","project":"%s","commit":"%s","repo":{"url":"file://%s"}}' "$1" "$2" "$3"
}

results=()
row() { results+=("$1|$2|$3"); }
failures=()
fails() { failures+=("$1|$2|$3"); }

# A client loop on http://$1/ until loop_stop $2: one request every 10 ms, one status a line.
loop_start() {
  rm -f "$work/stop-$2"
  (while [ ! -e "$work/stop-$2" ]; do
    curl -s -o /dev/null --max-time 1 -w '%{http_code}\n' "http://$1/" || true
    sleep 0.01
  done >"$work/loop-$2") &
}
# Stops loop $1 and prints its failed requests (anything but 200).
loop_stop() {
  touch "$work/stop-$1"
  sleep 1.2
  grep -vc '^200$' "$work/loop-$1" || true
}
# Waits until http://$1/ answers 200 with a body containing $2.
serves() {
  for _ in $(seq 3000); do
    curl -fsS --max-time 1 "http://$1/" 2>/dev/null | grep -q "$2" && return 0
    sleep 0.01
  done
  echo "http://$1/ never served $2" >&2
  return 1
}

bench_app() {
  local app=$1
  local repo=$work/repo-$app plain=$work/plain-$app
  local b="b$app-$node" w="w$app-$node" c t ep p
  projects+=("$app")
  fresh_copy "$app" "$repo" "berth-$$-$RANDOM"
  git -C "$repo" init -q -b main
  c=$(commit "$repo" one)
  fresh_copy "$app" "$plain" "plain-$$-$RANDOM"
  local cp=(docker-compose -p "plain$app$$")

  # cold build
  t=$(now); api POST "/v1/stacks/$b/build" "$(build_body "$app" "$c" "$repo")" >/dev/null
  local berth_cold; berth_cold=$(since "$t")
  t=$(now); (cd "$plain" && "${cp[@]}" build -q >/dev/null 2>&1)
  row "$app: build, cold" "$berth_cold" "$(since "$t")"

  # warm build: every layer cached (berth: another instance of the same commit)
  t=$(now); api POST "/v1/stacks/$w/build" "$(build_body "$app" "$c" "$repo")" >/dev/null
  local berth_warm; berth_warm=$(since "$t")
  t=$(now); (cd "$plain" && "${cp[@]}" build -q >/dev/null 2>&1)
  row "$app: build, warm (layers cached)" "$berth_warm" "$(since "$t")"
  api DELETE "/v1/stacks/$w" >/dev/null

  # start to the port answering
  t=$(now)
  ep=$(api POST "/v1/stacks/$b/start" '{}' | jq -r '.endpoints[0] | "\(.host):\(.host_port)"')
  answers "$ep"
  local berth_start; berth_start=$(since "$t")
  t=$(now)
  (cd "$plain" && "${cp[@]}" up -d >/dev/null 2>&1)
  p=$(cd "$plain" && "${cp[@]}" port "$(front "$app")" 8000 | sed 's/0.0.0.0/127.0.0.1/')
  answers "$p"
  row "$app: start to port answering" "$berth_start" "$(since "$t")"

  # a one-file change in one service: rebuild
  local first=$c
  echo "<p>changed</p>" >>"$repo/$(changed_file "$app")"
  c=$(commit "$repo" two)
  echo "<p>changed</p>" >>"$plain/$(changed_file "$app")"
  t=$(now); api POST "/v1/stacks/$b/build" "$(build_body "$app" "$c" "$repo")" >/dev/null
  local berth_re; berth_re=$(since "$t")
  t=$(now); (cd "$plain" && "${cp[@]}" build -q >/dev/null 2>&1)
  row "$app: rebuild after a one-file change" "$berth_re" "$(since "$t")"

  # deploy of the rebuilt release under a client loop, to the new release serving; plain
  # tools: `up -d` recreating in place (its host port changes: the old address stops answering)
  loop_start "$ep" "bd$app"
  t=$(now); api POST "/v1/stacks/$b/deploy" "$(build_body "$app" "$c" "$repo")" >/dev/null
  serves "$ep" changed
  local berth_deploy; berth_deploy=$(since "$t")
  local berth_deploy_failed; berth_deploy_failed=$(loop_stop "bd$app")
  loop_start "$p" "pd$app"
  t=$(now)
  (cd "$plain" && "${cp[@]}" up -d >/dev/null 2>&1)
  local p2
  p2=$(cd "$plain" && "${cp[@]}" port "$(front "$app")" 8000 | sed 's/0.0.0.0/127.0.0.1/')
  serves "$p2" changed
  local plain_deploy; plain_deploy=$(since "$t")
  fails "$app: deploy (plain: up -d recreating)" "$berth_deploy_failed" "$(loop_stop "pd$app")"
  row "$app: deploy to the new release serving" "$berth_deploy" "$plain_deploy"
  p=$p2

  # rollback to the first release, whose images are kept (nothing built)
  loop_start "$ep" "br$app"
  t=$(now); api POST "/v1/stacks/$b/deploy" "$(build_body "$app" "$first" "$repo")" >/dev/null
  answers "$ep"
  local berth_back; berth_back=$(since "$t")
  fails "$app: rollback (kept release)" "$(loop_stop "br$app")" "-"
  echo "$app: rollback to the kept first release: $berth_back s"
  api POST "/v1/stacks/$b/deploy" "$(build_body "$app" "$c" "$repo")" >/dev/null

  # the new release running, then stop, then start after stop
  ep=$(api POST "/v1/stacks/$b/start" '{}' | jq -r '.endpoints[0] | "\(.host):\(.host_port)"')
  answers "$ep"
  (cd "$plain" && "${cp[@]}" up -d >/dev/null 2>&1)
  t=$(now); api POST "/v1/stacks/$b/stop" >/dev/null
  local berth_stop; berth_stop=$(since "$t")
  t=$(now); (cd "$plain" && "${cp[@]}" stop >/dev/null 2>&1)
  row "$app: stop" "$berth_stop" "$(since "$t")"
  t=$(now)
  ep=$(api POST "/v1/stacks/$b/start" '{}' | jq -r '.endpoints[0] | "\(.host):\(.host_port)"')
  answers "$ep"
  local berth_restart; berth_restart=$(since "$t")
  t=$(now)
  (cd "$plain" && "${cp[@]}" up -d >/dev/null 2>&1)
  p=$(cd "$plain" && "${cp[@]}" port "$(front "$app")" 8000 | sed 's/0.0.0.0/127.0.0.1/')
  answers "$p"
  row "$app: start after stop to port answering" "$berth_restart" "$(since "$t")"
}

bench_app sample
bench_app three

engine=$(docker version --format '{{.Server.Version}}')
driver=$(docker info --format '{{.Driver}}')
echo "berth-worker ($bin) vs docker-compose $(docker-compose version --short); Docker $engine, $driver, $(nproc) cores"
printf '| %-46s | %8s | %8s | %6s |\n' step berth plain ratio
printf '|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' $(seq 48))" ---------- ---------- --------
for r in "${results[@]}"; do
  IFS='|' read -r step ours theirs <<<"$r"
  ratio=$(echo "scale=2; $ours / $theirs" | bc)
  printf '| %-46s | %6.2f s | %6.2f s | %5.2fx |\n' "$step" "$ours" "$theirs" "$ratio"
done
echo
printf '| %-46s | %8s | %8s |\n' "failed requests on the published port" berth plain
printf '|%s|%s|%s|\n' "$(printf -- '-%.0s' $(seq 48))" ---------- ----------
for r in "${failures[@]}"; do
  IFS='|' read -r step ours theirs <<<"$r"
  printf '| %-46s | %8s | %8s |\n' "$step" "$ours" "$theirs"
done
