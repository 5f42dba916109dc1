#!/usr/bin/env bash
# Fleet egress benchmark, all on 127.0.0.1, with real `nix copy`. Usage: bench/egress.sh
# (bench/run.sh runs it too). Needs nix, nginx, curl, python3 (installed here if missing, Debian).
#
#  1. A closure of 30 store paths (29 leaves of 45 KB..1.3 MB of random bytes, ~19.6 MB, and
#     a top path referencing them) in a signed file:// cache (compression none), served by
#     nginx as the upstream; its access log counts narinfo requests and NAR bytes sent.
#  2. K = 1, 2, 3, 5 appliances on fixed ports, each with the others as `--peer` (--no-mdns,
#     --no-torrent), fresh caches per scenario; fleet mode waits until every member sees
#     K-1 owners in /_p2p/v1/peers. The same with `--no-fleet` (peers only as fallback).
#  3. Scenarios: seq (runner i through appliance i mod K, one after another, K runners),
#     conc (K runners at once, one per appliance), and for K=5 conc15 (15 runners at once).
#     Reported: upstream NAR bytes / unique NAR bytes, upstream narinfo requests / unique
#     paths, wall time from the first runner's start to the last runner's completion.
#  4. First byte of a narinfo (2-member fleet, curl time_starttransfer, median of 50):
#     a local hit versus a miss at the non-owner whose owner already holds it (50 different
#     paths, each asked once at the non-owner; the owner's fleet-request counter tells which).
#     `HOP_ONLY=1 bench/egress.sh` measures only this.
set -euo pipefail
cd "$(dirname "$0")/.."
for t in nginx curl nix python3; do
  command -v $t >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx curl nix-bin python3; break; }
done
BASE=${EGRESS_PORT:-18300}          # nginx on BASE, appliance i on BASE+1+i
cargo build --release --quiet --bin nixgate
NG=${CARGO_TARGET_DIR:-$PWD/target}/release/nixgate
D=$(mktemp -d /tmp/nixgate-egress.XXXX)
MEMBERS=()
NGINX=
stop_members() { for p in "${MEMBERS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${MEMBERS[@]}"; do wait "$p" 2>/dev/null || true; done; MEMBERS=(); }
cleanup() { stop_members; [ -n "$NGINX" ] && kill "$NGINX" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$D"; }
trap cleanup EXIT
export NIX_CONFIG='experimental-features = nix-command
sandbox = false
build-users-group =
substituters =
narinfo-cache-negative-ttl = 0'
wait_ok() { for _ in $(seq 100); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done; echo "no answer: $1" >&2; return 1; }

echo "== fixture: 30-path closure of random bytes, 150 tiny probe paths, signed cache"
cat > "$D/t.nix" <<'NIX'
let mk = name: script: derivation { inherit name; system = builtins.currentSystem;
      builder = "/bin/sh"; PATH = "/usr/bin:/bin"; args = [ "-c" script ]; };
    leaves = builtins.genList (i: mk "nixgate-egress-leaf-${toString (i + 1)}"
      "head -c ${toString ((i + 1) * 45000)} /dev/urandom > $out") 29;
in { top = mk "nixgate-egress-top" "echo ${toString leaves} > $out";
     probes = builtins.genList (i: mk "nixgate-egress-probe-${toString i}" "echo ${toString i} > $out") 150; }
NIX
nix key generate-secret --key-name nixgate-egress-1 > "$D/sk"
KEY=$(nix key convert-secret-to-public < "$D/sk")
TOP=$(nix-build "$D/t.nix" -A top --no-out-link 2>/dev/null)
mapfile -t PROBES < <(nix-build "$D/t.nix" -A probes --no-out-link 2>/dev/null)
nix copy --to "file://$D/cache?secret-key=$D/sk&compression=none" "$TOP" "${PROBES[@]}" 2>/dev/null
mapfile -t CLOSURE < <(nix path-info -r "$TOP")
UNIQ_PATHS=${#CLOSURE[@]}
UNIQ_BYTES=0
for p in "${CLOSURE[@]}"; do
  n=$(sed -n 's/^FileSize: //p' "$D/cache/$(basename "$p" | cut -c1-32).narinfo")
  UNIQ_BYTES=$((UNIQ_BYTES + n))
done
echo "closure: $UNIQ_PATHS paths, $UNIQ_BYTES NAR bytes"

mkdir -p "$D/tmp"
cat > "$D/nginx.conf" <<NGX
user root; daemon off; worker_processes 1; pid $D/nginx.pid; error_log $D/nginx.err;
events { worker_connections 1024; }
http { log_format eg '\$uri \$status \$body_bytes_sent'; access_log $D/up.log eg;
  sendfile on; client_body_temp_path $D/tmp; proxy_temp_path $D/tmp;
  fastcgi_temp_path $D/tmp; uwsgi_temp_path $D/tmp; scgi_temp_path $D/tmp;
  server { listen 127.0.0.1:$BASE; root $D/cache; } }
NGX
nginx -c "$D/nginx.conf" & NGINX=$!
wait_ok "http://127.0.0.1:$BASE/nix-cache-info"

url() { echo "http://127.0.0.1:$((BASE + 1 + $1))"; }
owners() { curl -sf "$(url "$1")/_p2p/v1/peers" | python3 -c 'import json,sys; print(sum(1 for p in json.load(sys.stdin)["peers"] if p.get("owner")))' 2>/dev/null || echo 0; }
# start_fleet K MODE: K fresh members, each with the others as --peer; MODE fleet|nofleet.
start_fleet() {
  local k=$1 mode=$2 i j
  rm -rf "$D/m"; mkdir -p "$D/m"
  for ((i = 0; i < k; i++)); do
    local args=()
    for ((j = 0; j < k; j++)); do [ $j -ne $i ] && args+=(--peer "$(url $j)"); done
    [ "$mode" = nofleet ] && args+=(--no-fleet)
    RUST_LOG=warn,nixgate::fetch::nar::fleet=info "$NG" serve --listen "127.0.0.1:$((BASE + 1 + i))" --cache-dir "$D/m/$i" \
      --upstream "http://127.0.0.1:$BASE" --trusted-public-key "$KEY" --no-mdns --no-torrent \
      "${args[@]}" > "$D/m/$i.log" 2>&1 &
    MEMBERS+=($!)
  done
  for ((i = 0; i < k; i++)); do
    wait_ok "$(url $i)/readyz"
    [ "$mode" = fleet ] || continue
    for _ in $(seq 100); do [ "$(owners $i)" -eq $((k - 1)) ] && break; sleep 0.1; done
    [ "$(owners $i)" -eq $((k - 1)) ] || { echo "member $i never saw $((k - 1)) owners" >&2; exit 1; }
  done
}
# runner N MEMBER: nix copy of the closure into a fresh store through member MEMBER.
runner() {
  local dest=$D/r/$1
  mkdir -p "$dest"
  XDG_CACHE_HOME=$dest/xdg nix copy --from "$(url "$2")" --to "$dest/root" \
    --option trusted-public-keys "$KEY" "$TOP" 2> "$dest.err" || { echo "runner $1 failed:" >&2; cat "$dest.err" >&2; return 1; }
}
# scenario K MODE NAME RUNNERS CONCURRENT: one row of the results.
scenario() {
  local k=$1 mode=$2 name=$3 n=$4 conc=$5 i pids=() fail=0
  start_fleet "$k" "$mode"
  rm -rf "$D/r"; local from; from=$(wc -l < "$D/up.log")
  local t0; t0=$(date +%s.%N)
  for ((i = 0; i < n; i++)); do
    if [ "$conc" = 1 ]; then runner $i $((i % k)) & pids+=($!); else runner $i $((i % k)); fi
  done
  for p in "${pids[@]}"; do wait "$p" || fail=1; done
  local t1; t1=$(date +%s.%N)
  [ $fail = 0 ] || exit 1
  local fleet=0
  for ((i = 0; i < k; i++)); do
    fleet=$((fleet + $(curl -sf "$(url $i)/metrics" | awk '/^nixgate_fetched_bytes_total\{source="fleet"\}/ {s += $2} END {printf "%d", s}')))
  done
  stop_members
  local dup; dup=$(tail -n +$((from + 1)) "$D/up.log" | awk '$1 ~ /^\/nar\// {c[$1]++} END {for (u in c) if (c[u] > 1) d++; print d + 0}')
  if [ "$mode" = fleet ] && [ "$dup" -gt 0 ]; then
    echo "  $dup NARs fetched more than once; members' warnings and failed fleet asks:" >&2
    grep -hiE "warn|fleet owner failed" "$D"/m/*.log | sed -E 's/^.*(WARN|INFO)/  \1/; s/file_hash=[^ ]+ //' | sort | uniq -c | sort -rn | head -5 >&2 || true
  fi
  tail -n +$((from + 1)) "$D/up.log" | awk -v k="$k" -v m="$mode" -v s="$name" -v n="$n" -v ub="$UNIQ_BYTES" \
    -v up="$UNIQ_PATHS" -v t="$(python3 -c "print($t1 - $t0)")" -v fl="$fleet" -v dup="$dup" '
    $1 ~ /\.narinfo$/ {ni++} $1 ~ /^\/nar\// {nb += $3; nn++}
    END {printf "%s %s %s %d %.3f %.3f %.2f %d %d %d %d\n", k, s, m, n, nb / ub, ni / up, t, nb, ni, fl, dup}' >> "$D/results"
  tail -1 "$D/results"
}

echo "== scenarios (columns: K scenario mode runners NARx narinfox wall_s nar_bytes narinfo_reqs fleet_bytes NARs_fetched_twice)"
# HOP_ONLY=1 skips the scenarios (for measuring the owner hop alone).
[ "${HOP_ONLY:-0}" = 1 ] || for k in 1 2 3 5; do
  for mode in fleet nofleet; do
    scenario $k $mode seq $k 0
    scenario $k $mode conc $k 1
    [ $k = 5 ] && scenario $k $mode conc15 15 1
  done
done

echo "== first byte of a narinfo: local hit vs miss at the non-owner (2-member fleet)"
start_fleet 2 fleet
served() { curl -sf "$(url "$1")/metrics" | awk '/^nixgate_fleet_requests_served_total/ {print $2}'; }
ttfb() { curl -sf -o /dev/null -w '%{time_starttransfer}\n' "$1"; }
hashes=(); for p in "${PROBES[@]}"; do hashes+=("$(basename "$p" | cut -c1-32)"); done
# Member 0 asks for every probe: it holds all of them; member 1 holds the ones it owns. The
# ones member 0 owns come straight from the upstream (member 1 served nothing): timed too.
: > "$D/upmiss"
for h in "${hashes[@]}"; do
  before=$(served 1); t=$(ttfb "$(url 0)/$h.narinfo"); after=$(served 1)
  [ "$after" -eq "$before" ] && echo "$t" >> "$D/upmiss"
done
: > "$D/miss"; OWNED0=()
for h in "${hashes[@]}"; do
  [ ${#OWNED0[@]} -ge 50 ] && break
  before=$(served 0); t=$(ttfb "$(url 1)/$h.narinfo"); after=$(served 0)
  [ "$after" -gt "$before" ] && { echo "$t" >> "$D/miss"; OWNED0+=("$h"); }
done
[ ${#OWNED0[@]} -ge 50 ] || { echo "only ${#OWNED0[@]} probes owned by member 0" >&2; exit 1; }
for h in "${OWNED0[@]}"; do ttfb "$(url 1)/$h.narinfo"; done > "$D/hit"
stop_members

echo "load average: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores"
python3 - "$D/results" "$D/hit" "$D/miss" "$D/upmiss" "$UNIQ_PATHS" "$UNIQ_BYTES" <<'PY'
import sys, statistics as st
res, hit, miss, upmiss, paths, nbytes = sys.argv[1:]
rows = {}
for l in open(res) if __import__("os").path.exists(res) else []:
    k, s, m, n, nar, ni, t, *_ = l.split()
    rows.setdefault((int(k), s, int(n)), {})[m] = (float(nar), float(ni), float(t))
if rows: print(f"\nclosure: {paths} paths, {int(nbytes)/1e6:.1f} MB of NARs (upstream bytes and requests per unique)")
if rows: print("| K | scenario | runners | fleet NAR × | fleet narinfo × | fleet wall s | no-fleet NAR × | no-fleet narinfo × | no-fleet wall s | egress saved |")
if rows: print("|---|---|---|---|---|---|---|---|---|---|")
order = {"seq": 0, "conc": 1, "conc15": 2}
for (k, s, n), r in sorted(rows.items(), key=lambda kv: (kv[0][0], order[kv[0][1]])):
    f, o = r["fleet"], r["nofleet"]
    print(f"| {k} | {s} | {n} | {f[0]:.2f} | {f[1]:.2f} | {f[2]:.2f} | {o[0]:.2f} | {o[1]:.2f} | {o[2]:.2f} | {o[0]/f[0]:.2f}x |")
h, m, u = ([float(x) * 1000 for x in open(f)] for f in (hit, miss, upmiss))
q = lambda v: f"median {st.median(v):.3f} ms, p90 {sorted(v)[int(len(v) * .9)]:.3f} ms"
print(f"\nnarinfo first byte, {len(h)} samples each (50 different paths, each a miss once at the non-owner):")
print(f"  local hit:                          {q(h)}")
print(f"  miss at non-owner, owner holds it:  {q(m)}")
print(f"  (miss at the owner, from the upstream, {len(u)} paths: {q(u)})")
print(f"  cost of the owner hop:              {st.median(m) - st.median(h):+.3f} ms (goal <= 2 ms)")
PY
