#!/usr/bin/env bash
# Appliance CPU per GB of NAR for a cold path served as zstd (issue 22, docs/ZSTD.md §4): the
# streamed one-decode transcode (a runner's narinfo names the zstd file at once; the download
# decodes the xz once for the NarHash check and the zstd encoder) against the previous path
# (the NAR fetched and verified as xz, then decoded a second time by the post-commit
# transcode). Usage:
#   bench/cold_transcode.sh
# Needs: nix-bin, nginx, curl, python3 (Debian). Traffic stays on 127.0.0.1.
#
# The same closure as bench/substitute.sh (real files of this machine, SOURCES), written as a
# signed xz cache and served by nginx. Each round starts a fresh appliance (release build) and:
# - "two decodes": a client that is no Nix (curl) fetches every narinfo and xz NAR (verified
#   and stored, no tap), then a Nix client's narinfo request starts the post-commit
#   transcode of each; done when every transcode is stored;
# - "one decode": a Nix client fetches every narinfo (zstd at once) and its .nar.zst (the
#   download's tap); done when every transcode is stored.
# CPU: the appliance process's utime + stime (/proc/PID/stat) from start to done, so it counts
# everything (HTTP, TLS-free fetch, xz decode, sha256, zstd, disk), divided by the NAR bytes.
# ROUNDS rounds, the two alternated (CPU=0 skips them). Then (PROBE=0 skips it) ROUNDS runs of
# every path's .nar.zst at once while /nix-cache-info is timed: what the transcodes cost the
# latency of the appliance's other requests.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/closure.sh
bench_setup cold-transcode nix nginx curl python3
ROUNDS=${ROUNDS:-2}
LOC=/usr/share/locale
SOURCES=${SOURCES:-"/usr/lib/python3.11 /usr/lib/gcc/x86_64-linux-gnu/12 /usr/lib/git-core $LOC/de $LOC/fr $LOC/es $LOC/ja $LOC/ru"}
NIX_UA='curl/7.85.0 Nix/2.8.0'

bench_closure
HASHES=()
for p in "${PATHS[@]}"; do h=${p#/nix/store/}; HASHES+=("${h:0:32}"); done
echo "paths ${#PATHS[@]}, NAR $((NAR_BYTES / 1000000)) MB"

P1=18391 P2=18392
cat > "$D/nginx.conf" <<NG
user root; daemon off; worker_processes 2; pid $D/nginx.pid; error_log $D/nginx.err;
events { worker_connections 1024; }
http { access_log off; sendfile on;
  client_body_temp_path $D; proxy_temp_path $D; fastcgi_temp_path $D; uwsgi_temp_path $D; scgi_temp_path $D;
  types { text/x-nix-narinfo narinfo; application/x-nix-nar xz zst; }
  server { listen 127.0.0.1:$P1; root $D/cache; } }
NG
nginx -c "$D/nginx.conf" & PIDS+=($!)
wait_ok "http://127.0.0.1:$P1/nix-cache-info"

B=http://127.0.0.1:$P2
metric() { curl -sf "$B/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
wait_stored() {
  for _ in $(seq 3000); do
    [ "$(metric 'nixgate_transcodes_total{outcome="stored"}')" -ge "${#PATHS[@]}" ] && return 0; sleep 0.1
  done; echo "transcodes did not finish" >&2; return 1
}
field() { sed -n "s/^$1: //p"; }

two_decodes() {
  for h in "${HASHES[@]}"; do
    url=$(curl -sf -A curl/8.5.0 "$B/$h.narinfo" | field URL)
    curl -sf -A curl/8.5.0 -o /dev/null "$B/$url"
  done
  for h in "${HASHES[@]}"; do curl -sf -A "$NIX_UA" -o /dev/null "$B/$h.narinfo"; done
}
one_decode() {
  for h in "${HASHES[@]}"; do
    url=$(curl -sf -A "$NIX_UA" "$B/$h.narinfo" | field URL)
    case $url in *.nar.zst) ;; *) echo "not told zstd: $url" >&2; return 1 ;; esac
    curl -sf -A "$NIX_UA" -o /dev/null "$B/$url"
  done
}

# Every path's .nar.zst at once (cold), while a client times /nix-cache-info one request after
# the other: how long the transcoding downloads hold the appliance's other requests up.
parallel_with_probe() {
  local urls=()
  for h in "${HASHES[@]}"; do urls+=("$(curl -sf -A "$NIX_UA" "$B/$h.narinfo" | field URL)"); done
  local got=() p
  for u in "${urls[@]}"; do curl -sf -A "$NIX_UA" -o /dev/null "$B/$u" & got+=($!); done
  local probes=$D/probes; : > "$probes"
  running() { for p in "${got[@]}"; do kill -0 "$p" 2>/dev/null && return 0; done; return 1; }
  # At a fixed rate, so that the probe costs the transcodes the same CPU whatever it measures.
  while running; do
    curl -sf -o /dev/null -w '%{time_total}\n' "$B/nix-cache-info" >> "$probes"; sleep 0.02
  done
  for p in "${got[@]}"; do wait "$p"; done
  python3 - "$probes" <<'PY'
import sys
t = sorted(float(l) * 1000 for l in open(sys.argv[1]) if l.strip())
q = lambda p: t[min(len(t) - 1, int(p * len(t)))]
print(f"  /nix-cache-info during the transcodes: {len(t)} requests, p50 {q(.5):.1f} ms, p90 {q(.9):.1f} ms, p99 {q(.99):.1f} ms, max {t[-1]:.1f} ms")
PY
}

run() { # run NAME: a fresh appliance, the scenario, CPU s per GB of NAR
  rm -rf "$D/ng"
  RUST_LOG=warn "$NG" serve --listen 127.0.0.1:$P2 --cache-dir "$D/ng" --upstream http://127.0.0.1:$P1 \
    --trusted-public-key "$KEY" --no-torrent --no-mdns & local pid=$!
  wait_ok "$B/nix-cache-info"
  local t0 c0; t0=$(date +%s.%N); c0=$(cpu_ticks "$pid")
  "$1"; wait_stored
  local c1; c1=$(cpu_ticks "$pid")
  local dec enc
  dec=$(metric 'nixgate_transcode_cpu_seconds_total{stage="decode"}'); enc=$(metric 'nixgate_transcode_cpu_seconds_total{stage="encode"}')
  kill "$pid"; wait "$pid" 2>/dev/null || true
  python3 - "$1" "$c0" "$c1" "$t0" "$NAR_BYTES" "$dec" "$enc" "$(getconf CLK_TCK)" <<'PY'
import sys, time
name, c0, c1, t0, nar, dec, enc, hz = sys.argv[1], *map(float, sys.argv[2:])
cpu, gb = (c1 - c0) / hz, nar / 1e9
print(f"{name:12s} appliance CPU {cpu:6.2f} s = {cpu/gb:5.1f} s/GB of NAR | transcode stages: "
      f"decode {dec/gb:5.1f} s/GB, encode {enc/gb:5.1f} s/GB | wall {time.time() - t0:5.1f} s")
PY
}

[ "${CPU:-1}" = 1 ] && for r in $(seq "$ROUNDS"); do
  echo "== round $r"
  run two_decodes
  run one_decode
done
[ "${PROBE:-1}" = 1 ] && for r in $(seq "$ROUNDS"); do run parallel_with_probe; done
