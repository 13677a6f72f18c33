#!/usr/bin/env bash
# The registry setup every shipped configuration uses (scripts/lib/acl.sh through
# scripts/registry-roles.sh and scripts/worker-token.sh, as init-master.sh and the compose files
# run it), against the real registry binary: anonymous KV writes and catalog registrations are
# refused, and each role's token may do its job and nothing else.
#   scripts/tests/registry-roles.sh        (BERTH_REGISTRY_BIN: default target/debug/berth-registry)
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${BERTH_REGISTRY_BIN:-target/debug/berth-registry}
[ -x "$bin" ] || {
  echo "$0: no registry binary at $bin (cargo build -p berth-registry)" >&2
  exit 1
}
tmp=$(mktemp -d)
pid=
cleanup() {
  [ -z "$pid" ] || kill "$pid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url=http://127.0.0.1:$port
env_file=$tmp/master.env
echo "BERTH_CLUSTER_TOKEN=cluster-secret" >"$env_file"

scripts/registry-roles.sh secrets "$env_file"
get() { sed -n "s/^$1=//p" "$env_file"; }
mgmt=$(get BERTH_REGISTRY_MANAGEMENT_TOKEN)
# The registry as docker-compose.master.yml starts it: the management token from the environment.
BERTH_REGISTRY_ACL_MASTER_TOKEN=$mgmt "$bin" server --http-addr "127.0.0.1:$port" \
  --data-dir "$tmp/registry" --node-name registry >"$tmp/registry.log" 2>&1 &
pid=$!
BERTH_REGISTRY_URL=$url scripts/registry-roles.sh apply "$env_file"
BERTH_REGISTRY_URL=$url BERTH_ENV_FILE=$env_file scripts/worker-token.sh w1 >"$tmp/join.txt"
grep -q "BERTH_NODE_NAME=w1 BERTH_REGISTRY_TOKEN=$(cat "$tmp/workers/w1.token") BERTH_CLUSTER_TOKEN=cluster-secret" "$tmp/join.txt" ||
  {
    echo "FAIL: worker-token.sh does not print the join command:" >&2
    cat "$tmp/join.txt" >&2
    exit 1
  }

failures=0
# expect CODE TOKEN METHOD PATH [BODY]
expect() {
  local want=$1 token=$2 method=$3 path=$4 body=${5:-} got
  got=$(curl -sS -o /dev/null -w '%{http_code}' -X "$method" ${token:+-H "X-Consul-Token: $token"} \
    --data-binary "$body" "$url$path")
  if [ "$got" = "$want" ]; then
    echo "ok   $want ${token:+(token) }$method $path"
  else
    echo "FAIL $method $path with ${token:-no token}: $got, want $want" >&2
    failures=$((failures + 1))
  fi
}
register() { printf '{"Node":"%s","Address":"10.0.0.9","Service":{"ID":"%s","Service":"%s","Port":8833}}' "$1" "$2" "$2"; }

master=$(get BERTH_MASTER_REGISTRY_TOKEN)
frontdoor=$(get BERTH_FRONTDOOR_REGISTRY_TOKEN)
ui=$(get BERTH_UI_REGISTRY_TOKEN)
worker=$(cat "$tmp/workers/w1.token")

# Anonymous: default deny.
expect 403 "" PUT /v1/kv/berth/instances/a x
expect 403 "" PUT /v1/kv/anything x
expect 403 "" PUT /v1/catalog/register "$(register fake berth-worker:fake)"
expect 403 "" PUT /v1/agent/service/register '{"Name":"berth-worker:fake","Port":1}'
expect 403 "" GET /v1/kv/berth/instances/a
# The master: its prefixes and sessions; no registration.
expect 200 "$master" PUT /v1/kv/berth/instances/a '{"id":"a"}'
expect 200 "$master" PUT /v1/kv/instance/a/ip 10.0.0.9
expect 403 "$master" PUT /v1/kv/other x
expect 200 "$master" PUT /v1/session/create '{"Name":"lock"}'
expect 200 "$master" GET /v1/health/service/berth-worker
expect 403 "$master" PUT /v1/catalog/register "$(register fake berth-worker:fake)"
# A worker: its own node and services, read on the records; not another node, not the KV.
expect 200 "$worker" PUT /v1/catalog/register "$(register w1 berth-worker:w1)"
expect 403 "$worker" PUT /v1/catalog/register "$(register w2 berth-worker:w2)"
expect 200 "$worker" GET /v1/kv/berth/instances/a
expect 403 "$worker" PUT /v1/kv/berth/instances/a x
expect 403 "$worker" GET /v1/kv/instance/a/ip
# No client removes the registry's own node, its serfHealth check or another member: the internal
# endpoints need node:write on the node named (the worker's token has only its own), and the
# server's own node is refused even then.
leave() { printf '{"Node":"%s","ID":"00000000-0000-0000-0000-000000000001","Address":"10.0.0.9","Port":8500}' "$1"; }
expect 403 "" PUT /v1/internal/berth/leave "$(leave registry)"
expect 403 "" PUT /v1/internal/berth/leave "$(leave w1)"
expect 403 "" PUT /v1/internal/berth/heartbeat "$(leave w2)"
expect 403 "" PUT /v1/catalog/deregister '{"Node":"registry"}'
expect 403 "" PUT /v1/catalog/deregister '{"Node":"registry","CheckID":"serfHealth"}'
expect 403 "" PUT /v1/agent/leave
expect 403 "$worker" PUT /v1/internal/berth/leave "$(leave registry)"
expect 403 "$worker" PUT /v1/internal/berth/leave "$(leave w2)"
expect 403 "$worker" PUT /v1/catalog/deregister '{"Node":"registry"}'
expect 403 "$master" PUT /v1/catalog/deregister '{"Node":"registry"}'
expect 403 "$master" PUT /v1/internal/berth/leave "$(leave registry)"
expect 400 "$mgmt" PUT /v1/internal/berth/leave "$(leave registry)"
expect 403 "$mgmt" PUT /v1/catalog/deregister '{"Node":"registry"}'
expect 403 "$mgmt" PUT /v1/catalog/deregister '{"Node":"registry","CheckID":"serfHealth"}'
expect 200 "$master" GET /v1/health/node/registry
# The front door and the UI only read.
for t in "$frontdoor" "$ui"; do
  expect 200 "$t" GET '/v1/kv/berth/instances/?recurse'
  expect 200 "$t" GET /v1/health/service/berth-worker
  expect 403 "$t" PUT /v1/kv/berth/instances/a x
  expect 403 "$t" PUT /v1/catalog/register "$(register fake berth-worker:fake)"
  expect 403 "$t" PUT /v1/session/create '{"Name":"lock"}'
done
# Applying again changes nothing and keeps every token working.
BERTH_REGISTRY_URL=$url scripts/registry-roles.sh apply "$env_file" >/dev/null
BERTH_REGISTRY_URL=$url BERTH_ENV_FILE=$env_file scripts/worker-token.sh w1 >/dev/null
[ "$(cat "$tmp/workers/w1.token")" = "$worker" ] || {
  echo "FAIL: worker-token.sh made a new token on a second run" >&2
  failures=$((failures + 1))
}
expect 200 "$master" PUT /v1/kv/berth/instances/b x
expect 200 "$worker" GET /v1/kv/berth/instances/b

if [ "$failures" -gt 0 ]; then
  echo "$failures failures (registry log: kept in $tmp.log)" >&2
  cp "$tmp/registry.log" "$tmp.log"
  exit 1
fi
echo "registry roles: all checks passed"
