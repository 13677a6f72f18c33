#!/usr/bin/env bash
# Builds the local base image `berth-base:latest` from Debian's static busybox, with no registry:
# a root filesystem holding /bin/busybox and its applet links is fed to `docker import`.
# Tests and the sample app build FROM this image; nothing is ever pulled.
set -euo pipefail

image=${BERTH_BASE_IMAGE:-berth-base:latest}
if docker image inspect "$image" >/dev/null 2>&1 && [ "${1:-}" != "--force" ]; then
  echo "base image $image already present"
  exit 0
fi

busybox=/bin/busybox
if ! file -L "$busybox" 2>/dev/null | grep -q 'statically linked'; then
  echo "a static busybox is needed at $busybox: apt-get install -y busybox-static file" >&2
  exit 1
fi

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
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
