#!/usr/bin/env bash
# Firewall test: five network namespaces play runner, gateway, appliance, outside world
# (upstream cache + DNS) and a peer appliance. The gateway loads firewall-rules/nixgate.nft
# (then, in a second round, nixgate.iptables.sh) with this topology's addresses, and we prove:
# a runner substitutes a closure through the appliance with real `nix copy`, while its direct
# connections to the upstream, DNS, other ports and peers are dropped; the appliance reaches
# only the upstream port, DNS and peers. Before the rules load, the same direct access works,
# so every "dropped" below is the rule set's doing.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
. tests/deploy/lib.sh
need ip nft iptables nix python3 cargo
[ "$(id -u)" -eq 0 ] || { echo "firewall test needs root (network namespaces)" >&2; exit 1; }

cargo build --locked --quiet --bin nixgate
NIXGATE=$ROOT/target/debug/nixgate
temp_work nixgate-fw   # WORK, removed on exit (lib.sh's trap also stops processes, deletes netns)
S=$$   # suffix keeping names unique
GW=ngfw-gw-$S; RUN=ngfw-run-$S; APP=ngfw-app-$S; OUT=ngfw-out-$S; PEER=ngfw-peer-$S

echo "== topology"
add_netns $GW $RUN $APP $OUT $PEER
ip netns exec "$GW" sysctl -qw net.ipv4.ip_forward=1
i=1
for n in $RUN $APP $OUT $PEER; do
  add_veth "$n" "ngfw$i-$S" "$GW" "ngfw$i-$S-g"
  ip -n "$n" addr add "10.77.$i.2/24" dev "ngfw$i-$S"
  ip -n "$GW" addr add "10.77.$i.1/24" dev "ngfw$i-$S-g"
  ip -n "$n" route add default via "10.77.$i.1"
  i=$((i + 1))
done
RUNNER_IP=10.77.1.2 APP_IP=10.77.2.2 OUT_IP=10.77.3.2 PEER_IP=10.77.4.2

# Listeners that accept TCP connections and echo UDP datagrams on the given ports.
cat > "$WORK/listen.py" <<'PY'
import socket, sys, threading
host = sys.argv[1]
def tcp(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port)); s.listen()
    while True:
        c, _ = s.accept(); c.close()
def udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((host, port))
    while True:
        d, a = s.recvfrom(512); s.sendto(d, a)
for spec in sys.argv[2:]:
    proto, port = spec.split("/")
    threading.Thread(target=tcp if proto == "tcp" else udp, args=(int(port),), daemon=True).start()
threading.Event().wait()
PY
cat > "$WORK/probe.py" <<'PY'
import socket, sys
proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    if proto == "tcp":
        socket.create_connection((host, port), timeout=1.5).close()
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1.5)
        s.sendto(b"ping", (host, port)); s.recvfrom(512)
except OSError:
    sys.exit(1)
PY
# can NS PROTO HOST PORT: a connection (tcp) or an echoed datagram (udp) gets through.
can() { ip netns exec "$1" python3 "$WORK/probe.py" "$2" "$3" "$4"; }

echo "== services"
make_cache "$WORK/fixture" > "$WORK/fixture.log" 2>&1 || { cat "$WORK/fixture.log"; exit 1; }
# The outside world: an upstream cache (plain HTTP on port 443 is enough to test the port
# rule), a DNS-port echo, and other ports that must stay unreachable.
spawn ip netns exec "$OUT" python3 -m http.server --bind "$OUT_IP" --directory "$WORK/fixture/cache" 443 > "$WORK/upstream.log" 2>&1
spawn ip netns exec "$OUT" python3 "$WORK/listen.py" "$OUT_IP" tcp/80 tcp/22 udp/53 tcp/53
spawn ip netns exec "$APP" python3 "$WORK/listen.py" "$APP_IP" tcp/22 tcp/6881 udp/6881
spawn ip netns exec "$PEER" python3 "$WORK/listen.py" "$PEER_IP" tcp/8080 tcp/6881 udp/6881 tcp/22
spawn ip netns exec "$RUN" python3 "$WORK/listen.py" "$RUNNER_IP" tcp/22
wait_http "http://$OUT_IP:443/nix-cache-info" 10 ip netns exec "$OUT"
# start_appliance NAME: a nixgate with an empty cache, so each round fetches from upstream
# through the rules under test.
start_appliance() {
  [ -z "${APP_PID:-}" ] || stop_pid "$APP_PID"
  spawn ip netns exec "$APP" "$NIXGATE" serve --listen "$APP_IP:8080" --cache-dir "$WORK/cache-$1" \
    --upstream "http://$OUT_IP:443" --trusted-public-key "$KEY" --no-mdns --no-torrent \
    > "$WORK/nixgate-$1.log" 2>&1
  APP_PID=$!
  wait_http "http://$APP_IP:8080/readyz" 20 ip netns exec "$APP"
}

echo "== without rules, the runner reaches everything (so the drops below are the rules')"
check "runner -> upstream:443 open without rules" can "$RUN" tcp $OUT_IP 443
check "runner -> DNS:53/udp open without rules" can "$RUN" udp $OUT_IP 53
check "runner -> peer:8080 open without rules" can "$RUN" tcp $PEER_IP 8080

assert_policy() {
  local what=$1 dest=$WORK/client-$1
  check "$what: runner -> appliance:8080 allowed" can "$RUN" tcp $APP_IP 8080
  check "$what: runner substitutes a closure through the appliance (nix copy)" \
    ip netns exec "$RUN" bash -c "$(declare -f nix_copy_from); KEY='$KEY' nix_copy_from http://$APP_IP:8080 '$dest' '$TOP' '$BLOB' 2> '$dest.log'"
  check "$what: the closure is valid in the runner's store" in_store "$dest" "$DEP"
  refute "$what: runner -> upstream:443 dropped" can "$RUN" tcp $OUT_IP 443
  refute "$what: runner -> upstream:80 dropped" can "$RUN" tcp $OUT_IP 80
  refute "$what: runner -> DNS:53/udp dropped" can "$RUN" udp $OUT_IP 53
  refute "$what: runner -> appliance:22 dropped" can "$RUN" tcp $APP_IP 22
  refute "$what: runner -> peer:8080 dropped" can "$RUN" tcp $PEER_IP 8080
  refute "$what: outside -> runner:22 dropped" can "$OUT" tcp $RUNNER_IP 22
  check "$what: appliance -> upstream:443 allowed" can "$APP" tcp $OUT_IP 443
  refute "$what: appliance -> upstream:80 dropped" can "$APP" tcp $OUT_IP 80
  check "$what: appliance -> DNS:53/udp allowed" can "$APP" udp $OUT_IP 53
  check "$what: appliance -> DNS:53/tcp allowed" can "$APP" tcp $OUT_IP 53
  check "$what: appliance -> peer:6881/tcp allowed" can "$APP" tcp $PEER_IP 6881
  check "$what: appliance -> peer:6881/udp allowed" can "$APP" udp $PEER_IP 6881
  check "$what: appliance -> peer:8080 (peer API) allowed" can "$APP" tcp $PEER_IP 8080
  refute "$what: appliance -> peer:22 dropped" can "$APP" tcp $PEER_IP 22
  check "$what: peer -> appliance:6881 allowed" can "$PEER" tcp $APP_IP 6881
  check "$what: peer -> appliance:8080 allowed" can "$PEER" tcp $APP_IP 8080
  refute "$what: peer -> appliance:22 dropped" can "$PEER" tcp $APP_IP 22
}

echo "== nftables: firewall-rules/nixgate.nft with this topology's addresses"
# Replace exactly the site variables; a new variable in the file that this test does not set
# fails here instead of being tested with a placeholder.
sed -E \
  -e "s|^define RUNNERS += .*|define RUNNERS = { $RUNNER_IP }|" \
  -e "s|^define APPLIANCES += .*|define APPLIANCES = { $APP_IP }|" \
  -e "s|^define UPSTREAMS += .*|define UPSTREAMS = { $OUT_IP }|" \
  -e "s|^define DNS_SERVERS += .*|define DNS_SERVERS = { $OUT_IP }|" \
  -e "s|^define PEERS += .*|define PEERS = { $PEER_IP }|" \
  firewall-rules/nixgate.nft > "$WORK/site.nft"
check "every site variable of nixgate.nft is set by this test" \
  test "$(grep -c '^define' "$WORK/site.nft")" = "$(grep -cE '^define (RUNNERS|APPLIANCES|UPSTREAMS|DNS_SERVERS|PEERS|HTTP_PORT|TORRENT_PORT|UPSTREAM_PORT) ' "$WORK/site.nft")"
start_appliance nft
check "nixgate.nft loads" ip netns exec "$GW" nft -f "$WORK/site.nft"
check "nixgate.nft loads a second time (idempotent)" ip netns exec "$GW" nft -f "$WORK/site.nft"
assert_policy nft
check "nft counted the dropped runner connections" \
  bash -c "ip netns exec $GW nft list chain inet nixgate forward | grep 'saddr @runners counter' | grep -vq 'packets 0 '"
ip netns exec "$GW" nft delete table inet nixgate
check "with the table deleted, direct access works again" can "$RUN" tcp $OUT_IP 443

echo "== iptables: firewall-rules/nixgate.iptables.sh"
site_env=(RUNNERS=$RUNNER_IP APPLIANCES=$APP_IP UPSTREAMS=$OUT_IP DNS_SERVERS=$OUT_IP PEERS=$PEER_IP)
start_appliance iptables
check "nixgate.iptables.sh applies" ip netns exec "$GW" env "${site_env[@]}" sh firewall-rules/nixgate.iptables.sh
check "nixgate.iptables.sh applies a second time (idempotent)" ip netns exec "$GW" env "${site_env[@]}" sh firewall-rules/nixgate.iptables.sh
check "FORWARD jumps to NIXGATE exactly once" test "$(ip netns exec "$GW" iptables -S FORWARD | grep -c -- '-j NIXGATE')" = 1
assert_policy iptables
summary
