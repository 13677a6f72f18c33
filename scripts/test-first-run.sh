#!/usr/bin/env bash
# The README's first run, as a new user makes it: scripts/up.sh (its registry refusing requests
# without a token, each role token doing its part only), then `berth deploy` of the
# sample app, its URL answering with the app's page, `berth logs`, `berth rm`, and
# scripts/down.sh --purge. It runs beside anything already on this machine: its own state
# folder, free ports, its own node name and instance id; everything is stopped and removed
# when it ends, failed or not. scripts/test.sh runs it; it needs the binaries built.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> first run: %s\n' "$*"; }
fail() {
  printf 'test-first-run.sh: %s\n' "$*" >&2
  exit 1
}

# A port nothing listens on now.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

home=$(mktemp -d)
out=$home.out
mkdir -p "$out"
export BERTH_HOME=$home/.berth
BERTH_REGISTRY=127.0.0.1:$(free_port)
BERTH_MASTER=127.0.0.1:$(free_port)
BERTH_WORKER=127.0.0.1:$(free_port)
export BERTH_REGISTRY BERTH_MASTER BERTH_WORKER
export BERTH_NODE=first-run-$$
id=first-run-$$
berth=target/debug/berth

cleanup() {
  local rc=$?
  if [ "$rc" != 0 ]; then
    echo "--- last lines of each log ($BERTH_HOME/logs)" >&2
    tail -n 30 "$BERTH_HOME"/logs/*.log >&2 2>/dev/null || true
  fi
  "$berth" rm "$id" >/dev/null 2>&1 || true
  scripts/down.sh --purge >/dev/null 2>&1 || true
  rm -rf "$home" "$out"
  exit "$rc"
}
trap cleanup EXIT

say "scripts/up.sh (state in $BERTH_HOME, master on $BERTH_MASTER)"
scripts/up.sh >"$out/up" 2>&1 || {
  cat "$out/up" >&2
  fail "scripts/up.sh failed"
}
grep -q "berth is up" "$out/up" || fail "up.sh did not say it is up: $(cat "$out/up")"
grep -q "deploy scripts/sample-app" "$out/up" || fail "up.sh did not print the deploy hint"

say "the registry refuses what carries no token, and each role's token does its part only"
code() { curl -sS -o /dev/null -w '%{http_code}' "$@"; }
reg=http://$BERTH_REGISTRY
[ "$(code -X PUT --data-binary x "$reg/v1/kv/berth/instances/x")" = 403 ] || fail "an anonymous KV write was not refused"
# A listing is filtered per key, as Consul does: nothing readable is a 404, never a value.
case $(code "$reg/v1/kv/berth/instances/?recurse") in
403 | 404) ;;
*) fail "an anonymous KV listing was answered" ;;
esac
[ "$(code -X PUT --data-binary '{"Node":"fake","Address":"10.0.0.9","Service":{"Service":"berth-worker:fake","Port":1}}' \
  "$reg/v1/catalog/register")" = 403 ] || fail "an anonymous catalog registration was not refused"
ui=$(cat "$BERTH_HOME/tokens/ui")
[ "$(code -H "X-Consul-Token: $ui" "$reg/v1/health/service/berth-worker")" = 200 ] || fail "the UI token cannot read"
[ "$(code -H "X-Consul-Token: $ui" -X PUT --data-binary x "$reg/v1/kv/berth/instances/x")" = 403 ] || fail "the UI token may write"
worker=$(cat "$BERTH_HOME/tokens/worker")
[ "$(code -H "X-Consul-Token: $worker" -X PUT --data-binary x "$reg/v1/kv/berth/instances/x")" = 403 ] || fail "the worker token may write the records"

# The CLI finds the cluster up.sh started through its state folder alone, as on the README.
cli() { env -u BERTH_MASTER "$berth" "$@"; }

say "berth deploy scripts/sample-app"
cli deploy scripts/sample-app --id "$id" >"$out/deploy" 2>"$out/deploy.err" || {
  cat "$out/deploy" "$out/deploy.err" >&2
  fail "berth deploy failed"
}
cat "$out/deploy.err" "$out/deploy"
for line in "building api" "built api in" "building web" "built web in"; do
  grep -q "^$line" "$out/deploy.err" || fail "berth deploy printed no \"$line\" line"
done
url=$(sed -n 's/^ *web  *\(http:[^ ]*\)$/\1/p' "$out/deploy")
[ -n "$url" ] || fail "berth deploy printed no URL for web"

say "GET ${url}cgi-bin/index.cgi"
page=$(curl -fsS --max-time 10 --retry 20 --retry-delay 1 --retry-connrefused \
  "${url}cgi-bin/index.cgi") || fail "the app's URL did not answer 200"
case $page in
*"api says: hello from berth"*) ;;
*) fail "the app's page lacks its greeting: $page" ;;
esac

# With the instance's record stored, an anonymous listing still gets none of it.
case $(code "$reg/v1/kv/berth/instances/?recurse") in
403 | 404) ;;
*) fail "an anonymous KV listing was answered while a record exists" ;;
esac

say "berth logs"
cli logs "$id" >"$out/logs" || fail "berth logs failed"
grep -q "asked for /cgi-bin/index.cgi" "$out/logs" || fail "no request in berth logs: $(cat "$out/logs")"
grep -q "building service" "$out/logs" || fail "no build output in berth logs"

say "berth rm"
cli rm "$id" || fail "berth rm failed"
if cli status "$id" >/dev/null 2>&1; then fail "$id is still there after berth rm"; fi

say "scripts/down.sh --purge"
scripts/down.sh --purge
[ ! -e "$BERTH_HOME" ] || fail "down.sh --purge left $BERTH_HOME"
left=$(docker ps -aq --filter "label=org.berth.node=$BERTH_NODE")
[ -z "$left" ] || fail "containers left behind: $left"
say "ok"
