#!/usr/bin/env bash
# Warm NARs, nixgate (zero-copy hits) vs nginx (`sendfile on`, one worker), side by side in one
# run: throughput and CPU cost for a 100 KB, an 8 MB and a 256 MB NAR, wrk with 8 keep-alive
# connections. CPU = utime + stime from /proc/PID/stat before and after each wrk run (nixgate:
# the process, all threads; nginx: its worker), per GB (10^9 bytes) of response bytes wrk read.
# The machine may be shared: each size runs ROUNDS rounds of DURATION per server, alternating
# which goes first, and the totals are compared (bytes / time, CPU / bytes).
# Usage: bench/zerocopy.sh (DURATION=4s, ROUNDS=3 by default; SKIP_BUILD=1 uses target/release
# as is).
# Needs: nginx, wrk, curl, python3. Traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-4s}
ROUNDS=${ROUNDS:-3}
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --quiet --bin nixgate --example gen_cache
D=$(mktemp -d /tmp/nixgate-zc.XXXX)
trap 'kill $(cat $D/pids 2>/dev/null) 2>/dev/null; sleep 0.3; rm -rf $D' EXIT
# One 100 000-byte NAR (the "small" one), then 8 MiB and 256 MiB (zstd of random bytes).
target/release/examples/gen_cache $D/cache 1 100000 8 256
KEY=$(cat $D/cache/key.pub)
SMALL_NI=$(sed -n 1p $D/cache/narinfos.txt)
SMALL_NAR=/$(awk '/^URL:/ {print $2}' $D/cache$SMALL_NI)
read -r MID_NI MID_NAR < <(sed -n 1p $D/cache/big.txt)
read -r BIG_NI BIG_NAR < <(sed -n 2p $D/cache/big.txt)

P1=18281 P2=18282
mkdir -p $D/tmp
cat > $D/nginx.conf <<NG
user root; daemon off; worker_processes 1; pid $D/nginx.pid; error_log $D/nginx.err;
events { worker_connections 1024; }
http {
  access_log off; sendfile on; tcp_nopush on; keepalive_requests 1000000;
  client_body_temp_path $D/tmp; proxy_temp_path $D/tmp; fastcgi_temp_path $D/tmp; uwsgi_temp_path $D/tmp; scgi_temp_path $D/tmp;
  types { text/x-nix-narinfo narinfo; application/x-nix-nar zst; }
  server { listen 127.0.0.1:$P1; root $D/cache; }
}
NG
nginx -c $D/nginx.conf & NGINX=$!; echo $NGINX >> $D/pids
RUST_LOG=warn target/release/nixgate serve --listen 127.0.0.1:$P2 --cache-dir $D/ng \
  --upstream http://127.0.0.1:$P1 --trusted-public-key "$KEY" --no-torrent & NG=$!; echo $NG >> $D/pids
sleep 1
# Prime nixgate's cache and both page caches.
for p in $SMALL_NI $SMALL_NAR $MID_NI $MID_NAR $BIG_NI $BIG_NAR; do
  curl -sf -o /dev/null http://127.0.0.1:$P2$p; curl -sf -o /dev/null http://127.0.0.1:$P1$p
done
NGINX_WORKERS=$(pgrep -P $NGINX | tr '\n' ' ')
TICK=$(getconf CLK_TCK)

# CPU ticks (utime + stime) of the given pids.
ticks() { for p in "$@"; do awk '{print $14 + $15}' /proc/$p/stat; done | awk '{s += $1} END {print s}'; }
# One wrk run against $1 (url), CPU measured on the pids after it; prints
# "bytes seconds cpu-seconds".
measure() {
  local url=$1; shift
  local t0 t1 out
  t0=$(ticks "$@")
  out=$(wrk -t2 -c8 -d$DURATION --timeout 30s "$url" 2>&1)
  t1=$(ticks "$@")
  echo "$out" | grep -E "Non-2xx|Socket errors" >&2 || true
  echo "$out" | python3 -c "
import re, sys
t = sys.stdin.read()
unit = {'B': 1, 'KB': 1 << 10, 'MB': 1 << 20, 'GB': 1 << 30, 'TB': 1 << 40}
m = re.search(r'requests in ([\d.]+)(m?s), ([\d.]+)([KMGT]?B) read', t)
secs = float(m.group(1)) * (60 if m.group(2) == 'm' else 1)
print(float(m.group(3)) * unit[m.group(4)], secs, ($t1 - $t0) / $TICK)"
}

echo "machine: $(nproc) cores, $(uname -r), nixgate $(target/release/nixgate --version)"
echo "load before: $(uptime)"
echo "== warm NAR, zero-copy nixgate vs nginx sendfile (1 worker), wrk -t2 -c8, $ROUNDS x $DURATION each"
printf '%-8s %12s %12s %7s %14s %14s %9s\n' size "nixgate MB/s" "nginx MB/s" ratio "nixgate CPU/GB" "nginx CPU/GB" "CPU ratio"
for row in "100KB $SMALL_NAR" "8MiB $MID_NAR" "256MiB $BIG_NAR"; do
  set -- $row
  : > $D/a; : > $D/b
  for r in $(seq $ROUNDS); do
    if [ $((r % 2)) = 1 ]; then
      measure http://127.0.0.1:$P2$2 $NG >> $D/a; measure http://127.0.0.1:$P1$2 $NGINX_WORKERS >> $D/b
    else
      measure http://127.0.0.1:$P1$2 $NGINX_WORKERS >> $D/b; measure http://127.0.0.1:$P2$2 $NG >> $D/a
    fi
  done
  python3 -c "
def tot(f):
    rows = [list(map(float, l.split())) for l in open(f) if l.strip()]
    b, s, c = (sum(r[i] for r in rows) for i in range(3))
    return b / s / 1e6, c / (b / 1e9)
(a_x, a_c), (b_x, b_c) = tot('$D/a'), tot('$D/b')
print('%-8s %12.0f %12.0f %7.2f %14.3f %14.3f %9.2f' % ('$1', a_x, b_x, a_x / b_x, a_c, b_c, a_c / max(b_c, 1e-9)))"
done
echo "load after: $(uptime)"
echo "zero-copy responses: $(curl -s http://127.0.0.1:$P2/metrics | awk '/^nixgate_zero_copy_responses_total/ {print $2}')"
