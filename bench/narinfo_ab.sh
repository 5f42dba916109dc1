#!/usr/bin/env bash
# Warm narinfo hits of two nixgate binaries beside nginx, rounds alternated, same files:
#   bench/narinfo_ab.sh OLD_NIXGATE NEW_NIXGATE
# (e.g. a release build of an earlier commit in a worktree, and target/release/nixgate).
# wrk, 256 keep-alive connections, 2000 distinct narinfos, DURATION (10s) per round, ROUNDS (3).
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=$1 NEW=$2
for t in nginx wrk curl; do command -v $t >/dev/null || { echo "missing $t" >&2; exit 1; }; done
DURATION=${DURATION:-10s} ROUNDS=${ROUNDS:-3}
cargo build --release --quiet --example gen_cache
D=$(mktemp -d /tmp/nixgate-ab.XXXX)
trap 'kill $(cat $D/pids 2>/dev/null) 2>/dev/null; sleep 0.3; rm -rf $D' EXIT
target/release/examples/gen_cache $D/cache 2000 2000
KEY=$(cat $D/cache/key.pub)
P1=18191 P2=18192 P3=18193
mkdir -p $D/tmp
cat > $D/nginx.conf <<NG
user root; daemon off; worker_processes 2; pid $D/nginx.pid; error_log $D/nginx.err;
events { worker_connections 8192; }
http { access_log off; sendfile on; keepalive_requests 1000000;
  client_body_temp_path $D/tmp; proxy_temp_path $D/tmp; fastcgi_temp_path $D/tmp; uwsgi_temp_path $D/tmp; scgi_temp_path $D/tmp;
  types { text/x-nix-narinfo narinfo; }
  server { listen 127.0.0.1:$P1; root $D/cache; } }
NG
nginx -c $D/nginx.conf & echo $! >> $D/pids
for p in "$P2 $OLD" "$P3 $NEW"; do set -- $p
  RUST_LOG=warn $2 serve --listen 127.0.0.1:$1 --cache-dir $D/c$1 --upstream http://127.0.0.1:$P1 --trusted-public-key "$KEY" --no-torrent --no-mdns 2>/dev/null & echo $! >> $D/pids
done
sleep 1
mkdir -p $D/junk
for p in $P2 $P3; do sed "s|^|http://127.0.0.1:$p|" $D/cache/narinfos.txt | xargs -n 200 curl -sf --output-dir $D/junk --remote-name-all; done
cat > $D/paths.lua <<LUA
local paths = {}
for line in io.lines("$D/cache/narinfos.txt") do paths[#paths+1] = line end
local i = math.random(#paths)
request = function() i = i % #paths + 1; return wrk.format("GET", paths[i]) end
LUA
rps() { wrk -t2 -c256 -d$DURATION -s $D/paths.lua "$1" 2>&1 | awk '/Requests\/sec/ {print $2}'; }
echo "machine: $(nproc) cores; $($OLD --version) (old) vs $($NEW --version) (new); $(uptime | sed 's/.*load/load/')"
for r in $(seq $ROUNDS); do
  o=$(rps http://127.0.0.1:$P2); n=$(rps http://127.0.0.1:$P3); g=$(rps http://127.0.0.1:$P1)
  echo "round $r: old $o req/s, new $n req/s, nginx $g req/s; new/old $(python3 -c "print(round($n/$o,2))"), new/nginx $(python3 -c "print(round($n/$g,2))")"
done
