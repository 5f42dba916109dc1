#!/usr/bin/env bash
# Start-up at scale: N fake narinfo+NAR pairs (default 100000 = 200k files) in the store layout,
# page cache dropped (when root), upstream absent. Measures, from process start: the first
# served hit (a cached NAR, GET until 200), the index scan's completion (the "cache index
# rebuilt" log line), and RSS once indexed. Usage: bench/rebuild.sh [N...], e.g.
# `bench/rebuild.sh 100000 500000`. Set NIXGATE_BIN to skip the build.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${NIXGATE_BIN:-}" ]; then
  cargo build --release --quiet --bin nixgate
  NIXGATE_BIN=${CARGO_TARGET_DIR:-target}/release/nixgate
fi
ms() { date +%s%3N; }
run() {
  local N=$1 D PID FH T0 T1 T2 RSS
  D=$(mktemp -d /tmp/nixgate-rebuild.XXXX)
  FH=$(python3 bench/gen_store.py "$D/cache" "$N" | tail -1)
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || echo "(page cache not dropped: not root)" >&2
  local PORT=$((20000 + RANDOM % 20000))
  T0=$(ms)
  RUST_LOG=info "$NIXGATE_BIN" serve --listen 127.0.0.1:$PORT --cache-dir "$D/cache" \
    --upstream http://127.0.0.1:9 --max-cache-size 100GiB --no-torrent > "$D/log" 2>&1 & PID=$!
  until curl -sf -o /dev/null "http://127.0.0.1:$PORT/nar/$FH.nar.xz"; do sleep 0.01; done
  T1=$(ms)
  until grep -q "index rebuilt" "$D/log"; do sleep 0.05; done
  T2=$(ms)
  RSS=$(awk '/VmRSS/ {print $2}' /proc/$PID/status)
  echo "pairs=$N first_hit_ms=$((T1 - T0)) indexed_ms=$((T2 - T0)) rss_mib=$((RSS / 1024))"
  grep -o 'elapsed_ms[^ ]*' "$D/log" | head -1
  kill $PID; wait $PID 2>/dev/null || true
  rm -rf "$D"
}
for N in "${@:-100000}"; do run "$N"; done
