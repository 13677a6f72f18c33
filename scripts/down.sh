#!/usr/bin/env bash
# Stops what scripts/up.sh started (worker, master, registry, in that order), keeping their data.
#   --purge   first delete every instance through the master API (stacks, images, repos), then
#             remove the state directory (.berth): the next up.sh starts from nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
home=${BERTH_HOME:-$PWD/.berth}
master=${BERTH_MASTER:-127.0.0.1:8080}
purge=no
[ "${1:-}" = --purge ] && purge=yes

if [ "$purge" = yes ] && [ -s "$home/master/api-token" ] &&
  curl -fsS -o /dev/null "http://$master/healthz" 2>/dev/null; then
  token=$(cat "$home/master/api-token")
  ids=$(curl -fsS -H "Authorization: Bearer $token" "http://$master/v1/instances" |
    grep -o '"id":"[^"/]*"' | cut -d'"' -f4 || true)
  for id in $ids; do
    echo "deleting instance $id"
    curl -fsS -o /dev/null -X DELETE -H "Authorization: Bearer $token" \
      "http://$master/v1/instances/$id" || echo "  could not delete $id" >&2
  done
fi

for name in worker master registry; do
  pidfile=$home/run/$name.pid
  [ -s "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for ((i = 0; i < 60; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.25
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "$name (pid $pid) did not stop in 15 s; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
    echo "stopped $name (pid $pid)"
  fi
  rm -f "$pidfile"
done

if [ "$purge" = yes ]; then
  rm -rf "$home"
  echo "removed $home"
fi
