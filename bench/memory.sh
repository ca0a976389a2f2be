#!/usr/bin/env bash
# Measures blockyard's memory on a large, mostly empty disk: a 100 GiB sparse raw file
# with 2 GiB of data in 64 runs of 32 MiB spread across it. Memory must stay bounded by the
# pipeline, not grow with the size of the disk: the target is a peak RSS of 256 MiB or less
# for the snapshot.
#
# The data is half random, half zeros, interleaved every 4 KiB: it compresses about 2:1,
# no 512 KiB block of it is all zeros and no two blocks are the same, so every block is
# hashed, compressed, sealed and written. The runs start 12 KiB past a 512 KiB boundary
# (times the run's number), so blocks at their edges are partly hole, partly data.
#
# Usage: bench/memory.sh [--work DIR] [--no-build]

set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
# shellcheck source=bench/lib.sh
source "$here/lib.sh"

work=$here/work
build=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --work) [[ $# -ge 2 ]] || die "--work needs a folder"; work=$2; shift 2 ;;
        --no-build) build=0; shift ;;
        *) echo "usage: bench/memory.sh [--work DIR] [--no-build]" >&2; exit 2 ;;
    esac
done
require_tools cargo python3 cmp findmnt

build_blockyard

mkdir -p "$work"
work=$(cd "$work" && pwd)
image=$work/images/sparse-100g.img
runs=64
run_bytes=$((32 * 1048576))
disk_bytes=$((100 * 1073741824))

# The image is made once and reused; the marker is written after the data.
if [[ ! -f $image.done ]]; then
    note "writing $runs runs of $((run_bytes / 1048576)) MiB into a 100 GiB sparse file"
    mkdir -p "$(dirname "$image")"
    rm -f "$image"
    python3 - "$image" "$disk_bytes" "$runs" "$run_bytes" <<'EOF' || die "making the image failed"
import os, sys

path, disk, runs, run = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
page = 4096
with open(path, "wb") as f:
    f.truncate(disk)
    for i in range(runs):
        offset = i * (disk // runs) + i * 3 * page
        data = bytearray(run)
        for at in range(0, run, 2 * page):
            data[at:at + page] = os.urandom(page)
        os.pwrite(f.fileno(), data, offset)
EOF
    touch "$image.done"
fi

run=$work/memory-run
fresh_dir "$run"
mkdir -p "$run/logs"
BENCH_LOGS=$run/logs
export XDG_CONFIG_HOME=$run/xdg/config XDG_CACHE_HOME=$run/xdg/cache XDG_DATA_HOME=$run/xdg/data
key=$run/master.key
head -c 32 /dev/urandom >"$key"
chmod 600 "$key"
store=$run/store
cmd=("$blockyard" --quiet --store "$store" --key-file "$key")

warm_data "$image"
measure memory/init "${cmd[@]}" store init --encrypt
measure memory/snapshot "${cmd[@]}" --json snapshot create "$image"
snapshot_sync=$(sync_seconds)
snapshot=$(json_field "$BENCH_LOGS/memory-snapshot.out" snapshot)
stored=$(file_bytes "$store")

out=$run/restored.img
measure memory/restore "${cmd[@]}" restore "$snapshot" "$out"
restore_sync=$(sync_seconds)

# Comparing all 100 GiB would mostly compare zeros; compare the written runs, and require
# the rest to be holes by checking that the output allocates little more than the data.
identical=yes
python3 - "$image" "$out" "$disk_bytes" "$runs" "$run_bytes" <<'EOF' || identical='**no**'
import os, sys

a, b = sys.argv[1], sys.argv[2]
disk, runs, run = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
if os.path.getsize(a) != os.path.getsize(b):
    sys.exit("sizes differ")
with open(a, "rb") as fa, open(b, "rb") as fb:
    for i in range(runs):
        offset = i * (disk // runs) + i * 3 * 4096
        if os.pread(fa.fileno(), run, offset) != os.pread(fb.fileno(), run, offset):
            sys.exit(f"run {i} differs")
EOF
allocated=$(allocated_bytes "$out")
sparse=yes
[[ $allocated -le $((runs * run_bytes + runs * 2 * 524288)) ]] || sparse='**no**'
rm -f "$out"

json=$BENCH_LOGS/memory-snapshot.out
echo "## Memory: a 100 GiB sparse image with 2 GiB of data"
echo
echo "$runs runs of 32 MiB (half random, half zeros in 4 KiB stripes) spread over a 100 GiB"
echo "sparse file; encrypted store; blocks: $(json_field "$json" blocks.total) total," \
    "$(json_field "$json" blocks.data) data, $(json_field "$json" blocks.zero) zero;" \
    "stored $(megabytes "$stored") MB. Measured $(date -u '+%Y-%m-%d %H:%M UTC')$(
        [[ ${#BENCH_PRIORITY[@]} -gt 0 ]] && echo " under \`${BENCH_PRIORITY[*]}\`")."
echo
table_header lrrrrrl step "wall s" "CPU s" "peak RSS MiB" "sync s" "others CPU s" target
echo "| snapshot | ${WALL[memory/snapshot]} | ${CPU[memory/snapshot]} |" \
    "$(rss_mib "${RSS_KIB[memory/snapshot]}") | $snapshot_sync | ${OTHER_CPU[memory/snapshot]} |" \
    "peak RSS ≤ 256 MiB: $(meets "$(rss_mib "${RSS_KIB[memory/snapshot]}")" 256) |"
echo "| restore | ${WALL[memory/restore]} | ${CPU[memory/restore]} |" \
    "$(rss_mib "${RSS_KIB[memory/restore]}") | $restore_sync | ${OTHER_CPU[memory/restore]} |" \
    "runs identical: $identical; sparse ($(mebibytes "$allocated") MiB allocated): $sparse |"

[[ $identical == yes ]] || die "the restored image differs from the original"
