# Registry ACL roles, shared by scripts/up.sh, scripts/registry-roles.sh and
# scripts/worker-token.sh (sourced, not run). Every setup runs the registry with ACLs on and
# default deny; each role gets one token whose policy allows only what that role does
# (README, "Security"). Needs curl.
# shellcheck shell=bash

# A fresh secret: 32 random bytes, hex.
acl_new_secret() {
  od -An -N32 -tx1 /dev/urandom | tr -d ' \n'
}

# acl_rules ROLE [NODE]: the policy rules of ROLE (master, worker NODE, frontdoor, ui).
acl_rules() {
  local read_all='service_prefix "" { policy = "read" } node_prefix "" { policy = "read" }'
  case $1 in
  # The instance records and locks (berth/), the seed-compatible instance/<id>/ip keys, the
  # lock sessions; reads the catalog to choose workers.
  master) printf '%s' "key_prefix \"berth/\" { policy = \"write\" } key_prefix \"instance/\" { policy = \"write\" } session_prefix \"\" { policy = \"write\" } $read_all" ;;
  # One worker host: its own node (its agent joins with it), the services it registers (itself
  # and its stacks', whose names the apps choose; the registrator refuses berth's and Consul's
  # own names), and read on the master's records, which say what it may keep (the fence).
  worker)
    [ -n "${2:-}" ] || return 2
    printf '%s' "node \"$2\" { policy = \"write\" } service_prefix \"\" { policy = \"write\" } agent \"$2\" { policy = \"read\" } node_prefix \"\" { policy = \"read\" } key_prefix \"berth/instances/\" { policy = \"read\" }"
    ;;
  # The front door routes the passing masters and the running instances; the UI only looks.
  frontdoor | ui) printf '%s' "key_prefix \"berth/instances/\" { policy = \"read\" } $read_all" ;;
  *) return 2 ;;
  esac
}

# acl_role REGISTRY_URL MANAGEMENT_SECRET ROLE SECRET [NODE]: makes sure the registry has the
# policy of ROLE (berth-ROLE, or berth-worker-NODE) and a token with SECRET holding it. Idempotent:
# an existing policy is updated to the current rules, an existing token is kept.
acl_role() {
  local url=$1 mgmt=$2 role=$3 secret=$4 node=${5:-} name rules id
  name=berth-$role${node:+-$node}
  [[ $node =~ ^([A-Za-z0-9][A-Za-z0-9_.-]*)?$ && $secret =~ ^[A-Za-z0-9_-]+$ ]] || {
    echo "acl_role: a node name is letters, digits, '.', '_', '-'; a secret letters, digits, '_', '-'" >&2
    return 2
  }
  rules=$(acl_rules "$role" "$node") || {
    echo "acl_role: unknown role $role${node:+ (node $node)}" >&2
    return 2
  }
  # As a JSON string: quotes escaped, one rule block per line.
  rules=$(printf '%s' "$rules" | sed 's/"/\\"/g; s/} /}\\n/g')
  id=$(curl -fsS -H "X-Consul-Token: $mgmt" "$url/v1/acl/policy/name/$name" 2>/dev/null |
    sed -n 's/^{"ID":"\([^"]*\)".*/\1/p; s/.*[{,]"ID":"\([^"]*\)".*/\1/p' | head -n1) || true
  if [ -n "$id" ]; then
    curl -fsS -o /dev/null -X PUT -H "X-Consul-Token: $mgmt" "$url/v1/acl/policy/$id" \
      -d "{\"ID\":\"$id\",\"Name\":\"$name\",\"Description\":\"berth $role${node:+ on $node}\",\"Rules\":\"$rules\"}" || {
      echo "acl_role: could not update the registry policy $name" >&2
      return 1
    }
  else
    curl -fsS -o /dev/null -X PUT -H "X-Consul-Token: $mgmt" "$url/v1/acl/policy" \
      -d "{\"Name\":\"$name\",\"Description\":\"berth $role${node:+ on $node}\",\"Rules\":\"$rules\"}" || {
      echo "acl_role: could not create the registry policy $name" >&2
      return 1
    }
  fi
  # The token already exists when it can read itself.
  curl -fsS -o /dev/null -H "X-Consul-Token: $secret" "$url/v1/acl/token/self" 2>/dev/null &&
    return 0
  curl -fsS -o /dev/null -X PUT -H "X-Consul-Token: $mgmt" "$url/v1/acl/token" \
    -d "{\"SecretID\":\"$secret\",\"Description\":\"berth $role${node:+ on $node}\",\"Policies\":[{\"Name\":\"$name\"}]}" || {
    echo "acl_role: could not create the registry token of $role${node:+ on $node}" >&2
    return 1
  }
}

# acl_wait REGISTRY_URL [SECONDS]: until the registry answers.
acl_wait() {
  local url=$1 limit=${2:-60} i
  for ((i = 0; i < limit * 4; i++)); do
    curl -fsS -o /dev/null "$url/v1/status/leader" 2>/dev/null && return 0
    sleep 0.25
  done
  echo "the registry at $url does not answer" >&2
  return 1
}

# acl_env_secrets FILE VAR...: appends VAR=<fresh secret> to FILE (made mode 600) for each VAR it
# does not set yet; existing values are kept.
acl_env_secrets() {
  local file=$1 var
  shift
  (umask 077 && touch "$file")
  for var in "$@"; do
    grep -q "^$var=." "$file" || printf '%s=%s\n' "$var" "$(acl_new_secret)" >>"$file"
  done
}

# acl_env_get FILE VAR: the value of VAR in FILE (empty when unset).
acl_env_get() {
  sed -n "s/^$2=//p" "$1" | tail -n1
}
