#!/usr/bin/env bash
# Installs what the test suite needs on a fresh machine of this project's kind (Debian, Rust by
# rustup, Docker running): Debian packages, Python packages, Rust components.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

apt-get update -qq
apt-get install -y -qq --no-install-recommends \
  busybox-static file git curl ca-certificates procps iproute2 \
  >/dev/null

python3 -m pip install --quiet --disable-pip-version-check 'pytest>=8,<9' 'py-consul==1.8.0'

rustup component add clippy rustfmt >/dev/null 2>&1 || true
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest

# cluster (issue 6): nginx for the front door image and `nginx -t` tests (its service is not
# started: policy-rc.d forbids it during the install), shellcheck for the scripts, musl for the
# static binaries of the FROM-scratch images.
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  had_policy=$([ -e /usr/sbin/policy-rc.d ] && echo yes || echo no)
  [ "$had_policy" = yes ] || printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -qq --no-install-recommends nginx >/dev/null
  [ "$had_policy" = yes ] || rm -f /usr/sbin/policy-rc.d
fi
apt-get install -y -qq --no-install-recommends shellcheck musl-tools openssl >/dev/null
rustup target add x86_64-unknown-linux-musl >/dev/null 2>&1 || true

# worker: `docker-compose -p <project> ps` must list stacks the worker created (compatibility test)
apt-get install -y -qq --no-install-recommends docker-compose >/dev/null

# Web UI browser tests (registry/tests/py/test_ui_browser.py): headless Chromium, its WebDriver,
# and Selenium (4.51: 4.52 needs a certifi newer than the package index here serves).
apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null
python3 -m pip install --quiet --disable-pip-version-check 'selenium==4.51.0'
