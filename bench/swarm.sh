#!/usr/bin/env bash
# BitTorrent swarm benchmark, side by side in one run, all on 127.0.0.1. Usage: bench/swarm.sh
# (bench/run.sh runs it too). Needs nix, nginx, curl (installed here if missing, Debian).
#
#  1. A real 200 MiB store path (random bytes), in a signed cache written by `nix copy`
#     (compression none: the swarm's bytes are checked against the signed NarHash).
#  2. The upstream is nginx with `limit_rate $RATE` (default 20m = 20 MB/s); every peer
#     appliance seeds with `--torrent-upload-limit $RATE`: a peer's uplink is as fast as the
#     upstream link, so the only gain is from several peers at once.
#  3. A fresh appliance fetches the NAR: from the upstream alone, then with 1, 2, 3 peers
#     (peers-first), then http-first with 3 peers (starts upstream, hands over after 2 s).
#     Reported: time to the last byte, time to first byte, ratio to upstream alone.
#  4. Memory of an appliance holding 10,000 NARs whose torrents are all asked for: with the
#     default hot set (512 live) and with all 10,000 live.
set -euo pipefail
cd "$(dirname "$0")/.."
for t in nginx curl nix; do
  command -v $t >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx curl nix-bin; break; }
done
RATE=${RATE:-20m}
MIB=${MIB:-200}
cargo build --release --quiet --bin nixgate
NG=$PWD/target/release/nixgate
D=$(mktemp -d /tmp/nixgate-swarm.XXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.5; rm -rf "$D"; }
trap cleanup EXIT
export NIX_CONFIG='experimental-features = nix-command
sandbox = false
build-users-group =
substituters ='
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ok() { for _ in $(seq 100); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done; echo "no answer: $1" >&2; return 1; }

echo "== fixture: a ${MIB} MiB store path, signed cache (compression none)"
cat > "$D/t.nix" <<NIX
derivation { name = "nixgate-swarm-$$"; system = builtins.currentSystem; builder = "/bin/sh";
  PATH = "/usr/bin:/bin"; args = [ "-c" "head -c $((MIB << 20)) /dev/urandom > \$out" ]; }
NIX
nix key generate-secret --key-name nixgate-bench-1 > "$D/sk"
KEY=$(nix key convert-secret-to-public < "$D/sk")
P=$(nix-build "$D/t.nix" --no-out-link 2>/dev/null)
nix copy --to "file://$D/cache?secret-key=$D/sk&compression=none" "$P"
H=$(basename "$P" | cut -c1-32)
NAR=$(sed -n 's/^URL: //p' "$D/cache/$H.narinfo")
SIZE=$(stat -c %s "$D/cache/$NAR")
echo "NAR $NAR, $SIZE bytes"

FAST=$(free_port); SLOW=$(free_port)
mkdir -p "$D/tmp"
cat > "$D/nginx.conf" <<NGX
user root; daemon off; worker_processes 1; pid $D/nginx.pid; error_log $D/nginx.err;
events { worker_connections 1024; }
http { access_log off; sendfile on; client_body_temp_path $D/tmp; proxy_temp_path $D/tmp;
  fastcgi_temp_path $D/tmp; uwsgi_temp_path $D/tmp; scgi_temp_path $D/tmp;
  server { listen 127.0.0.1:$FAST; root $D/cache; }
  server { listen 127.0.0.1:$SLOW; root $D/cache; limit_rate $RATE; } }
NGX
nginx -c "$D/nginx.conf" & PIDS+=($!)
wait_ok "http://127.0.0.1:$FAST/nix-cache-info"

# appliance NAME UPSTREAM_PORT [FLAGS...]: prints its HTTP port.
appliance() {
  local name=$1 up=$2; shift 2
  local port; port=$(free_port)
  RUST_LOG=warn "$NG" serve --listen "127.0.0.1:$port" --cache-dir "$D/$name" --no-mdns \
    --upstream "http://127.0.0.1:$up" --trusted-public-key "$KEY" \
    --torrent-listen "127.0.0.1:$(free_port)" "$@" > "$D/$name.log" 2>&1 &
  PIDS+=($!)
  echo "$port" > "$D/$name.port"; echo $! > "$D/$name.pid"
  wait_ok "http://127.0.0.1:$port/readyz"
  echo "$port"
}

echo "== three seeders (upload capped at $RATE/s each), warmed from the fast upstream"
SEEDERS=()
for i in 1 2 3; do
  p=$(appliance "seed$i" "$FAST" --torrent-upload-limit "${RATE^^}iB")
  curl -sf -o /dev/null "http://127.0.0.1:$p/$H.narinfo"
  curl -sf -o /dev/null "http://127.0.0.1:$p/$NAR"
  curl -sf -o /dev/null "http://127.0.0.1:$p/_p2p/v1/torrent/$(basename "$NAR" | cut -d. -f1)"
  SEEDERS+=("http://127.0.0.1:$p")
done

# fetch LABEL [FLAGS...]: a fresh appliance on the slow upstream fetches the NAR once.
RESULTS=$D/results
fetch() {
  local label=$1; shift
  local name; name=f$(date +%s%N)
  local port; port=$(appliance "$name" "$SLOW" "$@")
  # Wait for the peers' digests (they decide whether peers are preferred).
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/_p2p/v1/peers" | python3 -c 'import json,sys; p=json.load(sys.stdin)["peers"]; sys.exit(0 if all(x["digest"] for x in p) else 1)' && break
    sleep 0.1
  done
  curl -sf -o /dev/null "http://127.0.0.1:$port/$H.narinfo"
  local t; t=$(curl -sf -o "$D/out" -w '%{time_starttransfer} %{time_total}' "http://127.0.0.1:$port/$NAR")
  cmp -s "$D/out" "$D/cache/$NAR" || { echo "$label: bytes differ" >&2; exit 1; }
  local src; src=$(curl -sf "http://127.0.0.1:$port/metrics" | awk '/^nixgate_fetched_bytes_total\{source="(upstream|torrent)"\}/ {printf "%s ", $0}')
  echo "$label $t" >> "$RESULTS"
  echo "$label: first byte $(echo "$t" | cut -d' ' -f1) s, total $(echo "$t" | cut -d' ' -f2) s   [$src]"
  kill "$(cat "$D/$name.pid")"; rm -f "$D/out"
}
peers() { local n=$1 a=(); for ((j = 0; j < n; j++)); do a+=(--peer "${SEEDERS[$j]}"); done; echo "${a[@]}"; }

echo "== fetch $((SIZE >> 20)) MiB through a fresh appliance (upstream limited to $RATE/s)"
fetch upstream-alone --no-torrent
# shellcheck disable=SC2046
for n in 1 2 3; do fetch "swarm-$n-peers" --peer-policy peers-first $(peers $n); done
# shellcheck disable=SC2046
fetch "http-first-3-peers" --accelerate-below 1GiB $(peers 3)
python3 - "$RESULTS" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1])]
base = float(rows[0][2])
for label, ttfb, total in rows:
    print(f"{label:20s} total {float(total):7.2f} s  first byte {float(ttfb)*1000:7.1f} ms  speed-up {base/float(total):5.2f}x")
PY

echo "== memory: an appliance holding 10,000 NARs, every torrent asked for"
python3 - "$D/many" <<'PY'
import os, random, sys
root = sys.argv[1]; A = "0123456789abcdfghijklmnpqrsvwxyz"; rnd = random.Random(1)
os.makedirs(root); open(f"{root}/VERSION", "w").write("nixgate-store 1\n")
with open(f"{root}/fhs", "w") as out:
    for _ in range(10000):
        h = "".join(rnd.choice(A) for _ in range(32))
        fh = rnd.choice("01") + "".join(rnd.choice(A) for _ in range(51))
        out.write(fh + "\n")
        for d, name, data in (("narinfo", f"{h}-{fh}.narinfo", b"x" * 600),
                              ("nar", f"{fh}.nar.xz", os.urandom(50000))):
            p = f"{root}/{d}/{name[:2]}"; os.makedirs(p, exist_ok=True)
            open(f"{p}/{name}", "wb").write(data)
PY
mv "$D/many/fhs" "$D/fhs"
for hot in 512 10000; do
  rm -rf "$D/many/tmp"
  port=$(free_port)
  RUST_LOG=warn "$NG" serve --listen "127.0.0.1:$port" --cache-dir "$D/many" --no-mdns --max-cache-size 10GiB \
    --torrent-listen "127.0.0.1:$(free_port)" --torrent-hot-set $hot > "$D/many-$hot.log" 2>&1 &
  pid=$!; PIDS+=($pid)
  wait_ok "http://127.0.0.1:$port/readyz"
  before=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
  start=$(date +%s.%N)
  python3 - "http://127.0.0.1:$port/_p2p/v1/torrent/" "$D/fhs" <<'PY'
import sys, urllib.request
from concurrent.futures import ThreadPoolExecutor
base, fhs = sys.argv[1], open(sys.argv[2]).read().split()
def get(fh):
    with urllib.request.urlopen(base + fh, timeout=60) as r:
        return r.status == 200 and len(r.read()) > 0
ok = sum(ThreadPoolExecutor(8).map(get, fhs))
assert ok == len(fhs), f"{ok} of {len(fhs)} torrents"
PY
  took=$(python3 -c "print(round($(date +%s.%N) - $start, 1))")
  sleep 2
  rss=$(awk '/VmRSS/ {print $2}' /proc/$pid/status); hwm=$(awk '/VmHWM/ {print $2}' /proc/$pid/status)
  fds=$(ls /proc/$pid/fd | wc -l)
  echo "hot set $hot: 10,000 torrents made in ${took} s; RSS $((before >> 10)) -> $((rss >> 10)) MiB (peak $((hwm >> 10)) MiB), $fds open fds"
  kill $pid
done
