#!/usr/bin/env bash
# Substitution benchmark of --serve-compression (issue 22): real `nix copy --from` of a
# realistic closure, warm, through nixgate (zstd) beside nginx serving the xz files. Usage:
#   bench/substitute.sh
# Needs: nix-bin, nginx, curl, python3 (Debian). Traffic stays on 127.0.0.1.
#
# 1. A closure of real files from this machine (SOURCES: Python's library, gcc's libraries,
#    git's binaries, translations; no random bytes), each directory added as a store path and
#    written as a signed binary cache with xz (what cache.nixos.org serves).
# 2. nginx serves that cache (port 1: the xz files, as nginx proxy_cache serves them warm), and
#    the same paths written as a zstd cache by Nix (port 3: the client's limit). nixgate
#    (release build, default --serve-compression zstd) caches the xz one (port 2).
# 3. A cold `nix copy` through nixgate (runners are told zstd at once; each download decodes
#    the xz once, for the NarHash check and the zstd encoder); then the appliance's metrics: NAR
#    bytes transcoded, zstd bytes written, transcode CPU seconds (thread CPU time, both stages:
#    the encode; the decode stage is 0 for a download's tap). bench/cold_transcode.sh compares
#    the appliance's whole CPU per GB with the previous path (a second decode after commit).
# 4. ROUNDS rounds, alternated: `nix copy` into a fresh store from nginx (xz), from warm
#    nixgate (zstd) and from nginx (zstd); wall time of each.
# 5. ROUNDS cold rounds: a fresh nginx proxy_cache in front of the xz files (it passes the xz
#    through) against a fresh nixgate (its first runner gets what a cold appliance serves).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/closure.sh
bench_setup substitute nix nginx curl python3
ROUNDS=${ROUNDS:-3}
LOC=/usr/share/locale
SOURCES=${SOURCES:-"/usr/lib/python3.11 /usr/lib/gcc/x86_64-linux-gnu/12 /usr/lib/git-core $LOC/de $LOC/fr $LOC/es $LOC/ja $LOC/ru"}
metric() { curl -sf "http://127.0.0.1:$P2/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
# A family summed over its series (e.g. the transcode CPU over its stages).
metric_sum() { curl -sf "http://127.0.0.1:$P2/metrics" | awk -v m="$1" 'index($1, m "{") == 1 { s += $2 } END { print s + 0 }'; }

bench_closure
nix copy --to "file://$D/zcache?secret-key=$D/sk&compression=zstd" "${PATHS[@]}"
echo "paths ${#PATHS[@]}, NAR $((NAR_BYTES / 1000000)) MB, xz files $((XZ_BYTES / 1000000)) MB"

P1=18291 P2=18292 P3=18293 P4=18300 P5=18310
cat > "$D/nginx.conf" <<NG
user root; daemon off; worker_processes 2; pid $D/nginx.pid; error_log $D/nginx.err;
events { worker_connections 1024; }
http { access_log off; sendfile on; tcp_nopush on;
  client_body_temp_path $D; proxy_temp_path $D; fastcgi_temp_path $D; uwsgi_temp_path $D; scgi_temp_path $D;
  types { text/x-nix-narinfo narinfo; application/x-nix-nar xz zst; }
  server { listen 127.0.0.1:$P1; root $D/cache; }
  server { listen 127.0.0.1:$P3; root $D/zcache; }
$(for r in $(seq "$ROUNDS"); do
  # Round r's cold nginx proxy_cache in front of the xz files (its own empty cache).
  echo "  proxy_cache_path $D/pc$r keys_zone=pc$r:10m max_size=10g;"
  echo "  server { listen 127.0.0.1:$((P4 + r)); location / { proxy_pass http://127.0.0.1:$P1; proxy_cache pc$r; proxy_cache_valid 200 1d; } }"
done) }
NG
nginx -c "$D/nginx.conf" & PIDS+=($!)
RUST_LOG=warn "$NG" serve --listen 127.0.0.1:$P2 --cache-dir "$D/ng" --upstream http://127.0.0.1:$P1 \
  --trusted-public-key "$KEY" --no-torrent --no-mdns & PIDS+=($!)
wait_ok "http://127.0.0.1:$P1/nix-cache-info"; wait_ok "http://127.0.0.1:$P2/nix-cache-info"; wait_ok "http://127.0.0.1:$P3/nix-cache-info"

copy() { # copy NAME URL: wall seconds of a nix copy of the closure into a fresh store
  local dest=$D/r/$1; rm -rf "$dest"; mkdir -p "$dest"
  local t0; t0=$(date +%s.%N)
  XDG_CACHE_HOME=$dest/xdg nix copy --from "$2" --to "$dest/root" --option trusted-public-keys "$KEY" "${PATHS[@]}" 2> "$dest.err" \
    || { echo "nix copy from $2 failed:" >&2; cat "$dest.err" >&2; exit 1; }
  python3 -c "import time; print(f'{time.time() - $t0:.2f}')"
}

echo "== cold through nixgate (zstd streamed as the xz arrives): $(copy cold http://127.0.0.1:$P2) s"
for _ in $(seq 600); do
  n=$(metric 'nixgate_transcodes_total{outcome="stored"}'); f=$(metric 'nixgate_transcodes_total{outcome="failed"}')
  [ "$((n + f))" -ge "${#PATHS[@]}" ] && break; sleep 0.2
done
TN=$(metric 'nixgate_transcoded_bytes_total{side="nar"}'); TO=$(metric 'nixgate_transcoded_bytes_total{side="out"}')
CPU=$(metric_sum 'nixgate_transcode_cpu_seconds_total')
python3 - "$TN" "$TO" "$CPU" "$XZ_BYTES" "$n" "$f" <<'PY'
import sys
tn, to, cpu, xz, n, f = map(float, sys.argv[1:])
print(f"transcodes stored {int(n)} failed {int(f)}; NAR {tn/1e6:.0f} MB -> zstd {to/1e6:.0f} MB "
      f"({to/xz:.2f}x the xz files); transcode CPU {cpu:.1f} s = {cpu/(tn/1e9):.1f} s per GB of NAR")
PY
# Cold first runners, fresh appliances, alternated: zstd streamed (the default) against the
# upstream's xz passed through (--serve-compression upstream: no transcode, the runner decodes
# xz; what nixgate did before issue 22, and a stand-in for nginx proxy_cache cold).
PF=18294
cold_fresh() { # cold_fresh NAME FLAGS...: wall s of a cold nix copy through a fresh appliance
  local name=$1; shift; rm -rf "$D/cold-$name"
  RUST_LOG=warn "$NG" serve --listen 127.0.0.1:$PF --cache-dir "$D/cold-$name" --upstream http://127.0.0.1:$P1 \
    --trusted-public-key "$KEY" --no-torrent --no-mdns "$@" & local pid=$!
  wait_ok "http://127.0.0.1:$PF/nix-cache-info"
  copy "cold-$name" "http://127.0.0.1:$PF"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}
echo "== cold, fresh appliances, $ROUNDS rounds alternated (wall s)"
for r in $(seq "$ROUNDS"); do
  U=$(cold_fresh xz --serve-compression upstream); S=$(cold_fresh zstd)
  echo "round $r: upstream xz passed through $U s | zstd streamed $S s | ratio $(python3 -c "print(round($S/$U, 2))")x"
done
echo "== warm, $ROUNDS rounds alternated (wall s)"
for r in $(seq "$ROUNDS"); do
  X=$(copy nginx http://127.0.0.1:$P1); Z=$(copy nixgate http://127.0.0.1:$P2); N=$(copy nginx-zstd http://127.0.0.1:$P3)
  echo "round $r: nginx xz $X s | nixgate zstd $Z s | nginx zstd $N s | nginx xz / nixgate $(python3 -c "print(round($X/$Z, 2))")x | nixgate / nginx zstd $(python3 -c "print(round($Z/$N, 2))")x"
done
echo "zstd bytes served: $(metric 'nixgate_served_nar_bytes_total{compression="zstd"}')"
echo "== cold, $ROUNDS rounds alternated (wall s): a fresh nixgate and a fresh nginx proxy_cache each"
for r in $(seq "$ROUNDS"); do
  RUST_LOG=warn "$NG" serve --listen 127.0.0.1:$((P5 + r)) --cache-dir "$D/ng-cold$r" --upstream http://127.0.0.1:$P1 \
    --trusted-public-key "$KEY" --no-torrent --no-mdns & pid=$!; PIDS+=($pid)
  wait_ok "http://127.0.0.1:$((P5 + r))/nix-cache-info"
  C=$(copy nginx-cold http://127.0.0.1:$((P4 + r))); G=$(copy nixgate-cold http://127.0.0.1:$((P5 + r)))
  Zc=$(curl -sf "http://127.0.0.1:$((P5 + r))/metrics" | awk '$1 == "nixgate_served_nar_bytes_total{compression=\"zstd\"}" { print $2 }')
  kill "$pid"
  echo "round $r: nginx proxy_cache cold $C s | nixgate cold $G s (sent $((${Zc%.*} / 1000000)) MB as zstd) | nginx / nixgate $(python3 -c "print(round($C/$G, 2))")x"
done
