#!/usr/bin/env bash
# The sample app's whole life through the master API, with the same curl calls the README shows:
# upload (the master commits it and builds it on a worker), start, open it, stop, delete.
#   scripts/demo.sh [instance id]
# Environment: BERTH_API (default http://127.0.0.1:8080, or the nginx front door),
#              BERTH_API_TOKEN (default: the token up.sh's master generated).
set -euo pipefail
cd "$(dirname "$0")/.."
api=${BERTH_API:-http://127.0.0.1:8080}
id=${1:-sample}
if [ -z "${BERTH_API_TOKEN:-}" ]; then
  BERTH_API_TOKEN=$(cat "${BERTH_HOME:-.berth}/master/api-token")
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

step() { printf '\n== %s\n' "$*"; }

# call METHOD PATH [curl args...]: prints the answer; fails with the status and body on >= 400.
call() {
  local method=$1 path=$2 status
  shift 2
  status=$(curl -sS -o "$tmp/body" -w '%{http_code}' -X "$method" \
    -H "Authorization: Bearer $BERTH_API_TOKEN" "$@" "$api$path")
  cat "$tmp/body"
  echo
  if [ "$status" -ge 400 ]; then
    echo "demo.sh: $method $path answered $status" >&2
    exit 1
  fi
}

expect_state() {
  grep -q "\"state\":\"$1\"" "$tmp/body" || {
    echo "demo.sh: expected state $1" >&2
    exit 1
  }
}

step "upload scripts/sample-app as instance $id (the master commits it and builds it)"
tar -C scripts/sample-app -czf "$tmp/app.tar.gz" .
call PUT "/v1/instances/$id/code?user=demo&project=sample&wait=10m" \
  -H 'Content-Type: application/gzip' --data-binary @"$tmp/app.tar.gz"
expect_state built

step "start it (answers once every service is running and ready)"
call POST "/v1/instances/$id/start"
expect_state running
endpoint=$(grep -o '"service":"web","container_port":8000,"protocol":"tcp","host":"[^"]*","host_port":[0-9]*' "$tmp/body" |
  sed 's/.*"host":"\([^"]*\)","host_port":\([0-9]*\)/\1:\2/')
[ -n "$endpoint" ] || {
  echo "demo.sh: no endpoint for the web service" >&2
  exit 1
}

step "open it: http://$endpoint/cgi-bin/index.cgi"
curl -fsS "http://$endpoint/cgi-bin/index.cgi"

step "its record"
call GET "/v1/instances/$id"

step "stop it"
call POST "/v1/instances/$id/stop"
expect_state stopped

step "delete it (containers, images, volumes, networks, checkout, KV keys, repository)"
call DELETE "/v1/instances/$id"
echo "demo done"
