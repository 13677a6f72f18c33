# The host firewall that keeps stacks away from berth (sourced, not run; used by
# scripts/firewall.sh). Every stack network's bridge is named berth<hash> by the worker, so one
# set of rules covers every stack, present and future:
#   INPUT:       a new connection from a stack to any address of the host is refused: the worker
#                API, the registry and its agent, and other stacks' published ports (Docker's
#                userland proxy serves those on the host) are out of reach.
#   DOCKER-USER: a connection from a stack that Docker's NAT sends to a published port (the path
#                without the userland proxy) is refused too.
# Replies to connections the host opened (the worker's checks of its stacks) still pass.
# IPv4 only, on purpose: the worker makes stack networks without IPv6, so Docker switches IPv6
# off inside their containers (disable_ipv6=1 on every interface, no address, /proc/sys read-only)
# and no IPv6 packet leaves a stack; worker/tests/docker_isolation.rs checks it from inside one.
# shellcheck shell=bash

BERTH_FIREWALL_CHAIN=BERTH-STACKS
BERTH_FIREWALL_IF='berth+'

# berth_firewall apply|remove|check: apply is idempotent; check fails unless every rule is in place.
berth_firewall() {
  local ipt=${BERTH_IPTABLES:-iptables} c=$BERTH_FIREWALL_CHAIN i=$BERTH_FIREWALL_IF
  case $1 in
  apply)
    $ipt -w -N "$c" 2>/dev/null || true
    $ipt -w -F "$c" &&
      $ipt -w -A "$c" -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN &&
      $ipt -w -A "$c" -p tcp -j REJECT --reject-with tcp-reset &&
      $ipt -w -A "$c" -j REJECT --reject-with icmp-port-unreachable || return 1
    $ipt -w -C INPUT -i "$i" -j "$c" 2>/dev/null || $ipt -w -I INPUT 1 -i "$i" -j "$c" || return 1
    # Docker makes DOCKER-USER when it starts; make it here when Docker has not run yet.
    $ipt -w -N DOCKER-USER 2>/dev/null || true
    $ipt -w -C DOCKER-USER -i "$i" -m conntrack --ctstate DNAT -j REJECT 2>/dev/null ||
      $ipt -w -I DOCKER-USER 1 -i "$i" -m conntrack --ctstate DNAT -j REJECT
    ;;
  remove)
    while $ipt -w -D INPUT -i "$i" -j "$c" 2>/dev/null; do :; done
    while $ipt -w -D DOCKER-USER -i "$i" -m conntrack --ctstate DNAT -j REJECT 2>/dev/null; do :; done
    $ipt -w -F "$c" 2>/dev/null || true
    $ipt -w -X "$c" 2>/dev/null || true
    ;;
  check)
    $ipt -w -C INPUT -i "$i" -j "$c" 2>/dev/null &&
      $ipt -w -C "$c" -p tcp -j REJECT --reject-with tcp-reset 2>/dev/null &&
      $ipt -w -C DOCKER-USER -i "$i" -m conntrack --ctstate DNAT -j REJECT 2>/dev/null
    ;;
  *) return 2 ;;
  esac
}
