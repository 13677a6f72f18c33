#!/usr/bin/env bash
# Keeps stacks away from berth: refuses connections from any stack network (bridges named
# berth<hash>) to the host's own addresses and to published ports (scripts/lib/firewall.sh).
# IPv4 only: stack containers have no IPv6 (scripts/lib/firewall.sh says why).
#   sudo scripts/firewall.sh apply|remove|check
# scripts/init-worker.sh runs it, the berth-worker unit applies it at each start, and
# scripts/up.sh applies it when run as root. BERTH_IPTABLES picks the iptables command
# [iptables, the one Docker uses on Debian].
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/firewall.sh
. scripts/lib/firewall.sh
case ${1:-} in
apply | remove | check) ;;
*)
  echo "usage: $0 apply|remove|check" >&2
  exit 2
  ;;
esac
command -v "${BERTH_IPTABLES:-iptables}" >/dev/null || {
  echo "$0: ${BERTH_IPTABLES:-iptables} is not installed (apt-get install iptables)" >&2
  exit 1
}
if berth_firewall "$1"; then
  [ "$1" = check ] && echo "berth firewall: in place" || echo "berth firewall: $1 done"
else
  [ "$1" = check ] && echo "berth firewall: missing (sudo $0 apply)" >&2
  exit 1
fi
