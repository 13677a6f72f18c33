#!/usr/bin/env bash
# Runs HashiCorp's Go client (github.com/hashicorp/consul/api) against the registry binary,
# once with ACLs off and once with ACLs on, each against a server and against an agent joined
# to another server. Nothing is downloaded: the client and its dependencies come from a Go
# vendor directory named by BERTH_GO_CONSUL_VENDOR (it holds modules.txt and
# github.com/hashicorp/consul/api with what that imports); see docs/TESTING.md.
# Skipped, with exit 0, when that variable or the go command is missing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"

vendor="${BERTH_GO_CONSUL_VENDOR:-}"
if [[ -z "$vendor" || ! -f "$vendor/modules.txt" || ! -d "$vendor/github.com/hashicorp/consul/api" ]]; then
  echo "skipped: set BERTH_GO_CONSUL_VENDOR to a Go vendor directory holding github.com/hashicorp/consul/api and its dependencies (docs/TESTING.md)"
  exit 0
fi
if ! command -v go >/dev/null; then
  echo "skipped: no go command (Debian: apt-get install golang-go)"
  exit 0
fi

bin="${BERTH_REGISTRY_BIN:-}"
if [[ -z "$bin" ]]; then
  (cd "$root" && cargo build -q -p berth-registry)
  bin="$root/target/debug/berth-registry"
fi

work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# A module of its own whose requirements are the vendored modules, whatever their versions.
mkdir -p "$work/mod/dskit"
cp "$here/main.go" "$work/mod/"
cp "$here/dskit/main.go" "$work/mod/dskit/"
ln -s "$(cd "$vendor" && pwd)" "$work/mod/vendor"
{
  echo "module berth.local/gocompat"
  echo
  echo "go 1.19"
  echo
  # Go checks go.mod against modules.txt: a requirement for each module marked explicit there
  # (header "# path version [=> target version]"), a replace for each "# path => target version".
  echo "require ("
  awk '$1 == "#" && (NF == 3 || NF == 6) { mod = $2 " " $3; next }
       $1 == "##" && $2 ~ /^explicit/ && mod != "" { print "\t" mod }
       { mod = "" }' "$vendor/modules.txt"
  echo ")"
  awk '$1 == "#" && NF == 5 && $3 == "=>" { print "replace " $2 " => " $4 " " $5 }' "$vendor/modules.txt"
} >"$work/mod/go.mod"
(cd "$work/mod" && GOFLAGS=-mod=vendor GOPROXY=off GOTOOLCHAIN=local go build -o "$work/gocompat" .)
# A real tool on the client, when the vendor directory has it: grafana/dskit's Consul KV store.
dskit=""
if [[ -d "$vendor/github.com/grafana/dskit/kv/consul" ]]; then
  (cd "$work/mod" && GOFLAGS=-mod=vendor GOPROXY=off GOTOOLCHAIN=local go build -o "$work/dskitcompat" ./dskit)
  dskit="$work/dskitcompat"
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

start() { # start <log> <args...>: starts the registry, waits for its leader answer
  local port log="$1"
  shift
  port="$(free_port)"
  "$bin" server --dev --node-name gocompat --http-addr "127.0.0.1:$port" "$@" >"$log" 2>&1 &
  pids+=("$!")
  for _ in $(seq 100); do
    if curl -sf "http://127.0.0.1:$port/v1/status/leader" >/dev/null 2>&1; then
      addr="127.0.0.1:$port"
      return 0
    fi
    sleep 0.1
  done
  echo "registry did not start; log:" >&2
  cat "$log" >&2
  return 1
}

agent() { # agent <log> <server addr> <args...>: an agent joined to that server, once it answers
  local port log="$1" server="$2"
  shift 2
  port="$(free_port)"
  "$bin" agent --join "$server" --node-name gocompat-agent --http-addr "127.0.0.1:$port" "$@" >"$log" 2>&1 &
  pids+=("$!")
  for _ in $(seq 100); do
    if curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/v1/agent/self" 2>/dev/null | grep -qE '200|403'; then
      addr="127.0.0.1:$port"
      return 0
    fi
    sleep 0.1
  done
  echo "agent did not start; log:" >&2
  cat "$log" >&2
  return 1
}

status=0
start "$work/acl-off.log"
BERTH_ADDR="$addr" BERTH_TOKEN="" "$work/gocompat" || status=1
if [[ -n "$dskit" ]]; then BERTH_ADDR="$addr" BERTH_TOKEN="" "$dskit" || status=1; fi
# The same program against an agent joined to a fresh server (BERTH_AGENT=1: a client agent).
start "$work/agent-server-acl-off.log"
agent "$work/agent-acl-off.log" "$addr"
BERTH_ADDR="$addr" BERTH_TOKEN="" BERTH_AGENT=1 "$work/gocompat" || status=1

token="$(python3 -c 'import uuid; print(uuid.uuid4())')"
start "$work/acl-on.log" --acl-master-token "$token"
BERTH_ADDR="$addr" BERTH_TOKEN="$token" "$work/gocompat" || status=1
if [[ -n "$dskit" ]]; then BERTH_ADDR="$addr" BERTH_TOKEN="$token" "$dskit" || status=1; fi
start "$work/agent-server-acl-on.log" --acl-master-token "$token"
agent "$work/agent-acl-on.log" "$addr" --token "$token"
BERTH_ADDR="$addr" BERTH_TOKEN="$token" BERTH_AGENT=1 "$work/gocompat" || status=1

if [[ $status -ne 0 && -n "${BERTH_TEST_OUTPUT:-}" ]]; then
  mkdir -p "$BERTH_TEST_OUTPUT/go-consul"
  cp "$work"/*.log "$BERTH_TEST_OUTPUT/go-consul/"
fi
exit "$status"
