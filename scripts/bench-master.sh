#!/usr/bin/env bash
# Measures the master's code store (issue 4 and 15 figures) beside the alternative a user would
# pick, stock git pushing to `git daemon`: folder to commit (berth: tar.gz + PUT), `git clone`, a
# second upload with one file changed, the incremental fetch, and a one-file change sent with
# `git push` to the master's smart HTTP (receive-pack) instead of a tarball.
# Runs the real binaries (release build) against an in-memory registry on 127.0.0.1.
# Usage: scripts/bench-master.sh [size-MiB]   (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-10}
cargo build --release -q -p berth-master -p berth-registry
target=${CARGO_TARGET_DIR:-$PWD/target}/release
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
reg_port=$(free_port); master_port=$(free_port)
"$target/berth-registry" server --dev --http-addr "127.0.0.1:$reg_port" >"$work/registry.log" 2>&1 &
pids+=($!)
"$target/berth-master" --listen "127.0.0.1:$master_port" --data-dir "$work/data" \
  --registry "http://127.0.0.1:$reg_port" --api-token bench-api --git-token bench-git \
  --cluster-token bench-cluster --max-upload-bytes $(( (size_mib + 8) * 1024 * 1024 )) \
  >"$work/master.log" 2>&1 &
pids+=($!)
up=no
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$master_port/healthz" >/dev/null 2>&1 && { up=yes; break; }
  sleep 0.1
done
[ "$up" = yes ] || { echo "berth-master did not come up:" >&2; cat "$work/master.log" >&2; exit 1; }

# Incompressible content split over 40 files plus a compose file: ~size MiB compressed.
mkdir -p "$work/src/app"
printf 'services:\n  web:\n    build: ./app\n' >"$work/src/compose.yaml"
per_file=$(( size_mib * 1024 * 1024 / 40 ))
for i in $(seq 40); do head -c "$per_file" /dev/urandom >"$work/src/app/blob-$i.bin"; done

now() { date +%s.%N; }
api="http://127.0.0.1:$master_port/v1/instances/bench/code?user=bench&project=bench&build=false"
upload() { # folder -> tar.gz -> PUT: what the main system does with berth
  tar -C "$work/src" -czf "$work/upload.tar.gz" .
  curl -fsS -X PUT -H 'Authorization: Bearer bench-api' --data-binary @"$work/upload.tar.gz" "$api" >"$work/record.json"
}
# berth: upload, clone over smart HTTP, change one file, upload again, incremental fetch.
t0=$(now); upload; t1=$(now)
echo "tarball: $(stat -c %s "$work/upload.tar.gz") bytes compressed"
git clone -q "http://berth:bench-git@127.0.0.1:$master_port/git/bench/bench.git" "$work/clone"
t2=$(now)
diff -r --exclude=.git "$work/src" "$work/clone" >/dev/null && echo "clone matches the upload"
cp -a "$work/src" "$work/stock-src"
echo change >>"$work/src/compose.yaml"
t3=$(now); upload; t4=$(now)
git -C "$work/clone" fetch -q origin
t5=$(now)
echo "commit: $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["commit"])' "$work/record.json")"
# The same one-file change pushed with stock git to the master (checked like an upload).
git -C "$work/clone" reset -q --hard origin/main
echo push >>"$work/clone/compose.yaml"
t6=$(now)
git -C "$work/clone" add -A
git -C "$work/clone" -c user.name=bench -c user.email=bench@localhost commit -qm push
git -C "$work/clone" push -q origin HEAD:refs/heads/main
t7=$(now)
[ "$(git -C "$work/clone" ls-remote origin refs/heads/main | cut -f1)" = "$(git -C "$work/clone" rev-parse HEAD)" ] \
  && echo "push recorded as the latest upload"

# The alternative: stock git pushing the same folder to `git daemon` (receive-pack on), as the
# seed system pushed to a forge, and cloning and fetching from it over git://.
git_port=$(free_port)
git init -q --bare "$work/stock.git"
git -C "$work/stock.git" config receive.denyCurrentBranch ignore
git daemon --reuseaddr --export-all --enable=receive-pack --base-path="$work" \
  --listen=127.0.0.1 --port="$git_port" "$work" >"$work/daemon.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do git ls-remote "git://127.0.0.1:$git_port/stock.git" >/dev/null 2>&1 && break; sleep 0.1; done
commit_push() {
  git -C "$work/stock-src" add -A
  git -C "$work/stock-src" -c user.name=bench -c user.email=bench@localhost commit -qm upload
  git -C "$work/stock-src" push -q "git://127.0.0.1:$git_port/stock.git" HEAD:refs/heads/main 2>/dev/null
}
git -C "$work/stock-src" init -q -b main
s0=$(now); commit_push; s1=$(now)
git clone -q -b main "git://127.0.0.1:$git_port/stock.git" "$work/stock-clone"
s2=$(now)
echo change >>"$work/stock-src/compose.yaml"
s3=$(now); commit_push; s4=$(now)
git -C "$work/stock-clone" fetch -q origin
s5=$(now)

awk -v a="$t0" -v b="$t1" -v c="$t2" -v d="$t3" -v e="$t4" -v f="$t5" -v m="$t6" -v n="$t7" \
    -v g="$s0" -v h="$s1" -v i="$s2" -v j="$s3" -v k="$s4" -v l="$s5" 'BEGIN {
  printf "\n| step (%s MiB of incompressible files) | berth-master (tar.gz PUT, smart HTTP) | stock git (commit + push, git daemon) |\n", "'"$size_mib"'"
  printf "|---|---|---|\n"
  printf "| folder to commit in the code store | %.3f s | %.3f s |\n", b-a, h-g
  printf "| git clone | %.3f s | %.3f s |\n", c-b, i-h
  printf "| second upload (one file changed) | %.3f s | %.3f s |\n", e-d, k-j
  printf "| incremental fetch | %.3f s | %.3f s |\n", f-e, l-k
  printf "| one file changed, by git push | %.3f s | %.3f s |\n", n-m, k-j
}'
