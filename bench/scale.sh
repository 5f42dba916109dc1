#!/usr/bin/env bash
# Warm narinfo hits at 2,000 vs N entries (default 1,000,000 narinfo+NAR pairs), nixgate vs
# nginx serving the same files (hard links to the same inodes), side by side in one run.
# Requests pick a random narinfo of the whole set each time (wrk, 64 keep-alive connections),
# so the bigger set also exercises the index at scale (the files are read into the page cache
# first: this compares the cost of a hit, not the disk). Also prints the time to
# the first served hit (a cached NAR) and to index the set, and nixgate's RSS once indexed. Usage: bench/scale.sh [N]; DURATION=10s.
# Set NIXGATE_BIN to skip the build. Traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
for t in nginx wrk curl; do
  command -v $t >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk curl; break; }
done
if [ -z "${NIXGATE_BIN:-}" ]; then
  cargo build --release --quiet --bin nixgate
  NIXGATE_BIN=${CARGO_TARGET_DIR:-target}/release/nixgate
fi
DURATION=${DURATION:-10s}
ms() { date +%s%3N; }
measure() { # URL LUA -> "req/s p99"
  wrk -t2 -c64 -d3s -s "$2" "$1" >/dev/null # warm-up: every process and page warm
  wrk -t2 -c64 -d"$DURATION" --latency -s "$2" "$1" |
    awk '/Requests\/sec/ {r=$2} /^ +99%/ {p=$2} END {print r, p}'
}
run() {
  local N=$1 D PID NGINX T0 TF T1 RSS FH P1 P2 GATE_R GATE_P NGINX_R NGINX_P
  D=$(mktemp -d /tmp/nixgate-scale.XXXX)
  FH=$(python3 bench/gen_store.py "$D/cache" "$N" "$D/flat" | tail -1)
  P1=$((20000 + RANDOM % 10000)) P2=$((30000 + RANDOM % 10000))
  mkdir -p "$D/tmp"
  cat > "$D/nginx.conf" <<NG
user root; daemon off; worker_processes 2; pid $D/nginx.pid; error_log $D/nginx.err;
events { worker_connections 4096; }
http { access_log off; sendfile on; keepalive_requests 1000000; client_body_temp_path $D/tmp;
  proxy_temp_path $D/tmp; fastcgi_temp_path $D/tmp; uwsgi_temp_path $D/tmp; scgi_temp_path $D/tmp;
  types { text/x-nix-narinfo narinfo; }
  server { listen 127.0.0.1:$P2; root $D/flat; } }
NG
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  T0=$(ms)
  RUST_LOG=info "$NIXGATE_BIN" serve --listen 127.0.0.1:$P1 --cache-dir "$D/cache" \
    --upstream http://127.0.0.1:9 --max-cache-size 100GiB --no-torrent > "$D/log" 2>&1 & PID=$!
  until curl -sf -o /dev/null "http://127.0.0.1:$P1/nar/$FH.nar.xz"; do sleep 0.01; done
  TF=$(ms)
  until grep -q "index rebuilt" "$D/log"; do sleep 0.05; done
  T1=$(ms)
  RSS=$(awk '/VmRSS/ {print $2}' /proc/$PID/status)
  # Both servers read the same inodes: put them in the page cache once, so the runs compare
  # the cost of a hit (index, lookup, open, send), not the disk.
  find "$D/cache/narinfo" -type f -print0 | xargs -0 cat > /dev/null
  nginx -c "$D/nginx.conf" & NGINX=$!
  sleep 0.5
  cat > "$D/paths.lua" <<LUA
local paths = {}
for line in io.lines("$D/paths.txt") do paths[#paths+1] = line end
math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
request = function() return wrk.format("GET", paths[math.random(#paths)]) end
LUA
  local head; head=$(head -1 "$D/paths.txt")
  curl -sf -o /dev/null "http://127.0.0.1:$P1$head" && curl -sf -o /dev/null "http://127.0.0.1:$P2$head"
  read -r GATE_R GATE_P < <(measure "http://127.0.0.1:$P1" "$D/paths.lua")
  read -r NGINX_R NGINX_P < <(measure "http://127.0.0.1:$P2" "$D/paths.lua")
  printf "entries=%s first_hit_ms=%s indexed_ms=%s rss_mib=%s nixgate_rps=%s nixgate_p99=%s nginx_rps=%s nginx_p99=%s ratio=%s\n" \
    "$N" $((TF - T0)) $((T1 - T0)) $((RSS / 1024)) "$GATE_R" "$GATE_P" "$NGINX_R" "$NGINX_P" \
    "$(python3 -c "print(f'{float(\"$GATE_R\")/float(\"$NGINX_R\"):.2f}')")"
  kill $PID $NGINX; wait $PID $NGINX 2>/dev/null || true
  rm -rf "$D"
}
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
run 2000
run "${1:-1000000}"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
