#!/usr/bin/env bash
# nixgate vs nginx, side by side, same files, one run. Usage: bench/run.sh
# Needs: nginx, wrk, curl (installed here if missing, Debian). Traffic stays on 127.0.0.1.
#
#  1. warm narinfo: wrk, 256 keep-alive connections, 2000 distinct narinfos
#     (nixgate cache vs nginx serving the same files from disk)
#  2. bench/zerocopy.sh: warm NARs of 100 KB, 8 MiB and 256 MiB, 8 connections (nixgate's
#     zero-copy hits vs nginx sendfile with one worker): throughput and CPU-seconds per GB
#  3. cold NAR: 32 MiB from an upstream limited to 8 MB/s, 50 clients at once;
#     time to first byte (nixgate coalescing vs nginx proxy_cache_lock)
#  4. peak RSS of nixgate (VmHWM) over the whole run
#  5. bench/swarm.sh: 200 MiB NAR through the swarm of 1-3 peers vs a rate-limited upstream
#  6. bench/soak.sh: 1,000 concurrent keep-alive clients (hits, misses, slow readers) for 60 s
#  7. bench/egress.sh: upstream egress of a fleet of K = 1, 2, 3, 5 appliances (real `nix copy`)
#     vs K independent ones (--no-fleet), and the first-byte cost of the owner hop
set -euo pipefail
cd "$(dirname "$0")/.."
for t in nginx wrk curl; do
  command -v $t >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk curl; break; }
done
DURATION=${DURATION:-10s}
cargo build --release --quiet --bin nixgate --example gen_cache
D=$(mktemp -d /tmp/nixgate-bench.XXXX)
trap 'kill $(cat $D/pids 2>/dev/null) 2>/dev/null; sleep 0.3; rm -rf $D' EXIT
target/release/examples/gen_cache $D/cache 2000 2000 64 32
KEY=$(cat $D/cache/key.pub)
read -r BIG_NI BIG_NAR < <(sed -n 1p $D/cache/big.txt)
read -r COLD_NI COLD_NAR < <(sed -n 2p $D/cache/big.txt)

# Ports: 1 nginx static, 2 nginx slow upstream, 3 nginx proxy_cache, 4 nixgate warm, 5 nixgate cold
P1=18181 P2=18182 P3=18183 P4=18184 P5=18185
mkdir -p $D/pc $D/tmp
cat > $D/nginx.conf <<NG
user root; daemon off; worker_processes 2; pid $D/nginx.pid; error_log $D/nginx.err;
events { worker_connections 8192; }
http {
  access_log off; sendfile on; tcp_nopush on; keepalive_requests 1000000;
  client_body_temp_path $D/tmp; proxy_temp_path $D/tmp; fastcgi_temp_path $D/tmp; uwsgi_temp_path $D/tmp; scgi_temp_path $D/tmp;
  types { text/x-nix-narinfo narinfo; application/x-nix-nar zst; }
  proxy_cache_path $D/pc levels=1:2 keys_zone=nix:10m max_size=4g inactive=1h use_temp_path=off;
  server { listen 127.0.0.1:$P1; root $D/cache; }
  server { listen 127.0.0.1:$P2; root $D/cache; limit_rate 8m; }
  server { listen 127.0.0.1:$P3; location / { proxy_pass http://127.0.0.1:$P2; proxy_cache nix;
           proxy_cache_valid 200 1h; proxy_cache_lock on; proxy_cache_lock_timeout 120s; proxy_cache_lock_age 120s; } }
}
NG
nginx -c $D/nginx.conf & echo $! >> $D/pids
RUST_LOG=warn target/release/nixgate serve --listen 127.0.0.1:$P4 --cache-dir $D/ng4 --upstream http://127.0.0.1:$P1 --trusted-public-key "$KEY" --no-torrent & NG4=$!; echo $NG4 >> $D/pids
RUST_LOG=warn target/release/nixgate serve --listen 127.0.0.1:$P5 --cache-dir $D/ng5 --upstream http://127.0.0.1:$P2 --trusted-public-key "$KEY" --no-torrent & NG5=$!; echo $NG5 >> $D/pids
sleep 1

cat > $D/paths.lua <<LUA
local paths = {}
for line in io.lines("$D/cache/narinfos.txt") do paths[#paths+1] = line end
local i = math.random(#paths)
request = function() i = i % #paths + 1; return wrk.format("GET", paths[i]) end
LUA
# Prime nixgate's cache with every narinfo and the big NAR.
mkdir -p $D/junk
sed "s|^|http://127.0.0.1:$P4|" $D/cache/narinfos.txt | xargs -n 200 curl -sf --output-dir $D/junk --remote-name-all
curl -sf -o /dev/null http://127.0.0.1:$P4$BIG_NI; curl -sf -o /dev/null http://127.0.0.1:$P4$BIG_NAR

wrk_run() { local out; out=$(wrk -t2 "$@" --latency 2>&1); echo "$out" | grep -E "Non-2xx|Socket errors" >&2 || true; echo "$out"; }
rps() { awk '/Requests\/sec/ {print $2}'; }
p99() { awk '$1=="99%" {print $2}'; }
xfer() { awk '/Transfer\/sec/ {v=$2; if (v ~ /GB/) {sub("GB","",v); v*=1024} else if (v ~ /MB/) {sub("MB","",v)} ; print v}'; }

echo "machine: $(nproc) cores, $(uname -r), nixgate $(target/release/nixgate --version)"
echo "== warm narinfo (2000 keys, 256 connections, $DURATION)"
A=$(wrk_run -c256 -d$DURATION -s $D/paths.lua http://127.0.0.1:$P4); B=$(wrk_run -c256 -d$DURATION -s $D/paths.lua http://127.0.0.1:$P1)
NG_RPS=$(echo "$A" | rps); NX_RPS=$(echo "$B" | rps)
echo "nixgate: $NG_RPS req/s p99 $(echo "$A" | p99) | nginx: $NX_RPS req/s p99 $(echo "$B" | p99) | ratio $(python3 -c "print(round($NG_RPS/$NX_RPS,2))")"

echo "== warm NAR (bench/zerocopy.sh)"
SKIP_BUILD=1 bench/zerocopy.sh

echo "== cold NAR (32 MiB, upstream 8 MB/s, 50 concurrent clients)"
# One curl process runs the 50 transfers at once (-Z): 50 curl processes started together
# (xargs -P50) spend tens of ms each just starting on 2 cores, which a hit shows as well.
cold() { local a=(); for i in $(seq 50); do a+=(-o /dev/null "$1"); done
  curl -s -Z --parallel-immediate --parallel-max 50 -w '%{time_starttransfer} %{time_total}\n' "${a[@]}" 2>/dev/null | sort -n; }
curl -sf -o /dev/null http://127.0.0.1:$P5$COLD_NI
A=$(cold http://127.0.0.1:$P5$COLD_NAR); B=$(cold http://127.0.0.1:$P3$COLD_NAR)
summ() { python3 -c "
import sys; r=[tuple(map(float,l.split())) for l in sys.stdin if l.strip()]
f=sorted(x[0] for x in r); t=sorted(x[1] for x in r)
print(f'ttfb median {f[len(f)//2]*1000:.1f} ms max {f[-1]*1000:.1f} ms, total max {t[-1]:.2f} s')"; }
echo "nixgate: $(echo "$A" | summ)"
echo "nginx proxy_cache_lock: $(echo "$B" | summ)"
python3 -c "
a=sorted(float(l.split()[0]) for l in '''$A'''.splitlines()); b=sorted(float(l.split()[0]) for l in '''$B'''.splitlines())
print(f'median ttfb ratio nginx/nixgate: {b[len(b)//2]/max(a[len(a)//2],1e-6):.0f}x')"
for p in $NG4 $NG5; do echo "nixgate pid $p peak RSS: $(awk '/VmHWM/ {print $2/1024 " MiB"}' /proc/$p/status)"; done

echo "== BitTorrent swarm (bench/swarm.sh)"
bench/swarm.sh

echo "== soak (bench/soak.sh)"
bench/soak.sh

echo "== fleet egress (bench/egress.sh)"
bench/egress.sh
