#!/usr/bin/env bash
# Firewall test: six network namespaces play runner, gateway, appliance, outside world
# (upstream cache + DNS), a peer appliance and a monitoring host, each with an IPv4 and an
# IPv6 address. The gateway loads firewall-rules/nixgate.nft (then, in a second round,
# nixgate.iptables.sh, which sets up iptables and ip6tables) with this topology's addresses,
# and we prove, over IPv4 and IPv6: a runner substitutes a closure through the appliance with
# real `nix copy`, while its direct connections to the upstream, DNS, other ports and peers
# are dropped; the appliance reaches only the upstream port, DNS and peers; monitoring reaches
# only the appliance's HTTP port. Before the rules load, the same direct access works, so
# every "dropped" below is the rule set's doing. Also: the drop log is rate-limited (a flood
# of dropped packets is all counted, at most the burst logged), nixgate.nft's example
# addresses are documentation prefixes (inert when loaded unedited), and the iptables script
# refuses to run with example addresses.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
. tests/deploy/lib.sh
need ip nft iptables ip6tables nix python3 cargo
[ "$(id -u)" -eq 0 ] || { echo "firewall test needs root (network namespaces)" >&2; exit 1; }

cargo build --locked --quiet --bin nixgate
NIXGATE=$ROOT/target/debug/nixgate
temp_work nixgate-fw   # WORK, removed on exit (lib.sh's trap also stops processes, deletes netns)
S=$$   # suffix keeping names unique
GW=ngfw-gw-$S; RUN=ngfw-run-$S; APP=ngfw-app-$S; OUT=ngfw-out-$S; PEER=ngfw-peer-$S; MON=ngfw-mon-$S

echo "== topology"
add_netns $GW $RUN $APP $OUT $PEER $MON
ip netns exec "$GW" sysctl -qw net.ipv4.ip_forward=1
ip netns exec "$GW" sysctl -qw net.ipv6.conf.all.forwarding=1
i=1
for n in $RUN $APP $OUT $PEER $MON; do
  add_veth "$n" "ngfw$i-$S" "$GW" "ngfw$i-$S-g"
  ip -n "$n" addr add "10.77.$i.2/24" dev "ngfw$i-$S"
  ip -n "$GW" addr add "10.77.$i.1/24" dev "ngfw$i-$S-g"
  ip -n "$n" route add default via "10.77.$i.1"
  ip -n "$n" addr add "fd77:$i::2/64" dev "ngfw$i-$S" nodad
  ip -n "$GW" addr add "fd77:$i::1/64" dev "ngfw$i-$S-g" nodad
  ip -n "$n" -6 route add default via "fd77:$i::1"
  i=$((i + 1))
done
RUNNER_IP=10.77.1.2 APP_IP=10.77.2.2 OUT_IP=10.77.3.2 PEER_IP=10.77.4.2 MON_IP=10.77.5.2
RUNNER_IP6=fd77:1::2 APP_IP6=fd77:2::2 OUT_IP6=fd77:3::2 PEER_IP6=fd77:4::2 MON_IP6=fd77:5::2

# Listeners that accept TCP connections and echo UDP datagrams on the given ports, on each of
# the comma-separated addresses (IPv4 or IPv6).
cat > "$WORK/listen.py" <<'PY'
import socket, sys, threading
def fam(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET
def tcp(host, port):
    s = socket.socket(fam(host)); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port)); s.listen()
    while True:
        c, _ = s.accept(); c.close()
def udp(host, port):
    s = socket.socket(fam(host), socket.SOCK_DGRAM); s.bind((host, port))
    while True:
        d, a = s.recvfrom(512); s.sendto(d, a)
for host in sys.argv[1].split(","):
    for spec in sys.argv[2:]:
        proto, port = spec.split("/")
        threading.Thread(target=tcp if proto == "tcp" else udp, args=(host, int(port)), daemon=True).start()
threading.Event().wait()
PY
cat > "$WORK/probe.py" <<'PY'
import socket, sys
proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    if proto == "tcp":
        socket.create_connection((host, port), timeout=1.5).close()
    else:
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1.5)
        s.sendto(b"ping", (host, port)); s.recvfrom(512)
except OSError:
    sys.exit(1)
PY
# flood.py HOST PORT N: N UDP datagrams, each from a new socket (a new flow), no waiting.
cat > "$WORK/flood.py" <<'PY'
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for _ in range(n):
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"x", (host, port)); s.close()
PY
# can NS PROTO HOST PORT: a connection (tcp) or an echoed datagram (udp) gets through.
can() { ip netns exec "$1" python3 "$WORK/probe.py" "$2" "$3" "$4"; }

echo "== services"
make_cache "$WORK/fixture" > "$WORK/fixture.log" 2>&1 || { cat "$WORK/fixture.log"; exit 1; }
# The outside world: an upstream cache (plain HTTP on port 443 is enough to test the port
# rule), a DNS-port echo, and other ports that must stay unreachable.
spawn ip netns exec "$OUT" python3 -m http.server --bind "$OUT_IP" --directory "$WORK/fixture/cache" 443 > "$WORK/upstream.log" 2>&1
spawn ip netns exec "$OUT" python3 "$WORK/listen.py" "$OUT_IP,$OUT_IP6" tcp/80 tcp/22 udp/53 tcp/53
spawn ip netns exec "$OUT" python3 "$WORK/listen.py" "$OUT_IP6" tcp/443
spawn ip netns exec "$APP" python3 "$WORK/listen.py" "$APP_IP,$APP_IP6" tcp/22 tcp/6881 udp/6881
spawn ip netns exec "$PEER" python3 "$WORK/listen.py" "$PEER_IP,$PEER_IP6" tcp/8080 tcp/6881 udp/6881 tcp/22
spawn ip netns exec "$RUN" python3 "$WORK/listen.py" "$RUNNER_IP,$RUNNER_IP6" tcp/22
wait_http "http://$OUT_IP:443/nix-cache-info" 10 ip netns exec "$OUT"
# start_appliance NAME: a nixgate with an empty cache, so each round fetches from upstream
# through the rules under test.
start_appliance() {
  [ -z "${APP_PID:-}" ] || stop_pid "$APP_PID"
  spawn ip netns exec "$APP" "$NIXGATE" serve --listen "[::]:8080" --cache-dir "$WORK/cache-$1" \
    --upstream "http://$OUT_IP:443" --trusted-public-key "$KEY" --no-mdns --no-torrent \
    > "$WORK/nixgate-$1.log" 2>&1
  APP_PID=$!
  wait_http "http://$APP_IP:8080/readyz" 20 ip netns exec "$APP"
}

echo "== without rules, the runner reaches everything (so the drops below are the rules')"
check "runner -> upstream:443 open without rules" can "$RUN" tcp $OUT_IP 443
check "runner -> DNS:53/udp open without rules" can "$RUN" udp $OUT_IP 53
check "runner -> peer:8080 open without rules" can "$RUN" tcp $PEER_IP 8080
check "runner -> upstream [IPv6]:443 open without rules" can "$RUN" tcp $OUT_IP6 443
check "runner -> DNS [IPv6]:53/udp open without rules" can "$RUN" udp $OUT_IP6 53
check "runner -> peer [IPv6]:8080 open without rules" can "$RUN" tcp $PEER_IP6 8080
check "monitoring -> appliance:22 open without rules" can "$MON" tcp $APP_IP 22

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
  check "$what: monitoring -> appliance:8080 (/metrics) allowed" can "$MON" tcp $APP_IP 8080
  refute "$what: monitoring -> appliance:22 dropped" can "$MON" tcp $APP_IP 22
  # The same over IPv6.
  check "$what: [IPv6] runner -> appliance:8080 allowed" can "$RUN" tcp $APP_IP6 8080
  check "$what: [IPv6] runner substitutes a closure through the appliance (nix copy)" \
    ip netns exec "$RUN" bash -c "$(declare -f nix_copy_from); KEY='$KEY' nix_copy_from 'http://[$APP_IP6]:8080' '$dest-v6' '$TOP' 2> '$dest-v6.log'"
  check "$what: [IPv6] the closure is valid in the runner's store" in_store "$dest-v6" "$DEP"
  refute "$what: [IPv6] runner -> upstream:443 dropped" can "$RUN" tcp $OUT_IP6 443
  refute "$what: [IPv6] runner -> DNS:53/udp dropped" can "$RUN" udp $OUT_IP6 53
  refute "$what: [IPv6] runner -> appliance:22 dropped" can "$RUN" tcp $APP_IP6 22
  refute "$what: [IPv6] runner -> peer:8080 dropped" can "$RUN" tcp $PEER_IP6 8080
  refute "$what: [IPv6] outside -> runner:22 dropped" can "$OUT" tcp $RUNNER_IP6 22
  check "$what: [IPv6] appliance -> upstream:443 allowed" can "$APP" tcp $OUT_IP6 443
  refute "$what: [IPv6] appliance -> upstream:80 dropped" can "$APP" tcp $OUT_IP6 80
  check "$what: [IPv6] appliance -> DNS:53/udp allowed" can "$APP" udp $OUT_IP6 53
  check "$what: [IPv6] appliance -> DNS:53/tcp allowed" can "$APP" tcp $OUT_IP6 53
  check "$what: [IPv6] appliance -> peer:6881/tcp allowed" can "$APP" tcp $PEER_IP6 6881
  check "$what: [IPv6] appliance -> peer:6881/udp allowed" can "$APP" udp $PEER_IP6 6881
  refute "$what: [IPv6] appliance -> peer:22 dropped" can "$APP" tcp $PEER_IP6 22
  check "$what: [IPv6] peer -> appliance:8080 allowed" can "$PEER" tcp $APP_IP6 8080
  refute "$what: [IPv6] peer -> appliance:22 dropped" can "$PEER" tcp $APP_IP6 22
  check "$what: [IPv6] monitoring -> appliance:8080 allowed" can "$MON" tcp $APP_IP6 8080
  refute "$what: [IPv6] monitoring -> appliance:22 dropped" can "$MON" tcp $APP_IP6 22
}

# assert_rate_limited WHAT COUNT_CMD: a flood of 200 dropped datagrams from the runner is
# dropped in full, but logged at most a burst's worth (20, plus a refill or two). COUNT_CMD
# RULE prints the packet counter of the runner's "log" or "drop" rule.
assert_rate_limited() {
  local what=$1 count=$2 log0 drop0 log1 drop1
  log0=$($count log); drop0=$($count drop)
  ip netns exec "$RUN" python3 "$WORK/flood.py" "$OUT_IP" 53 200
  sleep 0.2
  log1=$($count log); drop1=$($count drop)
  echo "   $what: flood of 200: log rule +$((log1 - log0)) (total $log1), drop rule +$((drop1 - drop0))"
  check "$what: every flooded packet was dropped" test $((drop1 - drop0)) -ge 200
  check "$what: the drop log is rate-limited (at most ~a burst of 20 logged of 200)" test $((log1 - log0)) -le 22
  check "$what: the log rule does log (the limit is not a drop-everything)" test "$log1" -ge 1
}
nft_count() {  # log|drop: the counter of the runner's IPv4 rule
  local pat; [ "$1" = log ] && pat='ip saddr @runners limit rate' || pat='ip saddr @runners counter'
  ip netns exec "$GW" nft list chain inet nixgate forward | grep -F "$pat" | head -1 | sed -E 's/.*counter packets ([0-9]+).*/\1/'
}
ipt_count() {  # log|drop: the counter of the runner's IPv4 rule
  local target; [ "$1" = log ] && target=LOG || target=DROP
  ip netns exec "$GW" iptables -w -L NIXGATE -v -x -n | awk -v t=$target -v s=$RUNNER_IP '$3 == t && $8 == s { print $1; exit }'
}

echo "== nftables: firewall-rules/nixgate.nft unedited is inert (documentation prefixes)"
check "every example address in nixgate.nft is a documentation prefix (RFC 5737, RFC 3849)" \
  bash -c "grep -E '^define [A-Z0-9_]+ += \{' firewall-rules/nixgate.nft | sed -E 's/.*\{(.*)\}.*/\1/' | tr ', ' '\n\n' | grep . \
    | grep -vE '^(192\.0\.2\.|198\.51\.100\.|203\.0\.113\.|2001:db8:)' | { ! grep .; }"
check "nixgate.nft loads unedited" ip netns exec "$GW" nft -f firewall-rules/nixgate.nft
check "unedited, it blocks nothing here: runner -> upstream:443 still open" can "$RUN" tcp $OUT_IP 443
check "unedited, it blocks nothing here: runner -> upstream [IPv6]:443 still open" can "$RUN" tcp $OUT_IP6 443
ip netns exec "$GW" nft delete table inet nixgate

echo "== nftables: firewall-rules/nixgate.nft with this topology's addresses"
# Replace exactly the site variables; a new variable in the file that this test does not set
# fails here instead of being tested with a placeholder.
sed -E \
  -e "s|^define RUNNERS += .*|define RUNNERS = { $RUNNER_IP }|" \
  -e "s|^define RUNNERS6 += .*|define RUNNERS6 = { $RUNNER_IP6 }|" \
  -e "s|^define APPLIANCES += .*|define APPLIANCES = { $APP_IP }|" \
  -e "s|^define APPLIANCES6 += .*|define APPLIANCES6 = { $APP_IP6 }|" \
  -e "s|^define UPSTREAMS += .*|define UPSTREAMS = { $OUT_IP }|" \
  -e "s|^define UPSTREAMS6 += .*|define UPSTREAMS6 = { $OUT_IP6 }|" \
  -e "s|^define DNS_SERVERS += .*|define DNS_SERVERS = { $OUT_IP }|" \
  -e "s|^define DNS_SERVERS6 += .*|define DNS_SERVERS6 = { $OUT_IP6 }|" \
  -e "s|^define PEERS += .*|define PEERS = { $PEER_IP }|" \
  -e "s|^define PEERS6 += .*|define PEERS6 = { $PEER_IP6 }|" \
  -e "s|^define MONITORING += .*|define MONITORING = { $MON_IP }|" \
  -e "s|^define MONITORING6 += .*|define MONITORING6 = { $MON_IP6 }|" \
  firewall-rules/nixgate.nft > "$WORK/site.nft"
check "every site variable of nixgate.nft is set by this test" \
  test "$(grep -c '^define' "$WORK/site.nft")" = "$(grep -cE '^define ((RUNNERS|APPLIANCES|UPSTREAMS|DNS_SERVERS|PEERS|MONITORING)6?|HTTP_PORT|TORRENT_PORT|UPSTREAM_PORT) ' "$WORK/site.nft")"
check "no example address is left in the site's nixgate.nft" bash -c "! grep -E '^define' '$WORK/site.nft' | grep -qE '192\.0\.2\.|198\.51\.100\.|203\.0\.113\.|2001:db8:'"
start_appliance nft
check "nixgate.nft loads" ip netns exec "$GW" nft -f "$WORK/site.nft"
check "nixgate.nft loads a second time (idempotent)" ip netns exec "$GW" nft -f "$WORK/site.nft"
assert_policy nft
check "nft counted the dropped runner connections" \
  bash -c "ip netns exec $GW nft list chain inet nixgate forward | grep 'saddr @runners counter' | grep -vq 'packets 0 '"
check "nft counted the dropped IPv6 runner connections" \
  bash -c "ip netns exec $GW nft list chain inet nixgate forward | grep 'saddr @runners6 counter' | grep -vq 'packets 0 '"
check "every nft log rule is rate-limited (4 log rules, 4 with limit rate)" \
  bash -c "r=\$(ip netns exec $GW nft list chain inet nixgate forward); [ \$(grep -c ' log ' <<<\"\$r\") = 4 ] && [ \$(grep ' log ' <<<\"\$r\" | grep -c 'limit rate 10/minute burst 20 packets') = 4 ]"
assert_rate_limited nft nft_count
ip netns exec "$GW" nft delete table inet nixgate
check "with the table deleted, direct access works again" can "$RUN" tcp $OUT_IP 443

echo "== iptables: firewall-rules/nixgate.iptables.sh refuses example addresses"
site_env=(RUNNERS=$RUNNER_IP RUNNERS6=$RUNNER_IP6 APPLIANCES=$APP_IP APPLIANCES6=$APP_IP6
          UPSTREAMS=$OUT_IP UPSTREAMS6=$OUT_IP6 DNS_SERVERS=$OUT_IP DNS_SERVERS6=$OUT_IP6
          PEERS=$PEER_IP PEERS6=$PEER_IP6 MONITORING=$MON_IP MONITORING6=$MON_IP6)
# refused ENV...: exit 2 with a message naming every example left, and no chain created.
refused() {
  local out rc=0 v
  out=$(ip netns exec "$GW" env "$@" sh firewall-rules/nixgate.iptables.sh 2>&1) || rc=$?
  echo "   exit $rc: ${out%%$'\n'*}"
  [ "$rc" = 2 ] && grep -q "refusing to run" <<<"$out" || return 1
  for v in $EXPECT; do grep -q " $v=" <<<"$out" || return 1; done
  ! ip netns exec "$GW" iptables -w -S NIXGATE >/dev/null 2>&1 && ! ip netns exec "$GW" ip6tables -w -S NIXGATE >/dev/null 2>&1
}
EXPECT="RUNNERS RUNNERS6 APPLIANCES PEERS MONITORING MONITORING6" \
  check "unedited (all examples): refuses, exit 2, names them, creates nothing" refused
EXPECT="PEERS MONITORING6" check "one IPv4 peer and one IPv6 monitoring example left: refuses, names both" \
  refused "${site_env[@]}" PEERS="$PEER_IP,198.51.100.7" MONITORING6=2001:db8:40::9
EXPECT="" check "no appliance address at all: refuses" refused "${site_env[@]}" APPLIANCES= APPLIANCES6=

echo "== iptables: firewall-rules/nixgate.iptables.sh (iptables and ip6tables)"
start_appliance iptables
check "nixgate.iptables.sh applies" ip netns exec "$GW" env "${site_env[@]}" sh firewall-rules/nixgate.iptables.sh
check "nixgate.iptables.sh applies a second time (idempotent)" ip netns exec "$GW" env "${site_env[@]}" sh firewall-rules/nixgate.iptables.sh
check "FORWARD jumps to NIXGATE exactly once" test "$(ip netns exec "$GW" iptables -S FORWARD | grep -c -- '-j NIXGATE')" = 1
check "ip6tables FORWARD jumps to NIXGATE exactly once" test "$(ip netns exec "$GW" ip6tables -S FORWARD | grep -c -- '-j NIXGATE')" = 1
check "every LOG rule is rate-limited (iptables and ip6tables: 2 each, all with -m limit)" \
  bash -c "for c in iptables ip6tables; do r=\$(ip netns exec $GW \$c -w -S NIXGATE); [ \$(grep -c -- '-j LOG' <<<\"\$r\") = 2 ] && [ \$(grep -- '-j LOG' <<<\"\$r\" | grep -c -- '-m limit --limit 10/min --limit-burst 20') = 2 ] || exit 1; done"
assert_policy iptables
assert_rate_limited iptables ipt_count
check "without IPv6 addresses (\"\"), the ip6tables chain is taken out and IPv4 stays" \
  bash -c "ip netns exec $GW env ${site_env[*]} RUNNERS6= APPLIANCES6= UPSTREAMS6= DNS_SERVERS6= PEERS6= MONITORING6= sh firewall-rules/nixgate.iptables.sh \
    && ! ip netns exec $GW ip6tables -w -S NIXGATE >/dev/null 2>&1 && ! ip netns exec $GW ip6tables -S FORWARD | grep -q NIXGATE \
    && ip netns exec $GW iptables -w -S NIXGATE >/dev/null"
check "  ... so IPv6 is open again: runner -> upstream [IPv6]:443" can "$RUN" tcp $OUT_IP6 443
refute "  ... and IPv4 still dropped: runner -> upstream:443" can "$RUN" tcp $OUT_IP 443
summary
