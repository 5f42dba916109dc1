#!/usr/bin/env bash
# The test command (README "Test it"): installs what a fresh Debian machine lacks, then runs
# formatting, lint and every test. Fails loudly if anything is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v nix >/dev/null || need+=(nix-bin)
command -v xz >/dev/null || need+=(xz-utils)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
nix --version

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked
