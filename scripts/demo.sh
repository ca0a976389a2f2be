#!/usr/bin/env bash
# blockyard's main job on local stores, end to end, with a sample image pair it builds
# itself: night 1 is an ext4 image made by `mkfs.ext4 -d` from real files of this machine,
# night 2 is the same image changed in place with debugfs (new libraries, rebuilt binaries,
# rewritten text). It snapshots both nights into an encrypted local store, restores night 2,
# checks the result is identical and sparse, verifies every block, and prints the figures.
#
# Usage: scripts/demo.sh [WORKDIR] [SIZE]   (defaults: target/demo, 2G)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-target/demo}
size=${2:-2G}

bash scripts/need.sh mkfs.ext4=e2fsprogs python3=python3

echo "== building blockyard (release)"
cargo build --release --locked -p blockyard
by=$PWD/target/release/blockyard

echo "== making the sample images in $work"
bash bench/make-images.sh "$work/images" "$size"
night1=$work/images/night1.img
night2=$work/images/night2.img

store=$work/store
key=$work/master.key
rm -rf "$store" "$work/restored.img"
[ -f "$key" ] || { head -c 32 /dev/urandom > "$key"; chmod 600 "$key"; }
by() { "$by" --store "$store" --key-file "$key" "$@"; }
snap_id() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["snapshot"])' "$1"; }

by store init --encrypt
echo
echo "== night 1: full snapshot"
by --json snapshot create "$night1" --description "night 1" --tag night=1 > "$work/night1.json"
id1=$(snap_id "$work/night1.json")
by snapshot show "$id1"

echo
echo "== night 2: incremental snapshot"
by --json snapshot create "$night2" --parent "$id1" --description "night 2" --tag night=2 \
  > "$work/night2.json"
id2=$(snap_id "$work/night2.json")
by snapshot show "$id2"
changed=$(by --json snapshot diff "$id1" "$id2" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["changed"]))')

echo
echo "== restore night 2"
by --json restore "$id2" "$work/restored.img" > "$work/restore.json"
cmp "$night2" "$work/restored.img"
echo "restored image is identical to night 2"

echo
echo "== verify every block"
by check --read-data

echo
echo "== figures"
python3 - "$work" "$changed" "$store" <<'PY'
import json, os, sys
work, changed, store = sys.argv[1], int(sys.argv[2]), sys.argv[3]
n1 = json.load(open(f"{work}/night1.json"))
n2 = json.load(open(f"{work}/night2.json"))
r = json.load(open(f"{work}/restore.json"))
mib = lambda b: f"{b / 2**20:8.1f} MiB"
def stored(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
out = f"{work}/restored.img"
print(f"{'step':<22}{'time':>9}{'read':>14}{'stored':>14}  blocks")
for name, s in (("snapshot night 1", n1), ("snapshot night 2", n2)):
    b = s["blocks"]
    print(f"{name:<22}{s['seconds']:8.2f}s{mib(s['bytes_read'])}{mib(s['bytes_stored'])}"
          f"  {b['data']} data, {b['new']} new, {b['reused']} reused, {b['zero']} zero")
print(f"{'restore night 2':<22}{r['seconds']:8.2f}s{'':>14}{mib(r['bytes_written'])}  written")
print(f"disk size {mib(n1['size']).strip()}; blocks changed night 1 -> 2: {changed}")
print(f"store on disk: {mib(stored(store)).strip()}; restored file allocates "
      f"{mib(os.stat(out).st_blocks * 512).strip()} of {mib(os.stat(out).st_size).strip()}")
PY
