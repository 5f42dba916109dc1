#!/bin/sh
# nixgate egress policy for a CI network, iptables/ip6tables version of nixgate.nft (same
# rules; read that file for the picture). Run it as root on the router/gateway between the
# runners' network and everything else. Idempotent: in each of iptables and ip6tables it owns
# the chain NIXGATE, jumped to first from FORWARD, and touches nothing else. Lists are
# comma-separated (iptables expands them); "" = none (e.g. no IPv6, no peers, no monitoring).
#
# It refuses to run (exit 2) while any address is still an example: the defaults below are
# documentation prefixes (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32) that
# no real network uses, so a copy run unedited cannot lock anyone out or pass for a policy.
# Set the variables in the environment or edit the defaults.
set -eu

# ---- fill these in for your site ------------------------------------------------------------
RUNNERS=${RUNNERS-192.0.2.0/26}                  # CI runners (hosts or pod CIDR)
RUNNERS6=${RUNNERS6-2001:db8:10::/64}
APPLIANCES=${APPLIANCES-192.0.2.100}             # nixgate appliance(s) of this site
APPLIANCES6=${APPLIANCES6-2001:db8:20::10}
UPSTREAMS=${UPSTREAMS-203.0.113.0/24}            # upstream cache addresses (see nixgate.nft)
UPSTREAMS6=${UPSTREAMS6-2001:db8:113::/48}
DNS_SERVERS=${DNS_SERVERS-192.0.2.253}           # resolvers the appliance uses
DNS_SERVERS6=${DNS_SERVERS6-2001:db8:53::53}
PEERS=${PEERS-198.51.100.0/26}                   # other nixgate appliances it may share with
PEERS6=${PEERS6-2001:db8:30::/64}
MONITORING=${MONITORING-198.51.100.200}          # Prometheus servers scraping the appliance
MONITORING6=${MONITORING6-2001:db8:40::9}
HTTP_PORT=${HTTP_PORT:-8080}                     # nixgate --listen port
TORRENT_PORT=${TORRENT_PORT:-6881}               # nixgate --torrent-listen port
UPSTREAM_PORT=${UPSTREAM_PORT:-443}              # https upstreams
IPTABLES=${IPTABLES:-iptables}
IP6TABLES=${IP6TABLES:-ip6tables}
# ----------------------------------------------------------------------------------------------
LOG_LIMIT="-m limit --limit 10/min --limit-burst 20"   # at most 10 log lines a minute per rule

examples=""
for var in RUNNERS RUNNERS6 APPLIANCES APPLIANCES6 UPSTREAMS UPSTREAMS6 DNS_SERVERS DNS_SERVERS6 \
           PEERS PEERS6 MONITORING MONITORING6; do
  eval "list=\$$var"
  for addr in $(echo "$list" | tr ',' ' '); do
    case $addr in
      192.0.2.*|198.51.100.*|203.0.113.*|2001:db8:*|2001:DB8:*) examples="$examples $var=$addr" ;;
    esac
  done
done
if [ -n "$examples" ]; then
  echo "nixgate.iptables.sh: refusing to run: still example (documentation) addresses:$examples" >&2
  echo "  set RUNNERS, APPLIANCES, UPSTREAMS, DNS_SERVERS, PEERS, MONITORING and their *6 (IPv6)" >&2
  echo "  twins to your site's addresses (\"\" = none), in the environment or at the top of the script." >&2
  exit 2
fi
if [ -z "$APPLIANCES$APPLIANCES6" ]; then
  echo "nixgate.iptables.sh: refusing to run: no appliance address (APPLIANCES, APPLIANCES6)" >&2
  exit 2
fi

# remove CMD: takes the chain out (a family with no address of this site).
remove() {
  command -v "$1" >/dev/null 2>&1 || return 0
  while $1 -w -D FORWARD -j NIXGATE 2>/dev/null; do :; done
  $1 -w -F NIXGATE 2>/dev/null || true
  $1 -w -X NIXGATE 2>/dev/null || true
}

# rules CMD RUNNERS APPLIANCES UPSTREAMS DNS PEERS MONITORING: one family's chain; a rule
# whose list is empty is left out.
rules() {
  cmd=$1 runners=$2 appliances=$3 upstreams=$4 dns=$5 peers=$6 monitoring=$7
  if [ -z "$runners$appliances" ]; then remove "$cmd"; return 0; fi
  ipt() { $cmd -w "$@"; }
  ipt -N NIXGATE 2>/dev/null || ipt -F NIXGATE
  ipt -C FORWARD -j NIXGATE 2>/dev/null || ipt -I FORWARD 1 -j NIXGATE

  # Answers to connections allowed below (ICMP errors about them too).
  ipt -A NIXGATE -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
  ipt -A NIXGATE -m conntrack --ctstate INVALID -j DROP

  if [ -n "$appliances" ]; then
    # Runners: the appliance's HTTP port and nothing else. Monitoring: /metrics on it.
    [ -z "$runners" ] || ipt -A NIXGATE -s "$runners" -d "$appliances" -p tcp --dport "$HTTP_PORT" -j ACCEPT
    [ -z "$monitoring" ] || ipt -A NIXGATE -s "$monitoring" -d "$appliances" -p tcp --dport "$HTTP_PORT" -j ACCEPT

    # The appliance: upstream caches, DNS, and peers.
    [ -z "$upstreams" ] || ipt -A NIXGATE -s "$appliances" -d "$upstreams" -p tcp --dport "$UPSTREAM_PORT" -j ACCEPT
    if [ -n "$dns" ]; then
      ipt -A NIXGATE -s "$appliances" -d "$dns" -p udp --dport 53 -j ACCEPT
      ipt -A NIXGATE -s "$appliances" -d "$dns" -p tcp --dport 53 -j ACCEPT
    fi
    if [ -n "$peers" ]; then
      ipt -A NIXGATE -s "$appliances" -d "$peers" -p tcp -m multiport --dports "$HTTP_PORT,$TORRENT_PORT" -j ACCEPT
      ipt -A NIXGATE -s "$appliances" -d "$peers" -p udp --dport "$TORRENT_PORT" -j ACCEPT
      # Peers: the peer API (same port as runners use) and BitTorrent.
      ipt -A NIXGATE -s "$peers" -d "$appliances" -p tcp -m multiport --dports "$HTTP_PORT,$TORRENT_PORT" -j ACCEPT
      ipt -A NIXGATE -s "$peers" -d "$appliances" -p udp --dport "$TORRENT_PORT" -j ACCEPT
    fi
  fi

  # Everything else that involves a runner or an appliance: logged at a limited rate, dropped.
  if [ -n "$runners" ]; then
    # shellcheck disable=SC2086
    ipt -A NIXGATE -s "$runners" $LOG_LIMIT -j LOG --log-prefix "nixgate drop runner: " --log-level info
    ipt -A NIXGATE -s "$runners" -j DROP
    ipt -A NIXGATE -d "$runners" -j DROP
  fi
  if [ -n "$appliances" ]; then
    # shellcheck disable=SC2086
    ipt -A NIXGATE -s "$appliances" $LOG_LIMIT -j LOG --log-prefix "nixgate drop appliance: " --log-level info
    ipt -A NIXGATE -s "$appliances" -j DROP
    ipt -A NIXGATE -d "$appliances" -j DROP
  fi
  # Other traffic falls through to the rest of FORWARD.
}

rules "$IPTABLES" "$RUNNERS" "$APPLIANCES" "$UPSTREAMS" "$DNS_SERVERS" "$PEERS" "$MONITORING"
rules "$IP6TABLES" "$RUNNERS6" "$APPLIANCES6" "$UPSTREAMS6" "$DNS_SERVERS6" "$PEERS6" "$MONITORING6"
