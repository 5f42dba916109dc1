#!/usr/bin/env bash
# Index rebuild time at start-up for N cached paths (default 100000 narinfo+NAR pairs = 200k
# files). Usage: bench/rebuild.sh [N]. Prints the "cache index rebuilt" log line (elapsed_ms).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000}
cargo build --release --quiet --bin nixgate
D=$(mktemp -d /tmp/nixgate-rebuild.XXXX)
trap 'kill $PID 2>/dev/null; rm -rf $D' EXIT
python3 - "$D/cache" "$N" <<'PY'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
A = "0123456789abcdfghijklmnpqrsvwxyz"
rnd = random.Random(1)
os.makedirs(root)
open(f"{root}/VERSION", "w").write("nixgate-store 1\n")
for _ in range(n):
    h = "".join(rnd.choice(A) for _ in range(32))
    fh = rnd.choice("01") + "".join(rnd.choice(A) for _ in range(51))
    for d, name, size in (("narinfo", f"{h}-{fh}.narinfo", 600), ("nar", f"{fh}.nar.xz", 4000)):
        p = f"{root}/{d}/{name[:2]}"
        os.makedirs(p, exist_ok=True)
        with open(f"{p}/{name}", "wb") as f:
            f.truncate(size)
PY
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
RUST_LOG=info target/release/nixgate serve --listen 127.0.0.1:0 --cache-dir $D/cache --max-cache-size 100GiB --no-torrent > $D/log 2>&1 & PID=$!
for _ in $(seq 300); do grep -q "index rebuilt" $D/log && break; sleep 0.1; done
grep "index rebuilt" $D/log
