#!/usr/bin/env bash
# Builds the local base image `berth-base:latest` from Debian's static busybox, with no registry:
# a root filesystem holding busybox and its applet links is fed to `docker import`.
# Tests and the sample app build FROM this image; nothing is ever pulled.
#   scripts/base-image.sh [--force]    build it (again, with --force)
#   scripts/base-image.sh --has-busybox   only say (exit status) whether a static busybox is here
# The busybox used: $BERTH_BUSYBOX, else /bin/busybox or /usr/bin/busybox when static (Debian's
# busybox-static), else the busybox-static package fetched with `apt-get download` and unpacked
# in a temporary folder (no root needed, nothing installed).
set -euo pipefail

image=${BERTH_BASE_IMAGE:-berth-base:latest}

# is_static FILE: FILE is a statically linked executable, by `file` or by glibc's `ldd` (either
# may be missing; ldd fails on a static one, so only the answers count).
is_static() {
  local answer
  [ -x "$1" ] || return 1
  answer=$({ file -L "$1" || LC_ALL=C ldd "$1"; } 2>&1) || true
  case $answer in
  *"statically linked"* | *"not a dynamic executable"*) return 0 ;;
  *) return 1 ;;
  esac
}

# find_busybox: prints the path of a static busybox on this machine.
find_busybox() {
  local candidate
  for candidate in ${BERTH_BUSYBOX:-} /bin/busybox /usr/bin/busybox; do
    if is_static "$candidate"; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

if [ "${1:-}" = --has-busybox ]; then
  find_busybox >/dev/null
  exit
fi
if docker image inspect "$image" >/dev/null 2>&1 && [ "${1:-}" != "--force" ]; then
  echo "base image $image already present"
  exit 0
fi

root=$(mktemp -d)
fetched=$(mktemp -d)
trap 'rm -rf "$root" "$fetched"' EXIT
if ! busybox=$(find_busybox); then
  echo "no static busybox here: fetching Debian's busybox-static (apt-get download)"
  if (cd "$fetched" && apt-get download -qq busybox-static >/dev/null 2>&1) &&
    dpkg-deb -x "$fetched"/busybox-static_*.deb "$fetched/pkg" &&
    is_static "$fetched/pkg/bin/busybox"; then
    busybox=$fetched/pkg/bin/busybox
  else
    echo "a static busybox is needed: apt-get install -y busybox-static (or set BERTH_BUSYBOX)" >&2
    exit 1
  fi
fi

mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,var/www,root,proc,sys,dev}
chmod 1777 "$root/tmp"
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
  [ "$applet" = busybox ] || ln -sf /bin/busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"

tar -C "$root" -c . | docker import \
  --change 'ENV PATH=/bin:/sbin:/usr/bin:/usr/sbin' \
  --change 'CMD ["/bin/sh"]' \
  --change 'LABEL org.berth.base=busybox-static' \
  - "$image" >/dev/null
echo "built $image from $busybox"
