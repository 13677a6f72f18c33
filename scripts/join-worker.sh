#!/usr/bin/env bash
# Joins this host to a berth cluster as a worker: one command on a host prepared by
# scripts/init-worker.sh.
#   sudo BERTH_NODE_NAME=<node> BERTH_REGISTRY_TOKEN=<token> BERTH_CLUSTER_TOKEN=<token> \
#     scripts/join-worker.sh <master address>[:registry port]
# `sudo scripts/worker-token.sh <node>` on the master host prints exactly this command: the
# registry token is this node's own (it may write only this node and its registrations), the
# cluster token is the master's (or give BERTH_CLUSTER_TOKEN_FILE). BERTH_NODE_NAME defaults to
# this host's short name. BERTH_ADVERTISE overrides the address masters reach this host at.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/host.sh
. scripts/lib/host.sh

[ $# -eq 1 ] || {
  echo "usage: BERTH_REGISTRY_TOKEN=<token> BERTH_CLUSTER_TOKEN=<token> $0 <master address>[:registry port]" >&2
  exit 2
}
require_root "$@"
target=$1
host=${target%:*}
port=8500
[ "$host" != "$target" ] && port=${target##*:}
registry=http://$host:$port

token=${BERTH_CLUSTER_TOKEN:-}
if [ -z "$token" ] && [ -n "${BERTH_CLUSTER_TOKEN_FILE:-}" ]; then
  token=$(cat "$BERTH_CLUSTER_TOKEN_FILE")
fi
[ -n "$token" ] || {
  echo "$0: set BERTH_CLUSTER_TOKEN (from the master host's /etc/berth/master.env)" >&2
  exit 2
}
registry_token=${BERTH_REGISTRY_TOKEN:-}
[ -n "$registry_token" ] || {
  echo "$0: set BERTH_REGISTRY_TOKEN (on the master host: sudo scripts/worker-token.sh <node>)" >&2
  exit 2
}
node=${BERTH_NODE_NAME:-$(hostname -s | tr '[:upper:]' '[:lower:]')}

curl -fsS -o /dev/null --max-time 5 "$registry/v1/status/leader" || {
  echo "$0: the registry at $registry does not answer (is port $port open to this host?)" >&2
  exit 1
}
advertise=${BERTH_ADVERTISE:-$(host_address "$host")}
[ -n "$advertise" ] || {
  echo "$0: cannot work out this host's address towards $host; set BERTH_ADVERTISE" >&2
  exit 1
}

mkdir -p /etc/berth /var/lib/berth-worker
(
  umask 077
  cat >/etc/berth/worker.env <<ENV
BERTH_JOIN=$registry
BERTH_ADVERTISE=$advertise
BERTH_CLUSTER_TOKEN=$token
BERTH_NODE_NAME=$node
BERTH_REGISTRY_TOKEN=$registry_token
ENV
)
if [ -e /etc/systemd/system/berth-worker.service ]; then
  systemctl restart berth-worker.service
else
  set -a
  # shellcheck disable=SC1091
  . /etc/berth/worker.env
  set +a
  scripts/firewall.sh apply
  docker-compose -p berth-worker -f docker-compose.worker.yml up -d --no-build
fi

echo "waiting for this worker ($node, $advertise) to pass its health check at $registry"
for ((i = 0; i < 120; i++)); do
  if curl -fsS -H "X-Consul-Token: $registry_token" \
    "$registry/v1/health/service/berth-worker?passing=1" 2>/dev/null |
    grep -q "\"Address\":\"$advertise\""; then
    echo "joined: berth-worker $node on $advertise is passing"
    exit 0
  fi
  sleep 0.5
done
echo "$0: the worker did not pass within 60 s: docker logs berth-worker_worker_1" >&2
exit 1
