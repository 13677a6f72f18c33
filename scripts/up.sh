#!/usr/bin/env bash
# berth on this machine, in one command: the registry server, the master and one worker, run as
# local processes, with their data, logs and tokens under .berth/.
# Needs Rust (rustup) and a running Docker engine this user may use. Stop with scripts/down.sh.
#
# Environment (all optional):
#   BERTH_HOME        state directory                         [.berth in the repository]
#   BERTH_PROFILE     cargo profile: dev (the build scripts/test.sh shares, the quickest
#                     first start) or release (for long-running use)        [dev]
#   BERTH_REGISTRY    registry listen address                 [127.0.0.1:8500]
#   BERTH_MASTER      master listen address (the CLI reads it too) [127.0.0.1:8080]
#   BERTH_WORKER      worker listen address                   [127.0.0.1:8833]
#   BERTH_ADVERTISE   address apps are published at           [127.0.0.1]
#   BERTH_NODE        the worker's node name (a second cluster on one Docker engine needs its
#                     own: a worker manages the containers labelled with its node)  [hostname]
#
# On one machine the worker uses the registry server's own agent (as `consul agent -dev` does);
# on many machines each worker joins the master's registry (scripts/join-worker.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
home=${BERTH_HOME:-$repo/.berth}
profile=${BERTH_PROFILE:-dev}
registry=${BERTH_REGISTRY:-127.0.0.1:8500}
master=${BERTH_MASTER:-127.0.0.1:8080}
worker=${BERTH_WORKER:-127.0.0.1:8833}
advertise=${BERTH_ADVERTISE:-127.0.0.1}

say() { printf '==> %s\n' "$*"; }
die() {
  printf 'up.sh: %s\n' "$*" >&2
  exit 1
}

command -v cargo >/dev/null || die "cargo is needed (https://rustup.rs)"
command -v docker >/dev/null || die "the docker command is needed (Debian: apt-get install docker.io)"
docker info >/dev/null 2>&1 || die "the Docker engine is not reachable by $(id -un) (is it running? is $(id -un) in the docker group?)"

# as_root CMD...: runs CMD as root: directly, or through sudo (asking for a password only at a
# terminal); fails when neither can.
as_root() {
  if [ "$(id -u)" = 0 ]; then
    "$@"
  elif command -v sudo >/dev/null && { [ -t 0 ] || sudo -n true 2>/dev/null; }; then
    sudo "$@"
  else
    return 1
  fi
}

# Debian packages this script and the build need, installed here when missing (as root, or
# through sudo): curl, a C compiler and linker for cargo (gcc, libc6-dev), and a static busybox,
# which the base image is made of (without root, scripts/base-image.sh fetches one itself).
missing=()
command -v curl >/dev/null || missing+=(curl)
command -v cc >/dev/null || missing+=(gcc libc6-dev)
if ! docker image inspect berth-base:latest >/dev/null 2>&1 && ! scripts/base-image.sh --has-busybox; then
  missing+=(busybox-static)
fi
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} (apt-get)"
  if ! command -v apt-get >/dev/null ||
    ! as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq ||
    ! as_root env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
    if [ "${missing[*]}" = busybox-static ]; then
      say "could not install busybox-static; scripts/base-image.sh fetches it without root"
    else
      die "needs ${missing[*]}: sudo apt-get install -y ${missing[*]} (then run scripts/up.sh again)"
    fi
  fi
fi

started=$(date +%s)
say "building the binaries (cargo, $profile profile)"
if [ "$profile" = dev ]; then
  cargo build --locked --workspace --bins
else
  cargo build --locked --profile "$profile" -p berth-registry -p berth-master -p berth-worker \
    -p berth-cli --bins
fi
target_dir=$(cargo metadata --no-deps --format-version 1 | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
if [ "$profile" = dev ]; then bin=$target_dir/debug; else bin=$target_dir/$profile; fi

# The forwarders that hold published ports across rollouts run FROM scratch: a static build.
musl=x86_64-unknown-linux-musl
forwarder=()
if rustup target list --installed 2>/dev/null | grep -qx "$musl" ||
  rustup target add "$musl" >/dev/null 2>&1; then
  say "building the port forwarder (static, $musl)"
  cargo build --locked --release --target "$musl" -p berth-forward
  forwarder=(--forwarder-bin "$target_dir/$musl/release/berth-forward")
else
  say "no $musl target (rustup target add $musl): without forwarders a rollout of a service" \
    "that publishes a port refuses connections for a moment (stop-first)"
fi

say "building the base image the sample app uses (nothing is pulled)"
scripts/base-image.sh

mkdir -p "$home"/{registry,master,worker,logs,run}
chmod 700 "$home"
new_token() { od -An -N32 -tx1 /dev/urandom | tr -d ' \n'; }
mkdir -p "$home/tokens"
chmod 700 "$home/tokens"
for t in cluster-token tokens/registry-management; do
  [ -s "$home/$t" ] || (umask 077 && new_token >"$home/$t")
done

# start NAME COMMAND...: runs COMMAND in the background unless NAME already runs.
start() {
  local name=$1 pidfile=$home/run/$1.pid
  shift
  if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    say "$name already running (pid $(cat "$pidfile"))"
    return
  fi
  nohup "$@" >>"$home/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  say "$name started (pid $!, log $home/logs/$name.log)"
}

# wait_for NAME URL [SECONDS]: until URL answers 2xx, or fail with the log's tail.
wait_for() {
  local name=$1 url=$2 limit=${3:-60} i
  for ((i = 0; i < limit * 4; i++)); do
    if curl -fsS -o /dev/null "$url" 2>/dev/null; then return 0; fi
    if ! kill -0 "$(cat "$home/run/$name.pid")" 2>/dev/null; then break; fi
    sleep 0.25
  done
  tail -n 20 "$home/logs/$name.log" >&2 || true
  die "$name did not come up at $url (log: $home/logs/$name.log)"
}

# The worker registers through the registry server's own agent, so both carry one node name: the
# master takes a worker only as service `berth-worker:<node>` on catalog node <node>.
node=${BERTH_NODE:-$(hostname -s 2>/dev/null || cat /proc/sys/kernel/hostname)}
node=$(printf '%s' "$node" | tr '[:upper:]' '[:lower:]' | tr -cd 'a-z0-9_.-')
node=${node:-berth}

# Registry ACLs on, default deny: the management token stays in .berth/tokens/, and each role
# gets its own least-privilege token, made once (README, "Security").
start registry "$bin/berth-registry" server \
  --http-addr "$registry" --data-dir "$home/registry" --node-name "$node" \
  --acl-master-token-file "$home/tokens/registry-management"
wait_for registry "http://$registry/v1/status/leader"

# shellcheck source=scripts/lib/acl.sh
. scripts/lib/acl.sh
mgmt=$(cat "$home/tokens/registry-management")
for role in master worker frontdoor ui; do
  [ -s "$home/tokens/$role" ] || (umask 077 && acl_new_secret >"$home/tokens/$role")
  acl_role "http://$registry" "$mgmt" "$role" "$(cat "$home/tokens/$role")" \
    "$([ "$role" = worker ] && echo "$node")" || die "could not set up the registry role $role"
done

start master "$bin/berth-master" \
  --listen "$master" --data-dir "$home/master" --registry "http://$registry" \
  --registry-token-file "$home/tokens/master" --cluster-token-file "$home/cluster-token" --public-url "http://$master"
wait_for master "http://$master/healthz"
# Where the berth CLI finds this master (its token is $home/master/api-token).
printf 'http://%s\n' "$master" >"$home/master-url"

# Stacks cannot reach berth: the host firewall refuses what comes from stack networks
# (scripts/firewall.sh; needs root and iptables).
if [ "$(id -u)" = 0 ] && command -v iptables >/dev/null; then
  scripts/firewall.sh apply >/dev/null || die "could not apply the firewall (scripts/firewall.sh apply)"
else
  say "not applying the stack firewall (needs root and iptables): run sudo scripts/firewall.sh apply"
fi

start worker "$bin/berth-worker" \
  --listen "$worker" --advertise "$advertise" --data-dir "$home/worker" --node-name "$node" \
  --registry "http://$registry" --registry-token-file "$home/tokens/worker" \
  --cluster-token-file "$home/cluster-token" "${forwarder[@]}"
wait_for worker "http://$worker/healthz"

say "waiting for the worker to pass its health check in the registry"
passing=no
for ((i = 0; i < 120; i++)); do
  if curl -fsS -H "X-Consul-Token: $(cat "$home/tokens/ui")" \
    "http://$registry/v1/health/service/berth-worker?passing=1" 2>/dev/null |
    grep -q '"ServiceID"'; then
    passing=yes
    break
  fi
  sleep 0.25
done
[ "$passing" = yes ] ||
  die "the worker is not passing in the registry after 30 s (logs: $home/logs/worker.log, $home/logs/registry.log)"

cat <<EOF

berth is up ($(($(date +%s) - started)) s).
  master API     http://$master/v1/instances
  registry UI    http://$registry/ui/  (token: $home/tokens/ui, read-only)
  API token      $home/master/api-token
  logs           $home/logs/
  CLI            $bin/berth (finds this master and its token by itself)
Try it:          $bin/berth deploy scripts/sample-app
                 (or scripts/demo.sh, the same with curl)        Stop:  scripts/down.sh
EOF
