#!/usr/bin/env bash
# What the fleet's one transcode per NAR saves (issue 22 §7, docs/ZSTD.md): three appliances
# (release build) behind nginx serving a signed xz closure, and a zstd-capable client that
# fetches every path through each member in turn. Usage:
#   bench/fleet_zstd.sh                      # fleet vs the same 3 appliances without --peer
#   OLD=/path/to/old/nixgate bench/fleet_zstd.sh   # and a fleet of an older binary (e.g. a
#       release build of 66e6b21, whose members fetch the owner's xz and transcode it)
# Needs: nix-bin, nginx, curl, python3 (Debian). Traffic stays on 127.0.0.1.
#
# The closure is bench/closure.sh's (real files of this machine, SOURCES; same default as
# bench/cold_transcode.sh), written as a signed xz cache served by nginx, whose access log
# counts the upstream's NAR bytes. Configurations, ROUNDS rounds alternated, fresh cache dirs:
# - fleet: the 3 members each have the others as --peer (a fleet); started when every member
#   sees 2 owners in /_p2p/v1/peers;
# - solo: the same 3 appliances with no --peer: each fetches the xz and transcodes itself;
# - old-fleet (with OLD): as fleet, with the OLD binary.
# The client (User-Agent `curl/7.85.0 Nix/2.8.0`) asks member 0 for every narinfo and the file
# its URL names, then member 1, then member 2. Then the bench waits until the members are idle
# (no new stored transcode, < 0.1 CPU s over 1 s: background transcodes finish). Reported per
# member: CPU (utime + stime of /proc/PID/stat from the client's start to idle) per GB of NAR
# served to the client, nixgate_transcodes_total{outcome="stored"}, bytes fetched from the
# upstream and from fleet members (nixgate_fetched_bytes_total), du of the cache dir, and its
# CPU split by phase (while the client was at member 0, 1, 2, then until idle: a member's own
# phase after the first is what serving costs once the owners hold every zstd file); for the
# fleet: total CPU per GB of NAR served, nginx's NAR bytes against the xz closure.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/closure.sh
bench_setup fleet-zstd nix nginx curl python3
ROUNDS=${ROUNDS:-2}
OLD=${OLD:-}
LOC=/usr/share/locale
SOURCES=${SOURCES:-"/usr/lib/python3.11 /usr/lib/gcc/x86_64-linux-gnu/12 /usr/lib/git-core $LOC/de $LOC/fr $LOC/es $LOC/ja $LOC/ru"}
NIX_UA='curl/7.85.0 Nix/2.8.0'
N=3

bench_closure
HASHES=()
for p in "${PATHS[@]}"; do h=${p#/nix/store/}; HASHES+=("${h:0:32}"); done
echo "paths ${#PATHS[@]}, NAR $((NAR_BYTES / 1000000)) MB, xz $((XZ_BYTES / 1000000)) MB; $("$NG" --version)${OLD:+ vs $("$OLD" --version) (old)}"

P0=18411
PORTS=(18412 18413 18414)
cat > "$D/nginx.conf" <<NG
user root; daemon off; worker_processes 2; pid $D/nginx.pid; error_log $D/nginx.err;
events { worker_connections 1024; }
http { sendfile on; log_format b '\$uri \$body_bytes_sent'; access_log $D/access.log b;
  client_body_temp_path $D; proxy_temp_path $D; fastcgi_temp_path $D; uwsgi_temp_path $D; scgi_temp_path $D;
  types { text/x-nix-narinfo narinfo; application/x-nix-nar xz zst; }
  server { listen 127.0.0.1:$P0; root $D/cache; } }
NG
nginx -c "$D/nginx.conf" & PIDS+=($!)
wait_ok "http://127.0.0.1:$P0/nix-cache-info"

url() { echo "http://127.0.0.1:${PORTS[$1]}"; }
metric() { curl -sf "$(url "$1")/metrics" | awk -v m="$2" '$1 == m { v = $2 } END { print (v == "" ? 0 : v) }'; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
owners() { curl -sf "$(url "$1")/_p2p/v1/peers" | python3 -c 'import json,sys; print(sum(1 for p in json.load(sys.stdin)["peers"] if p.get("owner")))'; }
field() { sed -n "s/^$1: //p"; }
HZ=$(getconf CLK_TCK)

MPIDS=()
start() { # start BINARY fleet|solo
  MPIDS=()
  for i in $(seq 0 $((N - 1))); do
    local peers=()
    if [ "$2" = fleet ]; then
      for j in $(seq 0 $((N - 1))); do [ "$j" = "$i" ] || peers+=(--peer "$(url "$j")"); done
    fi
    rm -rf "$D/m$i"
    RUST_LOG=warn "$1" serve --listen "127.0.0.1:${PORTS[$i]}" --cache-dir "$D/m$i" \
      --upstream "http://127.0.0.1:$P0" --trusted-public-key "$KEY" --no-torrent --no-mdns \
      "${peers[@]}" & MPIDS+=($!); PIDS+=($!)
  done
  for i in $(seq 0 $((N - 1))); do wait_ok "$(url "$i")/nix-cache-info"; done
  if [ "$2" = fleet ]; then
    for i in $(seq 0 $((N - 1))); do
      for _ in $(seq 200); do [ "$(owners "$i")" = $((N - 1)) ] && break; sleep 0.1; done
      [ "$(owners "$i")" = $((N - 1)) ] || { echo "member $i sees $(owners "$i") owners" >&2; return 1; }
    done
  fi
}
stop() { for p in "${MPIDS[@]}"; do kill "$p"; wait "$p" 2>/dev/null || true; done; }

client() { # client MEMBER: every narinfo and the file it names; prints "zst xz bytes"
  local b zst=0 other=0 bytes=0 u n
  b=$(url "$1")
  for h in "${HASHES[@]}"; do
    u=$(curl -sf -A "$NIX_UA" "$b/$h.narinfo" | field URL)
    case $u in *.nar.zst) zst=$((zst + 1)) ;; *) other=$((other + 1)) ;; esac
    n=$(curl -sf -A "$NIX_UA" -o /dev/null -w '%{size_download}' "$b/$u")
    bytes=$((bytes + n))
  done
  echo "$zst $other $bytes"
}

stored_sum() { local s=0 i; for i in $(seq 0 $((N - 1))); do s=$((s + $(metric "$i" 'nixgate_transcodes_total{outcome="stored"}'))); done; echo $s; }
cpu_sum() { local s=0 p; for p in "${MPIDS[@]}"; do s=$((s + $(cpu_ticks "$p"))); done; echo $s; }
# Until no transcode is stored and the members use < 0.1 CPU s in 1 s, twice (60 s at most).
idle() {
  local quiet=0 s0 c0 s1 c1
  for _ in $(seq 60); do
    s0=$(stored_sum); c0=$(cpu_sum); sleep 1; s1=$(stored_sum); c1=$(cpu_sum)
    if [ "$s0" = "$s1" ] && [ $((c1 - c0)) -lt $((HZ / 10)) ]; then
      quiet=$((quiet + 1)); [ $quiet -ge 2 ] && return 0
    else quiet=0; fi
  done
  echo "members did not go idle" >&2
}

run() { # run NAME BINARY fleet|solo
  start "$2" "$3"
  local log0 c0=() c1=() t0
  log0=$(wc -l < "$D/access.log")
  for p in "${MPIDS[@]}"; do c0+=("$(cpu_ticks "$p")"); done
  t0=$(date +%s.%N)
  local got=() phases=$D/phases; : > "$phases"
  for i in $(seq 0 $((N - 1))); do
    got+=("$(client "$i")")
    for p in "${MPIDS[@]}"; do printf '%s ' "$(cpu_ticks "$p")"; done >> "$phases"; echo >> "$phases"
  done
  local t1; t1=$(date +%s.%N)
  idle
  for p in "${MPIDS[@]}"; do c1+=("$(cpu_ticks "$p")"); done
  local rows=$D/rows; : > "$rows"
  for i in $(seq 0 $((N - 1))); do
    echo "$i ${c0[$i]} ${c1[$i]} ${got[$i]} $(metric "$i" 'nixgate_transcodes_total{outcome="stored"}') \
$(metric "$i" 'nixgate_fetched_bytes_total{source="upstream"}') $(metric "$i" 'nixgate_fetched_bytes_total{source="fleet"}') \
$(du -sb "$D/m$i" | cut -f1)" >> "$rows"
  done
  local up; up=$(tail -n +$((log0 + 1)) "$D/access.log" | awk '$1 ~ /^\/nar\// { s += $2 } END { print s + 0 }')
  stop
  python3 - "$1" "$rows" "$phases" "$NAR_BYTES" "$XZ_BYTES" "$up" "$HZ" "$t0" "$t1" <<'PY'
import sys
name, rows, phases, nar, xz, up, hz, t0, t1 = *sys.argv[1:4], *map(float, sys.argv[4:])
gb, mb = nar / 1e9, 1e6
snaps = [list(map(float, l.split())) for l in open(phases)]
tot_cpu = tot_stored = tot_disk = served = 0
for l in open(rows):
    i, c0, c1, zst, other, nbytes, stored, f_up, f_fleet, disk = l.split()
    cpu = (float(c1) - float(c0)) / hz
    tot_cpu += cpu; tot_stored += int(stored); tot_disk += int(disk); served += nar
    print(f"{name:9s} member {i}: CPU {cpu:6.2f} s = {cpu / gb:5.1f} s/GB of NAR served | told zst {zst}, other {other}, "
          f"got {int(nbytes) / mb:5.1f} MB | stored transcodes {stored} | fetched upstream {float(f_up) / mb:5.1f} MB, "
          f"fleet {float(f_fleet or 0) / mb:5.1f} MB | disk {int(disk) / mb:5.1f} MB = {int(disk) / xz:4.2f}x xz, {int(disk) / nar:4.2f}x NAR")
    m, at = int(i), [float(c0)] + [s[int(i)] for s in snaps] + [float(c1)]
    by = [(b - a) / hz for a, b in zip(at, at[1:])]
    print(f"{'':9s}   CPU by phase (client at member 0, 1, 2; then idle): " + ", ".join(f"{c:.2f}" for c in by)
          + f" s; in its own client phase {by[m] / gb:5.1f} s/GB")
print(f"{name:9s} fleet:    CPU {tot_cpu:6.2f} s = {tot_cpu / (served / 1e9):5.1f} s/GB of NAR served | stored transcodes {tot_stored} | "
      f"upstream NAR bytes {up / mb:5.1f} MB = {up / xz:4.2f}x xz | disk {tot_disk / mb:5.1f} MB = {tot_disk / xz:4.2f}x xz | "
      f"client wall {t1 - t0:5.1f} s")
PY
}

for r in $(seq "$ROUNDS"); do
  echo "== round $r ($(uptime | sed 's/.*load/load/'))"
  run fleet "$NG" fleet
  run solo "$NG" solo
  [ -n "$OLD" ] && run old-fleet "$OLD" fleet
done
