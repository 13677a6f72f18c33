#!/usr/bin/env bash
# Prepares a worker host (Debian / Ubuntu, run as root from a checkout of berth): Docker from the
# distribution, Docker's default-address-pools, the worker image, its data directory and the
# systemd unit berth-worker.service (started by scripts/join-worker.sh, which says where to join).
#   sudo scripts/init-worker.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/host.sh
. scripts/lib/host.sh
require_root "$@"

install_docker
configure_address_pools

if docker image inspect berth-worker:local >/dev/null 2>&1; then
  echo "berth-worker image present"
else
  scripts/build-images.sh
fi

# Same path on the host and in the container: Docker resolves a stack's bind mounts on the host.
mkdir -p /var/lib/berth-worker /etc/berth
chmod 700 /etc/berth
install_unit berth-worker.service
echo "worker host ready: now run  sudo BERTH_CLUSTER_TOKEN=... scripts/join-worker.sh <master address>"
