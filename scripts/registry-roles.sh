#!/usr/bin/env bash
# The registry's ACL roles of a master host (README, "Security"): the management token and one
# least-privilege token per role (master, front door, registry UI), kept in the host's env file.
#   scripts/registry-roles.sh secrets [ENV_FILE]   adds the secrets ENV_FILE lacks (before the
#                                                  compose project starts: it reads them)
#   scripts/registry-roles.sh apply [ENV_FILE]     makes the registry hold the policies and
#                                                  tokens (once it answers; idempotent)
# ENV_FILE defaults to /etc/berth/master.env; the registry to http://127.0.0.1:8500
# (BERTH_REGISTRY_URL). scripts/init-master.sh runs both. Worker tokens: scripts/worker-token.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/acl.sh
. scripts/lib/acl.sh

step=${1:-}
env_file=${2:-/etc/berth/master.env}
url=${BERTH_REGISTRY_URL:-http://127.0.0.1:${BERTH_REGISTRY_PORT:-8500}}
case $step in
secrets)
  acl_env_secrets "$env_file" BERTH_REGISTRY_MANAGEMENT_TOKEN BERTH_MASTER_REGISTRY_TOKEN \
    BERTH_FRONTDOOR_REGISTRY_TOKEN BERTH_UI_REGISTRY_TOKEN
  ;;
apply)
  mgmt=$(acl_env_get "$env_file" BERTH_REGISTRY_MANAGEMENT_TOKEN)
  [ -n "$mgmt" ] || {
    echo "$0: $env_file has no BERTH_REGISTRY_MANAGEMENT_TOKEN (run: $0 secrets $env_file)" >&2
    exit 1
  }
  acl_wait "$url" 60
  for role in master frontdoor ui; do
    var=BERTH_$(printf '%s' "$role" | tr '[:lower:]' '[:upper:]')_REGISTRY_TOKEN
    secret=$(acl_env_get "$env_file" "$var")
    [ -n "$secret" ] || {
      echo "$0: $env_file has no $var (run: $0 secrets $env_file)" >&2
      exit 1
    }
    acl_role "$url" "$mgmt" "$role" "$secret"
  done
  echo "registry roles in place at $url: master, frontdoor, ui"
  ;;
*)
  echo "usage: $0 secrets|apply [ENV_FILE]" >&2
  exit 2
  ;;
esac
