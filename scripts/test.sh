#!/usr/bin/env bash
# The README's test command: every check and every test, in the order a failure is cheapest.
# Needs what scripts/install-test-deps.sh installs: run here first when a piece of it is missing
# and this is root (CI runs it before, as .ci/run shows).
set -euo pipefail
cd "$(dirname "$0")/.."

# What install-test-deps.sh provides, one probe per part.
deps_missing() {
  local tool
  for tool in cargo-nextest shellcheck chromium chromedriver docker-compose musl-gcc git curl \
    openssl ss; do
    command -v "$tool" >/dev/null || return 0
  done
  [ -x /usr/sbin/nginx ] || command -v nginx >/dev/null || return 0
  python3 -c 'import pytest, consul, selenium' 2>/dev/null || return 0
  return 1
}
if deps_missing; then
  if [ "$(id -u)" = 0 ]; then
    printf '\n== scripts/install-test-deps.sh (what the tests use is missing)\n'
    scripts/install-test-deps.sh
  else
    echo "test.sh: what the tests use is missing: sudo scripts/install-test-deps.sh" >&2
    exit 1
  fi
fi

export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
out=${BERTH_TEST_OUTPUT:-$PWD/test-output}
mkdir -p "$out"
export BERTH_TEST_OUTPUT=$out

step() { printf '\n== %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "base image for container tests"
scripts/base-image.sh

step "build binaries"
cargo build --workspace --locked --bins

step "forwarder (static musl: the worker runs it FROM scratch; the Docker tests use it)"
cargo build --locked --release --target x86_64-unknown-linux-musl -p berth-forward

step "cargo tests (unit, router, in-process servers, real Docker, compatibility clients)"
cargo nextest run --workspace --locked --no-fail-fast --profile ci

step "first run as a new user (scripts/up.sh, berth deploy scripts/sample-app, down.sh --purge)"
scripts/test-first-run.sh

step "python compatibility tests (py-consul against the real server)"
python3 -m pytest -q registry/tests/py

step "shell tests (scripts/tests: the shipped setups' registry roles)"
for t in scripts/tests/*.sh; do "$t"; done

step "shellcheck (scripts)"
shellcheck -x scripts/*.sh scripts/lib/*.sh scripts/tests/*.sh scripts/sample-app/web/index.cgi
