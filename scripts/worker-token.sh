#!/usr/bin/env bash
# On the master host: the registry token of one worker host, and the command that joins it.
#   sudo scripts/worker-token.sh <worker node name>
# The token may write only that node (its agent joins with it) and the services it registers,
# and read the catalog and the instance records (the fence). It is kept in
# /etc/berth/workers/<node>.token, so running this again prints the same command. Reads the
# management and cluster tokens from /etc/berth/master.env (BERTH_ENV_FILE); the registry is
# http://127.0.0.1:8500 (BERTH_REGISTRY_URL). The worker must run with this node name.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/acl.sh
. scripts/lib/acl.sh

[ $# -eq 1 ] || {
  echo "usage: $0 <worker node name>" >&2
  exit 2
}
node=$1
env_file=${BERTH_ENV_FILE:-/etc/berth/master.env}
dir=${BERTH_WORKER_TOKENS:-$(dirname "$env_file")/workers}
url=${BERTH_REGISTRY_URL:-http://127.0.0.1:${BERTH_REGISTRY_PORT:-8500}}
[[ $node =~ ^[a-z0-9][a-z0-9_.-]*$ ]] || {
  echo "$0: a node name is lower-case letters, digits, '.', '_', '-'" >&2
  exit 2
}
mgmt=$(acl_env_get "$env_file" BERTH_REGISTRY_MANAGEMENT_TOKEN)
cluster=$(acl_env_get "$env_file" BERTH_CLUSTER_TOKEN)
if [ -z "$mgmt" ] || [ -z "$cluster" ]; then
  echo "$0: $env_file lacks BERTH_REGISTRY_MANAGEMENT_TOKEN or BERTH_CLUSTER_TOKEN (scripts/init-master.sh writes them)" >&2
  exit 1
fi
(umask 077 && mkdir -p "$dir")
[ -s "$dir/$node.token" ] || (umask 077 && acl_new_secret >"$dir/$node.token")
acl_wait "$url" 30
acl_role "$url" "$mgmt" worker "$(cat "$dir/$node.token")" "$node"
cat <<MSG
registry token for worker $node in $dir/$node.token. On that host (after scripts/init-worker.sh):
  sudo BERTH_NODE_NAME=$node BERTH_REGISTRY_TOKEN=$(cat "$dir/$node.token") BERTH_CLUSTER_TOKEN=$cluster scripts/join-worker.sh <this host's address>
MSG
