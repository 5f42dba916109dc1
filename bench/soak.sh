#!/usr/bin/env bash
# Soak: 1,000 concurrent keep-alive clients for 60 s against one appliance (issue 11).
# Usage: bench/soak.sh   (SECONDS_=60 CLIENTS=1000 SLOW=100 HITS=10000 to change)
# Needs: nginx (the local upstream). Traffic stays on 127.0.0.0/8.
#
#  - a synthetic signed cache (gen_cache): 20,000 narinfos with 2 KB NARs and a 64 MiB NAR,
#    served by nginx as the upstream;
#  - nixgate with default limits (--max-connections 4096, --max-connections-per-ip 256,
#    --send-timeout 30s), the first HITS narinfos and their NARs primed;
#  - examples/soak.rs: CLIENTS - SLOW well-behaved clients from 16 addresses (90% hits,
#    8% misses fetched from the upstream, 2% upstream 404s, 0-200 ms think time) and SLOW
#    slow readers of the 64 MiB NAR (half never read, half read 4 KiB/s);
#  - every second: nixgate's RSS and open fds. Reports max RSS, VmHWM, max fds, hit latency
#    percentiles and the well-behaved clients' errors.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nginx >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx; }
SECS=${SECONDS_:-60} CLIENTS=${CLIENTS:-1000} SLOW=${SLOW:-100} HITS=${HITS:-10000}
ulimit -n "$(ulimit -Hn)"
cargo build --release --quiet --bin nixgate --example gen_cache --example soak
D=$(mktemp -d /tmp/nixgate-soak.XXXX)
trap 'kill $(cat $D/pids 2>/dev/null) 2>/dev/null; sleep 0.3; rm -rf $D' EXIT
target/release/examples/gen_cache $D/cache 20000 2000 64
KEY=$(cat $D/cache/key.pub)
read -r _ BIG_NAR < <(sed -n 1p $D/cache/big.txt)
UP=18191 NG=18192
mkdir -p $D/tmp
cat > $D/nginx.conf <<NG
user root; daemon off; worker_processes 1; pid $D/nginx.pid; error_log $D/nginx.err;
events { worker_connections 4096; }
http { access_log off; sendfile on; keepalive_requests 1000000;
  client_body_temp_path $D/tmp; proxy_temp_path $D/tmp; fastcgi_temp_path $D/tmp; uwsgi_temp_path $D/tmp; scgi_temp_path $D/tmp;
  server { listen 127.0.0.1:$UP; root $D/cache; } }
NG
nginx -c $D/nginx.conf & echo $! >> $D/pids
RUST_LOG=warn target/release/nixgate serve --listen 127.0.0.1:$NG --cache-dir $D/ng \
  --upstream http://127.0.0.1:$UP --trusted-public-key "$KEY" --no-torrent 2> $D/nixgate.log &
PID=$!; echo $PID >> $D/pids
sleep 1
curl -sf -o /dev/null http://127.0.0.1:$NG$BIG_NAR   # the slow readers' NAR is a hit

( while kill -0 $PID 2>/dev/null; do
    echo "$(awk '/VmRSS/ {print $2}' /proc/$PID/status) $(ls /proc/$PID/fd | wc -l)"; sleep 1
  done > $D/samples ) & echo $! >> $D/pids

echo "machine: $(nproc) cores, $(uname -r), nixgate $(target/release/nixgate --version), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== soak: $CLIENTS clients ($SLOW slow readers) for ${SECS}s, $HITS cached paths"
target/release/examples/soak 127.0.0.1:$NG $D/cache "$HITS" "$SECS" "$CLIENTS" "$SLOW" "$BIG_NAR"
sleep 1
awk '{ if ($1>r) r=$1; if ($2>f) f=$2 } END { printf "nixgate: max RSS %.1f MiB, max open fds %d (sampled every second)\n", r/1024, f }' $D/samples
echo "nixgate: peak RSS (VmHWM) $(awk '/VmHWM/ {printf "%.1f MiB", $2/1024}' /proc/$PID/status)"
echo "nixgate: $(curl -s http://127.0.0.1:$NG/metrics | grep -E '^nixgate_(send_timeouts_total|connections_refused_total)' | tr '\n' ' ')"
echo "nixgate log lines at warn or above: $(wc -l < $D/nixgate.log); load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
