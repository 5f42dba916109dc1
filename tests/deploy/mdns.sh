#!/usr/bin/env bash
# mDNS discovery test: an office LAN made of network namespaces on one bridge (multicast
# crosses it; loopback would not carry mDNS). Appliances A and B start without any --peer and
# find each other; B, whose upstream is down, serves a closure from A to real `nix copy`; the
# standard mDNS stack (avahi) sees both appliances with their TXT records, and a record
# published with avahi-publish is found by `nixgate discover`; a killed appliance leaves its
# peers' sets; a stopped one withdraws its record.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
. tests/deploy/lib.sh
need ip nix python3 cargo avahi-daemon avahi-browse avahi-publish dbus-daemon
[ "$(id -u)" -eq 0 ] || { echo "mDNS test needs root (network namespaces)" >&2; exit 1; }

cargo build --locked --quiet --bin nixgate
NIXGATE=$ROOT/target/debug/nixgate
temp_work nixgate-mdns   # WORK, removed on exit (lib.sh's trap also stops processes, deletes netns)
S=$$
LAN=ngm-lan-$S; A=ngm-a-$S; B=ngm-b-$S; C=ngm-c-$S; AV=ngm-av-$S; LONE=ngm-lone-$S
# Inside the namespaces only: never a kubernetes default, never the host's own bus.
unset KUBERNETES_SERVICE_HOST
export DBUS_SYSTEM_BUS_ADDRESS=unix:path=$WORK/bus

echo "== topology: five hosts on one bridge (10.78.0.0/24), one host alone"
add_netns $LAN $A $B $C $AV $LONE
add_bridge "$LAN" br0
i=2
for n in $A $B $C $AV; do
  add_veth "$n" "ngm$i-$S" "$LAN" "ngm$i-$S-b"
  ip -n "$LAN" link set "ngm$i-$S-b" master br0
  ip -n "$n" addr add "10.78.0.$i/24" dev "ngm$i-$S"
  ip -n "$n" route add default dev "ngm$i-$S"   # a route for 224.0.0.251
  i=$((i + 1))
done
A_IP=10.78.0.2 B_IP=10.78.0.3 C_IP=10.78.0.4 AV_IP=10.78.0.5

echo "== services"
make_cache "$WORK/fixture" > "$WORK/fixture.log" 2>&1 || { cat "$WORK/fixture.log"; exit 1; }
spawn ip netns exec "$A" python3 -m http.server --bind 127.0.0.1 --directory "$WORK/fixture/cache" 8999 > "$WORK/upstream.log" 2>&1
wait_http "http://127.0.0.1:8999/nix-cache-info" 10 ip netns exec "$A"

# appliance NS NAME UPSTREAM [FLAGS...]: a nixgate on NS:8080 with no --peer at all.
appliance() {
  local ns=$1 name=$2 up=$3; shift 3
  spawn ip netns exec "$ns" "$NIXGATE" serve --listen 0.0.0.0:8080 --cache-dir "$WORK/cache-$name" \
    --upstream "$up" --trusted-public-key "$KEY" --no-torrent --log-format json "$@" \
    > "$WORK/nixgate-$name.log" 2>&1
  eval "PID_$name=$!"
}
appliance "$A" a http://127.0.0.1:8999
appliance "$B" b http://127.0.0.1:1          # B's upstream is down
wait_http "http://$A_IP:8080/readyz" 20 ip netns exec "$A"
wait_http "http://$B_IP:8080/readyz" 20 ip netns exec "$B"

# peers NS IP: the peer URLs and origins an appliance lists, one "url origin state" per line.
peers() {
  ip netns exec "$1" python3 - "http://$2:8080/_p2p/v1/peers" <<'PY'
import json, sys, urllib.request
for p in json.load(urllib.request.urlopen(sys.argv[1], timeout=2))["peers"]:
    print(p["url"], p["origin"], p["state"])
PY
}
# wait_for SECS COMMAND...: polls until COMMAND succeeds; prints the seconds it took.
wait_for() {
  local secs=$1 start=$SECONDS; shift
  while ! "$@" >/dev/null 2>&1; do
    [ $((SECONDS - start)) -lt "$secs" ] || return 1
    sleep 0.2
  done
  echo "  ($*: $((SECONDS - start)) s)"
}
lists() { peers "$1" "$2" | grep -q "^http://$3:8080/ mdns ok$"; }
lacks() { local out; out=$(peers "$1" "$2") || return 1; ! grep -q "$3:8080" <<< "$out"; }

echo "== A and B find each other over mDNS (no --peer, no --peers-dns)"
check "A lists B (origin mdns) within 15 s" wait_for 15 lists "$A" $A_IP $B_IP
check "B lists A (origin mdns) within 15 s" wait_for 15 lists "$B" $B_IP $A_IP
check "A never lists itself" lacks "$A" $A_IP $A_IP
check "B never lists itself" lacks "$B" $B_IP $B_IP

echo "== B's upstream is down: a runner substitutes through B, served by its mDNS peer A"
check "warm A: nix copy through A" \
  ip netns exec "$C" bash -c "$(declare -f nix_copy_from); KEY='$KEY' nix_copy_from http://$A_IP:8080 '$WORK/warm' '$TOP' '$BLOB' 2> '$WORK/warm.log'"
check "nix copy through B (upstream down) succeeds" \
  ip netns exec "$C" bash -c "$(declare -f nix_copy_from); KEY='$KEY' nix_copy_from http://$B_IP:8080 '$WORK/client' '$TOP' '$BLOB' 2> '$WORK/client.log'"
check "the closure is valid in the runner's store" in_store "$WORK/client" "$DEP"
peer_bytes=$(ip netns exec "$B" python3 -c "
import urllib.request
for l in urllib.request.urlopen('http://$B_IP:8080/metrics').read().decode().splitlines():
    if l.startswith('nixgate_fetched_bytes_total{source=\"peer\"}'): print(int(float(l.split()[-1])))")
echo "  B fetched ${peer_bytes:-0} bytes from peers"
check "B's metrics count the bytes it fetched from its peer" test "${peer_bytes:-0}" -gt 2000000

echo "== the standard mDNS stack: avahi sees both appliances with their TXT records"
cat > "$WORK/dbus.conf" <<XML
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=$WORK/bus</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/> <allow own="*"/> <allow send_destination="*"/> <allow receive_sender="*"/>
  </policy>
</busconfig>
XML
cat > "$WORK/avahi.conf" <<CONF
[server]
use-ipv4=yes
use-ipv6=no
allow-interfaces=ngm5-$S
[wide-area]
enable-wide-area=no
[publish]
publish-hinfo=no
publish-workstation=no
CONF
spawn dbus-daemon --config-file="$WORK/dbus.conf" --nofork --nopidfile > "$WORK/dbus.log" 2>&1
wait_for 5 test -S "$WORK/bus"
spawn ip netns exec "$AV" avahi-daemon -f "$WORK/avahi.conf" --no-drop-root --no-chroot --no-rlimits > "$WORK/avahi.log" 2>&1
wait_for 10 ip netns exec "$AV" avahi-browse -pt _nixgate._tcp
browse() { ip netns exec "$AV" avahi-browse -rpt _nixgate._tcp 2>/dev/null; }
sees() { browse | grep '^=' | grep ";$1;" | grep -q '"v=1"'; }
check "avahi-browse resolves A with TXT v=1" wait_for 10 sees "$A_IP"
check "avahi-browse resolves B with TXT v=1" wait_for 10 sees "$B_IP"
browse | grep "^=" | grep ";$A_IP;" | head -1 | sed 's/^/  /'
check "A's TXT carries id= and path=/" bash -c "$(declare -f browse); AV=$AV; browse | grep ';$A_IP;' | grep -q '\"path=/\"' && browse | grep ';$A_IP;' | grep -Eq '\"id=[0-9a-f]{32}\"'"

echo "== a record published with avahi-publish is found by nixgate discover"
# D: an appliance that does not announce itself; avahi announces it for it.
spawn ip netns exec "$AV" "$NIXGATE" serve --listen "$AV_IP:8080" --cache-dir "$WORK/cache-d" \
  --upstream http://127.0.0.1:1 --trusted-public-key "$KEY" --no-torrent --no-mdns > "$WORK/nixgate-d.log" 2>&1
wait_http "http://$AV_IP:8080/readyz" 20 ip netns exec "$AV"
spawn ip netns exec "$AV" avahi-publish -s "avahi-published-nixgate" _nixgate._tcp 8080 v=1 path=/ id=0000000000000000000000000000d00d > "$WORK/avahi-publish.log" 2>&1
discover() { ip netns exec "$C" "$NIXGATE" discover "$@"; }
has_d() { discover --timeout 2s --format url | grep -qx "http://$AV_IP:8080"; }
check "discover lists the avahi-published appliance" wait_for 15 has_d
discover --timeout 3s --format json > "$WORK/discover.json" 2> "$WORK/discover.err" || true
check "discover --format json names the avahi instance" grep -q '"instance": "avahi-published-nixgate._nixgate._tcp.local."' "$WORK/discover.json"
discover --timeout 3s > "$WORK/discover.conf" 2>&1 || true
sed 's/^/  /' "$WORK/discover.conf"
check "discover prints one extra-substituters line with A, B and D" \
  bash -c "grep -c . '$WORK/discover.conf' | grep -qx 1 && grep -q '^extra-substituters = http://' '$WORK/discover.conf' && grep -q 'http://$A_IP:8080' '$WORK/discover.conf' && grep -q 'http://$B_IP:8080' '$WORK/discover.conf' && grep -q 'http://$AV_IP:8080' '$WORK/discover.conf'"
check "A's peer set also gains the avahi-published appliance" wait_for 15 lists "$A" $A_IP $AV_IP
refute "discover on a host with no appliance around exits non-zero" \
  ip netns exec "$LONE" "$NIXGATE" discover --timeout 1s
ip netns exec "$LONE" "$NIXGATE" discover --timeout 1s 2> "$WORK/lone.err" || true
check "... and says why" grep -q "no nixgate appliance found: nothing announced" "$WORK/lone.err"
ip netns exec "$LONE" "$NIXGATE" discover --timeout 1s -o json > "$WORK/lone.json" 2>/dev/null || true
check "discover -o json prints [] when none answered" python3 -c 'import json,sys; sys.exit(json.load(open(sys.argv[1])) != [])' "$WORK/lone.json"

echo "== a killed appliance leaves its peers' sets; a stopped one withdraws its record"
kill -9 "$PID_b"
check "A drops the killed B within 15 s" wait_for 15 lacks "$A" $A_IP $B_IP
only_a_d() { local out; out=$(discover --timeout 2s --format url) || return 1; grep -q "$A_IP" <<< "$out" && ! grep -q "$B_IP" <<< "$out"; }
check "discover lists A but no longer the killed B" only_a_d
kill -TERM "$PID_a"
check "A exits cleanly on SIGTERM" wait_for 10 bash -c "! kill -0 $PID_a 2>/dev/null"
A_ID8=$(cut -c1-8 "$WORK/cache-a/peer-id")
withdrawn() {
  local out; out=$(ip netns exec "$AV" avahi-browse -pt _nixgate._tcp 2>/dev/null) || return 1
  grep -q avahi-published-nixgate <<< "$out" && ! grep -q "nixgate-.*-$A_ID8" <<< "$out"
}
check "A's record is withdrawn (goodbye): avahi drops it within 5 s" wait_for 5 withdrawn
check "A logged the withdrawal" grep -q "mDNS announcement withdrawn" "$WORK/nixgate-a.log"
summary
