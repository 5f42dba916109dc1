# Shared helpers of the shell tests in tests/deploy/ (sourced, not run).
# Every helper fails loudly: a missing tool is an error, never a skip.

export NIX_CONFIG='experimental-features = nix-command
sandbox = false
build-users-group =
substituters =
narinfo-cache-negative-ttl = 0'

PASSED=0
FAILED=0

# record NAME PASSED(0|1): counts and prints one result.
record() {
  if [ "$2" -eq 1 ]; then
    PASSED=$((PASSED + 1)); echo "ok   - $1"
  else
    FAILED=$((FAILED + 1)); echo "FAIL - $1"
  fi
}

# check NAME COMMAND...: passes when COMMAND succeeds.
check() { local name=$1; shift; if "$@"; then record "$name" 1; else record "$name" 0; fi; }

# refute NAME COMMAND...: passes when COMMAND fails.
refute() { local name=$1; shift; if "$@"; then record "$name" 0; else record "$name" 1; fi; }

# summary: prints the counts in cargo's format (ci/test.sh adds them up) and sets the status.
summary() {
  echo "test result: $([ "$FAILED" -eq 0 ] && echo ok || echo FAILED). $PASSED passed; $FAILED failed"
  [ "$FAILED" -eq 0 ] && [ "$PASSED" -gt 0 ]
}

need() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "missing tool: $tool (ci/test.sh installs it)" >&2; exit 1; }
  done
}

# make_cache DIR: builds two store paths (top -> dep) plus a 2 MB blob with real Nix and
# writes a signed, xz-compressed binary cache to DIR/cache. Sets KEY, TOP, DEP, BLOB.
make_cache() {
  local dir=$1
  need nix nix-build
  mkdir -p "$dir"
  cat > "$dir/t.nix" <<NIX
let mk = name: script: derivation { inherit name; system = builtins.currentSystem; builder = "/bin/sh"; PATH = "/usr/bin:/bin"; args = [ "-c" script ]; };
    dep = mk "nixgate-deploy-dep-$$" "mkdir -p \$out; echo dependency > \$out/dep";
    top = mk "nixgate-deploy-top-$$" "mkdir -p \$out; echo \${dep} > \$out/ref";
    blob = mk "nixgate-deploy-blob-$$" "head -c 2000000 /dev/urandom > \$out";
in { inherit dep top blob; }
NIX
  nix key generate-secret --key-name nixgate-deploy-1 > "$dir/sk"
  KEY=$(nix key convert-secret-to-public < "$dir/sk")
  TOP=$(nix-build "$dir/t.nix" --no-out-link -A top)
  DEP=$(nix-build "$dir/t.nix" --no-out-link -A dep)
  BLOB=$(nix-build "$dir/t.nix" --no-out-link -A blob)
  nix copy --to "file://$dir/cache?secret-key=$dir/sk&compression=xz" "$TOP" "$BLOB"
}

# nix_copy_from URL DEST PATH...: real `nix copy` from an appliance into a fresh store.
nix_copy_from() {
  local url=$1 dest=$2; shift 2
  XDG_CACHE_HOME="$dest/xdg" nix copy --from "$url" --to "$dest/root" \
    --option trusted-public-keys "$KEY" "$@"
}

# in_store DEST PATH: the path is valid in the store under DEST.
in_store() {
  nix path-info --store "$1/root" "$2" >/dev/null 2>&1
}

# wait_http URL [SECONDS] [RUNNER...]: waits until URL answers 2xx (RUNNER e.g. `ip netns exec x`).
wait_http() {
  local url=$1 secs=${2:-20}; shift 2 || shift $#
  local i
  for ((i = 0; i < secs * 10; i++)); do
    "$@" python3 - "$url" <<'PY' && return 0
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=1)
except Exception:
    sys.exit(1)
PY
    sleep 0.1
  done
  echo "no answer from $url after ${secs}s" >&2
  return 1
}

# ---- cleanup, background processes, network namespaces ----
# Sourcing this file installs one EXIT trap. On exit it stops every process started with
# `spawn` (TERM, then KILL), runs the `at_exit` commands, deletes the namespaces made with
# `netns`, and removes the directory made with `temp_work`. Scripts add to it, never replace it.
PIDS=()
NETNS=()
AT_EXIT=()
TEMP_WORK=""

_lib_cleanup() {
  local p c n
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ ${#PIDS[@]} -gt 0 ]; then
    sleep 0.2
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  fi
  for c in "${AT_EXIT[@]}"; do eval "$c" || true; done
  for n in "${NETNS[@]}"; do ip netns del "$n" 2>/dev/null || true; done
  [ -z "$TEMP_WORK" ] || rm -rf "$TEMP_WORK"
}
trap _lib_cleanup EXIT

# at_exit COMMAND: runs COMMAND (one string, eval'd) on exit, after background processes stop.
at_exit() { AT_EXIT+=("$1"); }

# temp_work PREFIX: sets WORK to a fresh directory under /tmp, removed on exit.
temp_work() { WORK=$(mktemp -d "/tmp/$1.XXXXXX"); TEMP_WORK=$WORK; }

# spawn COMMAND...: runs COMMAND in the background (redirect the call to redirect its output);
# it is stopped on exit. Its pid is in $! afterwards.
spawn() { "$@" & PIDS+=($!); }

# stop_pid PID: stops one background process now and waits for it.
stop_pid() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# add_netns NAME...: network namespaces with loopback up, deleted on exit.
add_netns() {
  local n
  for n in "$@"; do ip netns add "$n"; NETNS+=("$n"); ip -n "$n" link set lo up; done
}

# add_veth NS IF PEER_NS PEER_IF: a veth pair, IF in NS and PEER_IF in PEER_NS, both ends up.
add_veth() {
  ip link add "$2" type veth peer name "$4"
  ip link set "$2" netns "$1"
  ip link set "$4" netns "$3"
  ip -n "$1" link set "$2" up
  ip -n "$3" link set "$4" up
}

# add_bridge NS BR: a bridge in NS that floods multicast (no snooping, so mDNS crosses it).
add_bridge() {
  ip -n "$1" link add "$2" type bridge mcast_snooping 0
  ip -n "$1" link set "$2" up
}
