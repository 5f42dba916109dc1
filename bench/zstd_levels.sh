#!/usr/bin/env bash
# zstd level and threading for serving NARs as zstd (issue 22), measured with the CLIs on real
# files from this machine. Usage: bench/zstd_levels.sh
#
# Builds a few NARs with `nix-store --dump` of real directories (ELF binaries and libraries,
# Python sources and bytecode, translations, resource packs; no random bytes), then for each
# NAR separately (a cache compresses path by path):
#   - xz -6 -T1 (what cache.nixos.org serves): size, encode CPU, decode CPU (xz -d: what the
#     appliance already pays to check NarHash, and what a runner pays today)
#   - zstd at each level in LEVELS, single-threaded (--single-thread: the library's
#     nbWorkers=0) and with THREADS workers (-T2: nbWorkers=2): size, encode CPU and wall,
#     decode CPU (zstd -d: what a runner pays after the switch)
#   - level 3 with an 8 MiB window or long-distance matching (EXTRA), single-threaded
#   - sha256sum of the NAR, for scale (the appliance hashes every NAR once already)
# Max RSS (/usr/bin/time %M, max over the NARs) shows the memory a runner needs to decode.
# CPU = user + sys of the process (/usr/bin/time), summed over the NARs, per GB (1e9 bytes) of
# *uncompressed NAR*; throughput = NAR MB (1e6 bytes) per wall second. Inputs and outputs are
# read from / written to the page cache (tmpfs-like: the files are read once before timing).
#
# Each measurement but the slow ones (xz -6 and REF_LEVELS encodes) is taken REPEAT times (3)
# and the run with the least CPU kept: the machine is shared, the minimum is the codec's cost.
#
# Environment: LEVELS (default "1 2 3 6 9"), REF_LEVELS (default "19": single-threaded only,
# for reference; "" for none), THREADS (2), REPEAT (3), SOURCES (default list below,
# "name=path[:path…]"; a path may end in !NAME to drop that entry), KEEP=1 keeps the temp dir.
# Fails loudly when a tool is missing. Traffic: none.
set -euo pipefail
cd "$(dirname "$0")/.."

for t in zstd xz nix-store sha256sum python3 /usr/bin/time; do
  command -v "$t" >/dev/null || { echo "zstd_levels.sh: missing tool: $t (apt-get install zstd xz-utils nix-bin time python3)" >&2; exit 2; }
done

LEVELS=${LEVELS-"1 2 3 6 9"}
REF_LEVELS=${REF_LEVELS-19}
# Level 3 with a larger window (8 MiB = xz -6's dictionary) or long-distance matching.
EXTRA=${EXTRA-"-3 --zstd=wlog=23|-3 --long=23|-3 --long=27"}
THREADS=${THREADS:-2}
REPEAT=${REPEAT:-3}
LOC=/usr/share/locale
SOURCES=${SOURCES:-"python3.11=/usr/lib/python3.11
gcc-12=/usr/lib/gcc/x86_64-linux-gnu/12
postgresql-15=/usr/lib/postgresql/15
chromium-resources=/usr/lib/chromium!chromium
git-core=/usr/lib/git-core
locale-12-languages=$LOC/de:$LOC/fr:$LOC/es:$LOC/it:$LOC/ja:$LOC/ru:$LOC/pt_BR:$LOC/pl:$LOC/nl:$LOC/zh_CN:$LOC/sv:$LOC/cs"}

D=$(mktemp -d /tmp/zstd-levels.XXXX)
[ "${KEEP:-}" = 1 ] || trap 'rm -rf "$D"' EXIT
mkdir -p "$D/src" "$D/nar" "$D/out"

# 1. NARs. Each source becomes a directory (copied when it is assembled from several paths or
#    drops an entry), dumped with nix-store --dump (the NAR serialisation Nix hashes and
#    compresses).
while IFS= read -r line; do
  [ -n "$line" ] || continue
  name=${line%%=*}; spec=${line#*=}
  IFS=: read -r -a parts <<<"$spec"
  if [ ${#parts[@]} = 1 ] && [[ "$spec" != *'!'* ]]; then
    [ -e "$spec" ] || { echo "zstd_levels.sh: source $spec missing" >&2; exit 2; }
    nix-store --dump "$spec" >"$D/nar/$name.nar"
  else
    mkdir -p "$D/src/$name"
    for p in "${parts[@]}"; do
      path=${p%%!*}
      [ -e "$path" ] || { echo "zstd_levels.sh: source $path missing" >&2; exit 2; }
      cp -a "$path" "$D/src/$name/"
      [[ "$p" == *'!'* ]] && rm -rf "$D/src/$name/$(basename "$path")/${p#*!}"
    done
    nix-store --dump "$D/src/$name" >"$D/nar/$name.nar"
    rm -rf "$D/src/$name"
  fi
done <<<"$SOURCES"
NARS=$(cd "$D/nar" && ls *.nar)
cat "$D"/nar/*.nar >/dev/null   # into the page cache

# 2. One timed command per NAR, run REPS times (the global default REPEAT), keeping the run with
#    the least CPU (the machine is shared: the minimum is the cost, the rest is interference).
#    Appends "config nar user sys wall bytes_out" to results.
best() { # file with "user sys wall" lines -> the line with the least user+sys
  awk '{c=$1+$2; if (NR==1 || c<m) {m=c; l=$0}} END {print l}' "$1"; }
timed() { # reps config nar outfile cmd...
  local reps=$1 cfg=$2 nar=$3 out=$4; shift 4
  : >"$D/tt"
  for _ in $(seq "$reps"); do
    /usr/bin/time -f '%U %S %e %M' -o "$D/t" "$@" <"$D/nar/$nar" >"$out"; cat "$D/t" >>"$D/tt"
  done
  echo "$cfg $nar $(best "$D/tt") $(stat -c %s "$out")" >>"$D/results"
}
timed_dec() { # reps config nar infile cmd...
  local reps=$1 cfg=$2 nar=$3 in=$4; shift 4
  : >"$D/tt"
  for _ in $(seq "$reps"); do
    /usr/bin/time -f '%U %S %e %M' -o "$D/t" "$@" <"$in" >"$D/out/dec"; cat "$D/t" >>"$D/tt"
  done
  cmp -s "$D/out/dec" "$D/nar/$nar" || { echo "zstd_levels.sh: $cfg did not round-trip $nar" >&2; exit 1; }
  echo "$cfg $nar $(best "$D/tt") 0" >>"$D/results"
}
: >"$D/results"
run_codec() { # encode-reps label encode-args… -- decode-args…
  local ereps=$1 label=$2; shift 2
  local enc=() dec=()
  while [ "$1" != -- ]; do enc+=("$1"); shift; done; shift; dec=("$@")
  for n in $NARS; do
    timed "$ereps" "enc:$label" "$n" "$D/out/c" "${enc[@]}"
    timed_dec "$REPEAT" "dec:$label" "$n" "$D/out/c" "${dec[@]}"
  done
}
for n in $NARS; do timed "$REPEAT" sha256 "$n" "$D/out/h" sha256sum; done
# xz -6 and the reference levels cost minutes per run: encoded once.
run_codec 1 "xz -6 -T1" xz -6 -T1 -c -- xz -d -c
for l in $LEVELS; do
  run_codec "$REPEAT" "zstd -$l st" zstd -q -$l --single-thread -c -- zstd -q -d -c
  run_codec "$REPEAT" "zstd -$l -T$THREADS" zstd -q -$l -T$THREADS -c -- zstd -q -d -c
done
IFS='|' read -r -a extra <<<"$EXTRA"
for x in "${extra[@]}"; do
  [ -n "$x" ] || continue
  read -r -a xa <<<"$x"
  run_codec "$REPEAT" "zstd $x st" zstd -q "${xa[@]}" --single-thread -c -- zstd -q -d -c --memory=128MB
done
for l in $REF_LEVELS; do
  run_codec 1 "zstd -$l st" zstd -q -$l --single-thread -c -- zstd -q -d -c
done

# 3. Tables.
for n in $NARS; do echo "$n $(stat -c %s "$D/nar/$n")"; done >"$D/sizes"
echo "machine: $(nproc) cores, $(uname -r), $(zstd --version | grep -o 'v[0-9.]*'), xz $(xz --version | awk 'NR==1{print $4}'), load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%RZ)"
python3 - "$D/results" "$D/sizes" <<'PY'
import sys, collections
sizes = dict(l.split()[0:2] for l in open(sys.argv[2]))
sizes = {k: int(v) for k, v in sizes.items()}
total = sum(sizes.values())
agg = collections.OrderedDict(); per = collections.defaultdict(dict); rss = collections.defaultdict(int)
for l in open(sys.argv[1]):
    parts = l.split()
    # config labels contain spaces: the last 6 fields are nar user sys wall maxrss_kb bytes
    cfg = ' '.join(parts[:-6]); nar, u, s, w, m, b = parts[-6:]
    rss[cfg] = max(rss[cfg], int(m))
    a = agg.setdefault(cfg, [0.0, 0.0, 0])
    a[0] += float(u) + float(s); a[1] += float(w); a[2] += int(b)
    if cfg.startswith('enc:'): per[cfg[4:]][nar] = int(b)
print(f"NARs: {len(sizes)}, {total/1e6:.1f} MB uncompressed ({', '.join(f'{k[:-4]} {v/1e6:.0f}' for k, v in sizes.items())})")
print()
xz = agg['enc:xz -6 -T1'][2]
hdr = ('| codec | size MB | MB per GB of NAR | vs xz -6 | encode CPU s/GB | encode MB/s (wall) | encode max RSS MB | decode CPU s/GB | decode MB/s (wall) | decode max RSS MB |')
print(hdr); print('|' + '---|' * 10)
gb = total / 1e9
def r(x): return f'{x:.0f}' if x >= 10 else f'{x:.1f}'
for cfg in [c[4:] for c in agg if c.startswith('enc:')]:
    e, d = agg['enc:' + cfg], agg['dec:' + cfg]
    print(f"| {cfg} | {e[2]/1e6:.1f} | {e[2]/total*1e3:.0f} | {e[2]/xz:.3f}x | {e[0]/gb:.2f} | {r(total/1e6/max(e[1],1e-9))} | {rss['enc:'+cfg]/1024:.0f} | {d[0]/gb:.2f} | {r(total/1e6/max(d[1],1e-9))} | {rss['dec:'+cfg]/1024:.0f} |")
h = agg['sha256']
print(f"| sha256sum (reference: hashing the NAR once) | – | – | – | {h[0]/gb:.2f} | {total/1e6/max(h[1],1e-9):.0f} | – | – | – | – |")
print()
xd = agg['dec:xz -6 -T1'][0] / gb
print(f"Appliance, per GB of NAR: xz decode (paid today to check NarHash) {xd:.2f} CPU s + sha256 {h[0]/gb:.2f} s; "
      "a transcode adds the zstd encode: " + ', '.join(f"{c[4:]} +{agg[c][0]/gb:.2f} s" for c in agg if c.startswith('enc:zstd') and c.endswith(' st')))
print(f"Disk per GB of NAR: xz {xz/total*1e3:.0f} MB; " + ', '.join(f"{c[4:]}: alone {agg[c][2]/total*1e3:.0f} MB, beside the xz {(agg[c][2]+xz)/total*1e3:.0f} MB" for c in agg if c.startswith('enc:zstd') and c.endswith(' st')))
print()
cfgs = [c for c in per if c == 'xz -6 -T1' or c.endswith(' st')]
print('Sizes per NAR, MB (ratio to xz -6):')
print()
print('| NAR | NAR MB | ' + ' | '.join(cfgs) + ' |'); print('|' + '---|' * (2 + len(cfgs)))
for n, v in sizes.items():
    print(f"| {n[:-4]} | {v/1e6:.1f} | " + ' | '.join(f"{per[c][n]/1e6:.1f} ({per[c][n]/per['xz -6 -T1'][n]:.2f}x)" for c in cfgs) + ' |')
PY
