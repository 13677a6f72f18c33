#!/usr/bin/env bash
# Builds berth's images with no registry access:
#   berth-registry:<tag>, berth-master:<tag>, berth-worker:<tag>  FROM scratch, static musl binaries
#                       (the worker image also holds the static berth-forward beside the worker,
#                       in both modes: the worker builds its forwarder image from it)
#   berth-nginx:<tag>   the local busybox base + Debian's nginx (binary, its shared libraries,
#                       mime.types) + berth-frontdoor, which renders the config and runs nginx
# Usage: scripts/build-images.sh [--debug]
#   --debug  use the glibc debug binaries of `cargo build --workspace --bins` and copy their
#            shared libraries in (fast, for the cluster tests); default: musl release build.
# Environment: BERTH_IMAGE_TAG (default `local`, `test` with --debug).
set -euo pipefail
cd "$(dirname "$0")/.."

mode=release
[ "${1:-}" = --debug ] && mode=debug
if [ "$mode" = debug ]; then
  tag=${BERTH_IMAGE_TAG:-test}
else
  tag=${BERTH_IMAGE_TAG:-local}
fi
musl=x86_64-unknown-linux-musl
target_dir=$(cargo metadata --no-deps --format-version 1 | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
# The stage sits under the repository (the build context, narrowed by .dockerignore).
stage=target/berth-images/$mode
ctx=$PWD/$stage
bins=(berth-registry berth-master berth-worker berth-frontdoor)

if [ "$mode" = release ]; then
  command -v musl-gcc >/dev/null || {
    echo "musl-gcc is needed: apt-get install -y musl-tools; rustup target add $musl" >&2
    exit 1
  }
  # git2 builds the vendored libgit2 with the musl C compiler.
  export CC_x86_64_unknown_linux_musl=${CC_x86_64_unknown_linux_musl:-musl-gcc}
  nice -n 19 cargo build --release --locked --target "$musl" \
    -p berth-registry -p berth-master -p berth-frontdoor -p berth-worker -p berth-forward --bins
  bindir=$target_dir/$musl/release
else
  # The same builds as scripts/test.sh's, so nothing is rebuilt when it ran first.
  cargo build --workspace --locked --bins
  cargo build --locked --release --target "$musl" -p berth-forward
  bindir=$target_dir/debug
  # Skip the image builds when the binaries, the Dockerfile and nginx are what the images hold.
  stamp_file=$target_dir/berth-images/debug.stamp
  stamp=$(stat -c '%n %s %Y' "${bins[@]/#/$bindir/}" "$target_dir/$musl/release/berth-forward" scripts/images/Dockerfile "${BERTH_NGINX_BIN:-/usr/sbin/nginx}" | sha256sum)
  if [ "$(cat "$stamp_file" 2>/dev/null)" = "$stamp" ] &&
    docker image inspect "berth-registry:$tag" "berth-master:$tag" "berth-worker:$tag" "berth-nginx:$tag" >/dev/null 2>&1; then
    echo "berth-*:$tag images are up to date"
    exit 0
  fi
fi

rm -rf "$ctx"
mkdir -p "$ctx"/{bin,root/tmp,nginx-root}
chmod 1777 "$ctx/root/tmp"

# Copies a dynamically linked program's shared libraries into a root at their own paths.
copy_libs() {
  local program=$1 root=$2 lib
  for lib in $(ldd "$program" | grep -o '/[^ ]*'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
}

for bin in "${bins[@]}"; do
  cp "$bindir/$bin" "$ctx/bin/$bin"
  if [ "$mode" = release ]; then
    if ! file -L "$ctx/bin/$bin" | grep -Eq 'statically linked|static-pie linked'; then
      echo "$bin is not static; the FROM-scratch images need a static binary" >&2
      exit 1
    fi
  else
    # Debug info makes the images ten times larger and their builds slow.
    strip --strip-debug "$ctx/bin/$bin"
    copy_libs "$ctx/bin/$bin" "$ctx/root"
  fi
done

# The forwarder runs FROM scratch in both modes: always the static musl build.
cp "$target_dir/$musl/release/berth-forward" "$ctx/bin/berth-forward"
if ! file -L "$ctx/bin/berth-forward" | grep -Eq 'statically linked|static-pie linked'; then
  echo "berth-forward is not static" >&2
  exit 1
fi

nginx=${BERTH_NGINX_BIN:-/usr/sbin/nginx}
if [ ! -x "$nginx" ]; then
  echo "Debian's nginx is needed at $nginx (scripts/install-test-deps.sh installs it)" >&2
  exit 1
fi
root=$ctx/nginx-root
mkdir -p "$root"/usr/sbin "$root"/etc/nginx "$root"/run "$root"/var/log/nginx \
  "$root"/var/lib/nginx/{body,proxy,fastcgi,uwsgi,scgi} "$root"/usr/local/bin
cp "$nginx" "$root/usr/sbin/nginx"
copy_libs "$nginx" "$root"
cp /etc/nginx/mime.types "$root/etc/nginx/mime.types"
[ "$mode" = release ] || copy_libs "$ctx/bin/berth-frontdoor" "$root"
# nginx's workers run as `nobody` (Debian builds it without --user).
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
  >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\nnobody:x:65534:\n' >"$root/etc/group"

scripts/base-image.sh
for service in registry master worker nginx; do
  if ! out=$(docker build -q -f scripts/images/Dockerfile --build-arg "STAGE=$stage" \
    --target "$service" -t "berth-$service:$tag" . 2>&1); then
    echo "$out" >&2
    exit 1
  fi
  echo "built berth-$service:$tag"
done
[ "$mode" = release ] || echo "$stamp" >"$stamp_file"
