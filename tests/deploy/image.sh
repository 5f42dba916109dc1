#!/usr/bin/env bash
# Image test: builds the top-level Dockerfile with podman, runs the image, and substitutes a
# closure through it with real `nix copy`; then restarts the container on the same volume with
# the upstream gone and substitutes again from the cache alone.
#
# No registry is reachable here, so the two base images the Dockerfile names are made locally
# first: debian:bookworm-slim from a debootstrap'd rootfs, and rust:1-slim-bookworm as that
# rootfs plus gcc plus this machine's Rust toolchain. The build context carries a `cargo vendor`
# tree so the image builds with --network=none. `--format docker` keeps the HEALTHCHECK (OCI
# images have no such field). Takes ~4 minutes from scratch; base images are
# reused when podman already has them.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
. tests/deploy/lib.sh

need podman debootstrap nix cargo python3
[ -x /usr/sbin/runc ] || { echo "missing /usr/sbin/runc (apt-get install runc)" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "image test needs root (podman, debootstrap)" >&2; exit 1; }

WORK=$ROOT/target/image-test
mkdir -p "$WORK"
# crun fails on this machine's cgroup setup (cgroups in hybrid mode) and podman's default
# rlimits are refused, so runc and no default ulimits. Both settings are local to this test.
cat > "$WORK/containers.conf" <<'CONF'
[containers]
default_ulimits = []
[engine]
runtime = "runc"
CONF
export CONTAINERS_CONF=$WORK/containers.conf
P() { podman --runtime /usr/sbin/runc "$@"; }

RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim
BUILDER_IMAGE=docker.io/library/rust:1-slim-bookworm

if ! P image exists "$RUNTIME_IMAGE" || ! P image exists "$BUILDER_IMAGE"; then
  echo "== making base images (debootstrap bookworm)"
  rm -rf "$WORK/rootfs" "$WORK/builder"
  debootstrap --variant=minbase bookworm "$WORK/rootfs" http://deb.debian.org/debian > "$WORK/debootstrap.log"
  rm -rf "$WORK/rootfs/var/lib/apt/lists/"* "$WORK/rootfs/var/cache/apt/"*.bin
  tar -C "$WORK/rootfs" -c . | P import - "$RUNTIME_IMAGE" > /dev/null

  cp -a "$WORK/rootfs" "$WORK/builder"
  cp /etc/resolv.conf "$WORK/builder/etc/resolv.conf"
  chroot "$WORK/builder" /bin/sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev' > "$WORK/builder-apt.log"
  toolchain=$(rustc --print sysroot)
  mkdir -p "$WORK/builder/usr/local/rust"
  tar -C "$toolchain" --exclude=./share/doc -c . | tar -C "$WORK/builder/usr/local/rust" -x
  tar -C "$WORK/builder" -c . | P import --change 'ENV PATH=/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - "$BUILDER_IMAGE" > /dev/null
  rm -rf "$WORK/rootfs" "$WORK/builder"
fi

echo "== build context with vendored crates"
CTX=$WORK/context
rm -rf "$CTX"
mkdir -p "$CTX/.cargo"
# The working tree as git sees it (tracked and new files, minus ignored ones such as target/).
git ls-files -z --cached --others --exclude-standard |
  while IFS= read -r -d '' f; do [ -e "$f" ] && cp --parents "$f" "$CTX"; done
(cd "$CTX" && cargo vendor --locked vendor > .cargo/config.toml 2>/dev/null)

echo "== podman build"
build_start=$(date +%s)
P build --format docker --network=none -t localhost/nixgate:test -f "$CTX/Dockerfile" "$CTX" > "$WORK/build.log" 2>&1 || {
  tail -n 40 "$WORK/build.log"; echo "podman build failed" >&2; exit 1; }
echo "   built in $(( $(date +%s) - build_start ))s, image $(P image inspect localhost/nixgate:test --format '{{.Size}}') bytes"

inspect() { P image inspect localhost/nixgate:test --format "$1"; }
check "image runs as a non-root user" test "$(inspect '{{.Config.User}}')" = "10001:10001"
check "entrypoint is nixgate serve" test "$(inspect '{{json .Config.Entrypoint}}')" = '["nixgate","serve"]'
check "/var/cache/nixgate is a volume" grep -q '"/var/cache/nixgate"' <<< "$(inspect '{{json .Config.Volumes}}')"
check "ports 8080 and 6881 exposed" bash -c '[[ $0 == *8080/tcp* && $0 == *6881/tcp* ]]' "$(inspect '{{json .Config.ExposedPorts}}')"
check "healthcheck runs the binary" test "$(inspect '{{json .Config.Healthcheck.Test}}')" = '["CMD","nixgate","health"]'
check "runtime image has no curl or wget" P run --rm --entrypoint /bin/sh localhost/nixgate:test -c '! command -v curl && ! command -v wget'

echo "== signed upstream cache on loopback"
FIX=$WORK/fixture
rm -rf "$FIX"; mkdir -p "$FIX"
make_cache "$FIX"
P rm -f -t 2 nixgate-image-test > /dev/null 2>&1 || true
P volume rm -f nixgate-image-test > /dev/null 2>&1 || true
UPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
spawn python3 -m http.server --bind 127.0.0.1 --directory "$FIX/cache" "$UPORT" > "$WORK/upstream.log" 2>&1
UPID=$!
APORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# lib.sh's trap stops the upstream, then removes the container and its volume.
at_exit 'P rm -f -t 2 nixgate-image-test > /dev/null 2>&1 || true'
at_exit 'P volume rm -f nixgate-image-test > /dev/null 2>&1 || true'
wait_http "http://127.0.0.1:$UPORT/nix-cache-info" 10

start() {
  # --health-interval=disable: no systemd here to run the timer; `podman healthcheck run` below
  # runs the image's HEALTHCHECK command by hand instead.
  P run -d --name nixgate-image-test --network host --health-interval=disable \
    -v nixgate-image-test:/var/cache/nixgate \
    -e NIXGATE_LISTEN="127.0.0.1:$APORT" -e NIXGATE_HEALTH_URL="http://127.0.0.1:$APORT" \
    -e NIXGATE_UPSTREAM="http://127.0.0.1:$UPORT" -e NIXGATE_TRUSTED_PUBLIC_KEY="$KEY" \
    -e NIXGATE_NO_MDNS=1 -e NIXGATE_NO_TORRENT=1 \
    localhost/nixgate:test > /dev/null
  wait_http "http://127.0.0.1:$APORT/readyz" 20
}

echo "== run the image"
start
check "HEALTHCHECK (nixgate health) passes" P healthcheck run nixgate-image-test
check "process runs as uid 10001" test "$(P exec nixgate-image-test cat /proc/1/status | awk '/^Uid:/ {print $2}')" = 10001
D1=$WORK/client1; rm -rf "$D1"
check "nix copy of a closure through the container" nix_copy_from "http://127.0.0.1:$APORT" "$D1" "$TOP" "$BLOB"
check "closure is valid in the client store" bash -c "nix path-info --store '$D1/root' '$TOP' '$DEP' '$BLOB' > /dev/null"

echo "== restart on the same volume with the upstream gone"
P stop -t 10 nixgate-image-test > /dev/null
check "SIGTERM stops it cleanly (exit 0)" test "$(P inspect nixgate-image-test --format '{{.State.ExitCode}}')" = 0
P rm nixgate-image-test > /dev/null
stop_pid "$UPID"
start
D2=$WORK/client2; rm -rf "$D2"
check "cache on the volume survives the restart (upstream down)" nix_copy_from "http://127.0.0.1:$APORT" "$D2" "$TOP" "$BLOB"
summary
