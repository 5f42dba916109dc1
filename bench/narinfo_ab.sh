#!/usr/bin/env bash
# Warm narinfo hits beside nginx, rounds alternated, same files. Two modes:
#   bench/narinfo_ab.sh OLD_NIXGATE NEW_NIXGATE
#     two nixgate binaries (e.g. a release build of an earlier commit in a worktree, and
#     target/release/nixgate), curl's User-Agent;
#   bench/narinfo_ab.sh --ua NIXGATE
#     one binary, a zstd-capable Nix's User-Agent (`curl/7.85.0 Nix/2.8.0`, whose narinfo
#     nixgate renders to name its own zstd file, docs/ZSTD.md) against curl's (the stored
#     bytes), on an xz cache (GEN_COMPRESSION=xz) and two appliances: "held", where every
#     NAR's .nar.zst was fetched once (the zstd file is held: the warm runner case), and
#     "cold", where only the narinfos were (no NAR held: the narinfo names the zstd file its
#     download will make). Each wrk run also reports the appliance's CPU (utime + stime) per
#     request, steadier than the rate on a shared machine.
# wrk, 256 keep-alive connections, 2000 distinct narinfos, DURATION (10s) per round, ROUNDS (3).
set -euo pipefail
cd "$(dirname "$0")/.."
UA_MODE=0
if [ "${1:-}" = --ua ]; then UA_MODE=1; OLD=$2 NEW=$2; else OLD=$1 NEW=$2; fi
NIX_UA='curl/7.85.0 Nix/2.8.0' CURL_UA='curl/8.5.0'
for t in nginx wrk curl; do command -v $t >/dev/null || { echo "missing $t" >&2; exit 1; }; done
DURATION=${DURATION:-10s} ROUNDS=${ROUNDS:-3}
cargo build --release --quiet --example gen_cache
D=$(mktemp -d /tmp/nixgate-ab.XXXX)
trap 'kill $(cat $D/pids 2>/dev/null) 2>/dev/null; sleep 0.3; rm -rf $D' EXIT
[ $UA_MODE = 1 ] && export GEN_COMPRESSION=xz
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
# get PORT UA PATHS_FILE: every path, 200 per curl.
get() { sed "s|^|http://127.0.0.1:$1|" "$3" | xargs -n 200 curl -sf -A "$2" --output-dir $D/junk --remote-name-all; }
if [ $UA_MODE = 0 ]; then
  for p in $P2 $P3; do get $p "$CURL_UA" $D/cache/narinfos.txt; done
else
  # held ($P2): a Nix's narinfo (names the .nar.zst, the NAR being cold), then that file
  # (its download makes the zstd file); cold ($P3): the narinfos only.
  get $P2 "$NIX_UA" $D/cache/narinfos.txt
  (cd $D/cache && ls nar) | sed 's|^|/nar/|; s|\.nar\.xz$|.nar.zst|' > $D/zst.txt
  get $P2 "$NIX_UA" $D/zst.txt
  get $P3 "$CURL_UA" $D/cache/narinfos.txt
  stored=$(curl -sf http://127.0.0.1:$P2/metrics | awk '$1 == "nixgate_transcodes_total{outcome=\"stored\"}" { print $2 }')
  one=$(head -1 $D/cache/narinfos.txt)
  c() { curl -sf -A "$2" http://127.0.0.1:$1$one | sed -n 's/^Compression: //p'; }
  echo "held: $stored zstd files stored; $one as Compression: Nix UA held $(c $P2 "$NIX_UA"), cold $(c $P3 "$NIX_UA"); curl UA $(c $P2 "$CURL_UA")"
fi
cat > $D/paths.lua <<LUA
local paths = {}
for line in io.lines("$D/cache/narinfos.txt") do paths[#paths+1] = line end
local i = math.random(#paths)
request = function() i = i % #paths + 1; return wrk.format("GET", paths[i]) end
LUA
rps() { wrk -t2 -c256 -d$DURATION -H "User-Agent: $2" -s $D/paths.lua "$1" 2>&1 | awk '/Requests\/sec/ {print $2}'; }
r2() { python3 -c "print(round($1/$2,2))"; }
# rate_cpu URL UA PID: req/s, and the appliance's CPU (utime + stime) per request in us,
# which the other load of a shared machine moves much less than the rate.
rate_cpu() {
  local c0 c1 out; c0=$(awk '{ print $14 + $15 }' /proc/$3/stat)
  out=$(wrk -t2 -c256 -d$DURATION -H "User-Agent: $2" -s $D/paths.lua "$1" 2>&1)
  c1=$(awk '{ print $14 + $15 }' /proc/$3/stat)
  python3 - "$out" $c0 $c1 $(getconf CLK_TCK) <<'PY'
import re, sys
out, c0, c1, hz = sys.argv[1], *map(float, sys.argv[2:])
n = int(re.search(r"(\d+) requests in", out).group(1))
rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
print(f"{rate:.0f} {(c1 - c0) / hz / n * 1e6:.1f}")
PY
}
if [ $UA_MODE = 0 ]; then
  echo "machine: $(nproc) cores; $($OLD --version) (old) vs $($NEW --version) (new); $(uptime | sed 's/.*load/load/')"
  for r in $(seq $ROUNDS); do
    o=$(rps http://127.0.0.1:$P2 "$CURL_UA"); n=$(rps http://127.0.0.1:$P3 "$CURL_UA"); g=$(rps http://127.0.0.1:$P1 "$CURL_UA")
    echo "round $r: old $o req/s, new $n req/s, nginx $g req/s; new/old $(r2 $n $o), new/nginx $(r2 $n $g)"
  done
else
  echo "machine: $(nproc) cores; $($NEW --version); $(uptime | sed 's/.*load/load/')"
  HELD=$(sed -n 2p $D/pids) COLD=$(sed -n 3p $D/pids)
  for r in $(seq $ROUNDS); do
    # The two User-Agents in turn first (curl, Nix, Nix, curl, ...): the load of the shared
    # machine drifts within a round.
    if [ $((r % 2)) = 1 ]; then
      set -- $(rate_cpu http://127.0.0.1:$P2 "$CURL_UA" $HELD) $(rate_cpu http://127.0.0.1:$P2 "$NIX_UA" $HELD)
    else
      set -- $(rate_cpu http://127.0.0.1:$P2 "$NIX_UA" $HELD); set -- $(rate_cpu http://127.0.0.1:$P2 "$CURL_UA" $HELD) "$@"
    fi
    c=$1 cc=$2 n=$3 nc=$4
    set -- $(rate_cpu http://127.0.0.1:$P3 "$NIX_UA" $COLD); k=$1 kc=$2
    g=$(rps http://127.0.0.1:$P1 "$NIX_UA")
    echo "round $r: held: curl UA $c req/s ($cc CPU us/req), Nix UA $n req/s ($nc us/req): Nix/curl rate $(r2 $n $c), CPU $(r2 $nc $cc); cold: Nix UA $k req/s ($kc us/req); nginx $g req/s"
  done
fi
