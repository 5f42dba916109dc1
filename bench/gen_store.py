#!/usr/bin/env python3
"""Writes N fake narinfo+NAR pairs straight into nixgate's store layout (for the scale
benchmarks): bench/gen_store.py ROOT N [FLAT_DIR].

Narinfos are parseable stored narinfos (the upstream-URL line, then the narinfo), so a warm
narinfo request is a real hit; NARs are sparse 4000-byte files. With FLAT_DIR, every narinfo
is also hard-linked as FLAT_DIR/<hash>.narinfo (the same inode), for nginx to serve the same
files. Prints the FileHash of the last NAR; writes ROOT/../paths.txt (request paths)."""
import os
import random
import sys

root, n = sys.argv[1], int(sys.argv[2])
flat = sys.argv[3] if len(sys.argv) > 3 else None
A = "0123456789abcdfghijklmnpqrsvwxyz"
rnd = random.Random(1)
os.makedirs(root)
if flat:
    os.makedirs(flat)
open(f"{root}/VERSION", "w").write("nixgate-store 1\n")
made = set()
paths = open(os.path.join(os.path.dirname(root), "paths.txt"), "w")


def nix32(first):
    return rnd.choice(first) + "".join(rnd.choice(A) for _ in range(51))


for _ in range(n):
    h = "".join(rnd.choice(A) for _ in range(32))
    fh, nh = nix32("01"), nix32("01")
    narinfo = (
        f"http://127.0.0.1:9/nar/{fh}.nar.xz\n"
        f"StorePath: /nix/store/{h}-bench\nURL: nar/{fh}.nar.xz\nCompression: xz\n"
        f"FileHash: sha256:{fh}\nFileSize: 4000\nNarHash: sha256:{nh}\nNarSize: 8000\n"
        "References: \n"
    ).encode()
    for d, name in (("narinfo", f"{h}-{fh}.narinfo"), ("nar", f"{fh}.nar.xz")):
        p = f"{root}/{d}/{name[:2]}"
        if p not in made:
            os.makedirs(p, exist_ok=True)
            made.add(p)
        with open(f"{p}/{name}", "wb") as f:
            if d == "narinfo":
                f.write(narinfo)
            else:
                f.truncate(4000)
        if d == "narinfo" and flat:
            os.link(f"{p}/{name}", f"{flat}/{h}.narinfo")
    paths.write(f"/{h}.narinfo\n")
print(fh)
