#!/usr/bin/env bash
# Prepares a master host (Debian / Ubuntu, run as root from a checkout of berth): Docker and
# docker-compose from the distribution, Docker's default-address-pools, berth's images, tokens in
# /etc/berth/master.env (API, cluster and registry role tokens; the registry runs with ACLs on and
# default deny) and the systemd unit berth-master.service, then starts it.
#   sudo scripts/init-master.sh [public address]     (default: this host's main address)
# Images: built here by scripts/build-images.sh (needs Rust and musl-tools), unless they are
# already loaded (`docker save berth-registry:local ... | ssh host docker load`).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/host.sh
. scripts/lib/host.sh
require_root "$@"

install_docker
configure_address_pools

if docker image inspect berth-registry:local berth-master:local berth-nginx:local >/dev/null 2>&1; then
  echo "berth images present"
else
  scripts/build-images.sh
fi

address=${1:-$(host_address 1.1.1.1)}
[ -n "$address" ] || {
  echo "$0: cannot work out this host's address; pass it as the first argument" >&2
  exit 1
}
mkdir -p /etc/berth
chmod 700 /etc/berth
env_file=/etc/berth/master.env
if [ ! -s "$env_file" ]; then
  (
    umask 077
    cat >"$env_file" <<ENV
BERTH_PUBLIC_URL=http://$address
BERTH_API_TOKEN=$(new_token)
BERTH_CLUSTER_TOKEN=$(new_token)
ENV
  )
  echo "wrote $env_file (API and cluster tokens)"
else
  echo "$env_file exists; tokens kept"
fi
# Registry ACLs on, default deny: the management token and one token per role (master, front
# door, UI) join the env file; the unit applies their policies each time it starts.
scripts/registry-roles.sh secrets "$env_file"

install_unit berth-master.service
systemctl restart berth-master.service

for ((i = 0; i < 120; i++)); do
  curl -fsS -o /dev/null "http://127.0.0.1/healthz" 2>/dev/null && break
  sleep 0.5
done
cat <<MSG

master host ready:
  API (nginx)      http://$address/v1/instances     token: BERTH_API_TOKEN in $env_file
  registry UI      http://$address:8501/ui/  token: BERTH_UI_REGISTRY_TOKEN in $env_file (read-only)
  registry admin   BERTH_REGISTRY_MANAGEMENT_TOKEN in $env_file
  join a worker    on the worker host: sudo scripts/init-worker.sh
                   here: sudo scripts/worker-token.sh <worker node name>   (prints the join command)
MSG
