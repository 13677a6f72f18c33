# Shared steps of scripts/init-master.sh and scripts/init-worker.sh (sourced, not run).
# shellcheck shell=bash

require_root() {
  [ "$(id -u)" = 0 ] || {
    echo "$0: run as root (sudo $0 $*)" >&2
    exit 1
  }
}

# Docker and docker-compose from the distribution (Debian / Ubuntu), nothing from elsewhere.
install_docker() {
  export DEBIAN_FRONTEND=noninteractive
  if ! command -v docker >/dev/null || ! command -v docker-compose >/dev/null; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends docker.io docker-compose curl \
      ca-certificates python3 iproute2 >/dev/null
  fi
  systemctl enable --now docker >/dev/null 2>&1 || service docker start >/dev/null 2>&1 || true
}

# Docker's built-in pools allow about 31 bridge networks; every stack makes one. Merge
# default-address-pools into /etc/docker/daemon.json (other keys are kept; an operator's own
# pools are left alone) and restart Docker only when the file changed.
configure_address_pools() {
  local file=/etc/docker/daemon.json
  mkdir -p /etc/docker
  local changed
  changed=$(python3 - "$file" <<'PY'
import json, os, sys
path = sys.argv[1]
conf = {}
if os.path.exists(path) and os.path.getsize(path) > 0:
    with open(path) as f:
        conf = json.load(f)
if "default-address-pools" in conf:
    print("kept")
    sys.exit(0)
conf["default-address-pools"] = [{"base": "172.16.0.0/12", "size": 24}]
tmp = path + ".berth-tmp"
with open(tmp, "w") as f:
    json.dump(conf, f, indent=2)
    f.write("\n")
os.replace(tmp, path)
print("changed")
PY
  )
  if [ "$changed" = changed ]; then
    echo "set default-address-pools in $file (172.16.0.0/12 in /24s: 4096 networks); restarting Docker"
    systemctl restart docker 2>/dev/null || service docker restart
  else
    echo "$file already sets default-address-pools; left as it is"
  fi
}

# install_unit NAME: scripts/systemd/NAME with @BERTH_DIR@ set to this checkout, enabled.
install_unit() {
  local name=$1 dir
  dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
  sed "s|@BERTH_DIR@|$dir|g" "$dir/scripts/systemd/$name" >"/etc/systemd/system/$name"
  systemctl daemon-reload
  systemctl enable "$name" >/dev/null
  echo "installed and enabled /etc/systemd/system/$name"
}

new_token() {
  od -An -N32 -tx1 /dev/urandom | tr -d ' \n'
}

# This host's address on the route towards $1 (default: the default route).
host_address() {
  local to=${1:-1.1.1.1} ip
  ip=$(getent ahostsv4 "$to" 2>/dev/null | awk 'NR==1 {print $1}')
  ip route get "${ip:-$to}" 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p' | head -n1
}
