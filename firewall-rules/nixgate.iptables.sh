#!/bin/sh
# nixgate egress policy for a CI network, iptables version of nixgate.nft (same rules; read
# that file for the picture). Run it as root on the router/gateway between the runners'
# network and everything else. Idempotent: it owns the chain NIXGATE, jumped to first from
# FORWARD, and touches nothing else. Lists are comma-separated (iptables expands them).
set -eu

# ---- fill these in for your site ------------------------------------------------------------
RUNNERS=${RUNNERS:-10.0.10.0/24}           # CI runners (hosts or pod CIDR)
APPLIANCES=${APPLIANCES:-10.0.20.10}       # nixgate appliance(s) of this site
UPSTREAMS=${UPSTREAMS:-192.0.2.0/24}       # upstream cache addresses (see nixgate.nft)
DNS_SERVERS=${DNS_SERVERS:-10.0.0.53}      # resolvers the appliance uses
PEERS=${PEERS:-10.0.30.0/24}               # other nixgate appliances it may share with
HTTP_PORT=${HTTP_PORT:-8080}               # nixgate --listen port
TORRENT_PORT=${TORRENT_PORT:-6881}         # nixgate --torrent-listen port
UPSTREAM_PORT=${UPSTREAM_PORT:-443}        # https upstreams
IPTABLES=${IPTABLES:-iptables}
# ----------------------------------------------------------------------------------------------

ipt() { $IPTABLES -w "$@"; }

ipt -N NIXGATE 2>/dev/null || ipt -F NIXGATE
ipt -C FORWARD -j NIXGATE 2>/dev/null || ipt -I FORWARD 1 -j NIXGATE

# Answers to connections allowed below.
ipt -A NIXGATE -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
ipt -A NIXGATE -m conntrack --ctstate INVALID -j DROP

# Runners: the appliance's HTTP port and nothing else.
ipt -A NIXGATE -s "$RUNNERS" -d "$APPLIANCES" -p tcp --dport "$HTTP_PORT" -j ACCEPT

# The appliance: upstream caches, DNS, and peers.
ipt -A NIXGATE -s "$APPLIANCES" -d "$UPSTREAMS" -p tcp --dport "$UPSTREAM_PORT" -j ACCEPT
ipt -A NIXGATE -s "$APPLIANCES" -d "$DNS_SERVERS" -p udp --dport 53 -j ACCEPT
ipt -A NIXGATE -s "$APPLIANCES" -d "$DNS_SERVERS" -p tcp --dport 53 -j ACCEPT
ipt -A NIXGATE -s "$APPLIANCES" -d "$PEERS" -p tcp -m multiport --dports "$HTTP_PORT,$TORRENT_PORT" -j ACCEPT
ipt -A NIXGATE -s "$APPLIANCES" -d "$PEERS" -p udp --dport "$TORRENT_PORT" -j ACCEPT

# Peers: the peer API (same port as runners use) and BitTorrent.
ipt -A NIXGATE -s "$PEERS" -d "$APPLIANCES" -p tcp -m multiport --dports "$HTTP_PORT,$TORRENT_PORT" -j ACCEPT
ipt -A NIXGATE -s "$PEERS" -d "$APPLIANCES" -p udp --dport "$TORRENT_PORT" -j ACCEPT

# Everything else that involves a runner or an appliance.
ipt -A NIXGATE -s "$RUNNERS" -j LOG --log-prefix "nixgate drop runner: " --log-level info
ipt -A NIXGATE -s "$RUNNERS" -j DROP
ipt -A NIXGATE -d "$RUNNERS" -j DROP
ipt -A NIXGATE -s "$APPLIANCES" -j LOG --log-prefix "nixgate drop appliance: " --log-level info
ipt -A NIXGATE -s "$APPLIANCES" -j DROP
ipt -A NIXGATE -d "$APPLIANCES" -j DROP
# Other traffic falls through to the rest of FORWARD.
