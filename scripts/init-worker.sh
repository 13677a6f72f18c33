#!/usr/bin/env bash
# Prepares a worker host (Debian / Ubuntu, run as root from a checkout of berth): Docker from the
# distribution, Docker's default-address-pools, the worker image, its data directory and the
# systemd unit berth-worker.service (started by scripts/join-worker.sh, which says where to join)
# and the firewall that keeps stacks away from the host's ports (scripts/firewall.sh).
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
# Stacks cannot reach berth: connections from stack networks to this host are refused (the unit
# applies the rules again at each start, as they do not survive a reboot).
command -v iptables >/dev/null || apt-get install -y -qq --no-install-recommends iptables >/dev/null
scripts/firewall.sh apply
install_unit berth-worker.service
echo "worker host ready: on the master host run  sudo scripts/worker-token.sh $(hostname -s | tr '[:upper:]' '[:lower:]')"
echo "and here the join command it prints"
