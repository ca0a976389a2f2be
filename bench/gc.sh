#!/usr/bin/env bash
# Measures `blockyard gc` on a local store of about a million blocks, of which it must delete
# half.
#
# Two raw images, A and B, each of BLOCKS / 2 blocks of 4 KiB (1,048,576 blocks in all by
# default, 4 GiB). Every block holds its own number, counted over both images, repeated
# through it: no block is zero and no two are the same, so each one is a file of its own in
# a store made with --block-size 4K. Both images are snapshotted; A is deleted and purged
# from the recycle bin, which leaves half the blocks and half the segments unreferenced.
#
# Then, each under GNU time for wall time, CPU time and peak memory:
#
#   gc --dry-run   reads the records and the segments they reach, lists every block and
#                  segment in the store and decides what to condemn; deletes nothing.
#   gc             the same, then writes the condemned lists, re-marks and deletes.
#   rm -rf         references for deleting as many files without blockyard: the blocks
#                  folder left after gc (as many files as gc deleted, in the same 4096
#                  folders) copied with `cp -a` and removed by one `rm -rf`; then copied
#                  again and removed by 32 `rm -rf` at once, each given 128 of the folders,
#                  as gc keeps 32 deletes in flight. --no-reference skips both.
#
# Afterwards `blockyard check` must find no problem and B must restore identical to its
# image. The target is a peak RSS of 200 MiB or less for the gc. The report goes to standard
# output and WORK/results/gc-<date>.md.
#
# Usage: bench/gc.sh [--blocks N] [--work DIR] [--wait-quiet SECS] [--no-reference]
#                    [--no-build]
# BLOCKS in the environment sets the default of --blocks.

set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
# shellcheck source=bench/lib.sh
source "$here/lib.sh"

usage() {
    cat >&2 <<'USAGE'
usage: bench/gc.sh [--blocks N] [--work DIR] [--wait-quiet SECS] [--no-reference]
                   [--no-build]
  --blocks N         4 KiB blocks in the two images together, even (default 1048576,
                     or $BLOCKS); try the script with 65536
  --work DIR         where the images, the store and results go (default target/bench-gc)
  --wait-quiet SECS  before the measured steps, wait up to SECS for other work to stop
  --no-reference     skip the two rm -rf references (each copies the blocks folder first)
  --no-build         use the release binary as it is
USAGE
    exit 2
}

blocks=${BLOCKS:-1048576}
work=$root/target/bench-gc
quiet_wait=0
reference=1
build=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --blocks) [[ $# -ge 2 ]] || usage; blocks=$2; shift 2 ;;
        --work) [[ $# -ge 2 ]] || usage; work=$2; shift 2 ;;
        --wait-quiet) [[ $# -ge 2 && $2 =~ ^[0-9]+$ ]] || usage; quiet_wait=$2; shift 2 ;;
        --no-reference) reference=0; shift ;;
        --no-build) build=0; shift ;;
        -h | --help) usage ;;
        *) echo "gc.sh: unknown argument $1" >&2; usage ;;
    esac
done
[[ $blocks =~ ^[1-9][0-9]*$ && $((blocks % 2)) -eq 0 ]] \
    || die "--blocks must be a positive even number, not $blocks"

require_tools cargo python3 cmp find findmnt

build_blockyard

block_bytes=4096
half=$((blocks / 2))
mkdir -p "$work"
work=$(cd "$work" && pwd)

# Room: the two images, the store (one file system block per block file, plus its
# folders), B restored and a copy for the references. Inodes: the store's blocks and the copy.
need_bytes=$((blocks * block_bytes * 3 + half * block_bytes * 2 + (1 << 30)))
need_inodes=$((blocks + half + 100000))
read -r free_bytes free_inodes < <(df --output=avail,iavail -B1 "$work" | tail -n 1)
[[ $free_bytes -ge $need_bytes ]] || die "$work has $(mebibytes "$free_bytes") MiB free;" \
    "the run needs about $(mebibytes "$need_bytes") MiB (--work elsewhere, or fewer --blocks)"
[[ $free_inodes -ge $need_inodes ]] || die "$work has $free_inodes free inodes;" \
    "the run needs about $need_inodes"

# --- Images, made once for each size and reused ------------------------------------------

images=$work/images
image_a=$images/gc-a-$blocks.raw
image_b=$images/gc-b-$blocks.raw
mkdir -p "$images"
for part in a b; do
    image=$images/gc-$part-$blocks.raw
    [[ -f $image.done ]] && continue
    first=0
    [[ $part == b ]] && first=$half
    note "writing image $part: blocks $first to $((first + half - 1))"
    rm -f "$image"
    python3 - "$image" "$first" "$half" <<'PY' || die "making image $part failed"
import struct, sys

path, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
# Block n holds n + 1 as a little-endian u64, 512 times: never zero, never repeated.
per_write = 256
with open(path, "wb") as f:
    for start in range(first, first + count, per_write):
        end = min(start + per_write, first + count)
        f.write(b"".join(struct.pack("<Q", n + 1) * 512 for n in range(start, end)))
PY
    touch "$image.done"
done

run=$work/run
fresh_dir "$run"
mkdir -p "$run/logs" "$work/results"
BENCH_LOGS=$run/logs
export XDG_CONFIG_HOME=$run/xdg/config XDG_CACHE_HOME=$run/xdg/cache XDG_DATA_HOME=$run/xdg/data
store=$run/store
by=("$blockyard" --quiet --store "$store")

# block_files DIR: the block files under DIR, counted apart from blockyard.
block_files() {
    find "$1" -type f | wc -l
}

# --- The store: both images in, A deleted and purged; not the measured part --------------

"${by[@]}" store init --block-size 4K >/dev/null
measure setup/snapshot-a "${by[@]}" --json snapshot create "$image_a"
id_a=$(json_field "$BENCH_LOGS/setup-snapshot-a.out" snapshot)
measure setup/snapshot-b "${by[@]}" --json snapshot create "$image_b"
id_b=$(json_field "$BENCH_LOGS/setup-snapshot-b.out" snapshot)
"${by[@]}" snapshot delete "$id_a" >/dev/null
"${by[@]}" recycle purge --older-than 0s >/dev/null
sync
stored_before=$(block_files "$store/blocks")
note "the store holds $stored_before block files; snapshot $id_a deleted and purged"
[[ $stored_before -eq $blocks ]] || die "expected $blocks block files, found $stored_before"

# --- Measured ------------------------------------------------------------------------------

[[ $quiet_wait -gt 0 ]] && wait_for_quiet "$quiet_wait"
measure gc/dry-run "${by[@]}" --json gc --grace 0s --dry-run
dry_sync=$(sync_seconds)
[[ $quiet_wait -gt 0 ]] && wait_for_quiet "$quiet_wait"
measure gc/real "${by[@]}" --json gc --grace 0s
gc_sync=$(sync_seconds)
stored_after=$(block_files "$store/blocks")

dry=$BENCH_LOGS/gc-dry-run.out
real=$BENCH_LOGS/gc-real.out

# --- Verified ------------------------------------------------------------------------------

measure verify/check "${by[@]}" --json check
problems=$(python3 -c 'import json, sys; print(len(json.load(open(sys.argv[1]))["problems"]))' \
    "$BENCH_LOGS/verify-check.out")
unreferenced=$(json_field "$BENCH_LOGS/verify-check.out" blocks_unreferenced)
restored=$run/b-restored.raw
measure verify/restore "${by[@]}" restore "$id_b" "$restored"
identical=yes
cmp -s "$image_b" "$restored" || identical='**no**'
rm -f "$restored"

# --- References: rm -rf of as many block files in the same folders ----------------------

# copy_blocks: a plain copy of the store's blocks folder, written back before it is removed.
copy_blocks() {
    cp -a "$store/blocks" "$run/blocks-copy"
    copied=$(block_files "$run/blocks-copy")
    sync
}

if [[ $reference -eq 1 ]]; then
    note "copying the remaining blocks folder for rm -rf"
    copy_blocks
    [[ $quiet_wait -gt 0 ]] && wait_for_quiet "$quiet_wait"
    measure reference/rm rm -rf "$run/blocks-copy"
    rm_sync=$(sync_seconds)

    note "copying it again for 32 rm -rf at once"
    copy_blocks
    [[ $quiet_wait -gt 0 ]] && wait_for_quiet "$quiet_wait"
    # shellcheck disable=SC2016 # $1 is the inner shell's
    measure reference/rm-parallel bash -c 'find "$1" -mindepth 1 -maxdepth 1 -print0 \
        | xargs -0 -P 32 -n 128 rm -rf && rmdir "$1"' _ "$run/blocks-copy"
    rm_parallel_sync=$(sync_seconds)
fi

# --- The report ----------------------------------------------------------------------------

# time_field LABEL FIELD: user (2) or system (3) seconds from a step's GNU time record.
time_field() {
    awk -v f="$2" 'END { print $f }' "$BENCH_LOGS/${1//\//-}.time"
}

per_second() {
    awk -v n="$1" -v s="$2" 'BEGIN { if (s + 0 == 0) print "n/a"; else printf "%.0f", n / s }'
}

deleted=$(json_field "$real" blocks_deleted)
gc_rss=$(rss_mib "${RSS_KIB[gc/real]}")
sweep_seconds=$(awk -v a="${WALL[gc/real]}" -v b="${WALL[gc/dry-run]}" \
    'BEGIN { printf "%.2f", a - b }')
met=missed
awk -v r="$gc_rss" 'BEGIN { exit !(r <= 200) }' && met=met

concurrency=$("$blockyard" gc --help | sed -n 's/.*\[default: \([0-9]*\)\].*/\1/p' | head -n 1)

report=$work/results/gc-$(date -u +%Y%m%d-%H%M).md
{
    echo "# Garbage collection at $blocks blocks"
    echo
    machine_section "$run"
    echo "- $("$blockyard" --version), binary built" \
        "$(date -u -r "$blockyard" '+%Y-%m-%d %H:%M UTC'); the work tree is at" \
        "$(git -C "$root" describe --always --dirty)"
    echo
    echo "Local store, not encrypted, --block-size 4K. Two images of $half distinct 4 KiB" \
        "blocks each; A deleted and purged, so gc must delete A's blocks and segments and" \
        "keep B's. gc's default concurrency: $concurrency deletes in flight. Each step ran" \
        "once; the page cache was not dropped."
    echo
    table_header lrrrrrr step "wall s" "user s" "system s" "peak RSS MiB" "sync s" "others CPU s"
    for label in setup/snapshot-a setup/snapshot-b gc/dry-run gc/real reference/rm \
        reference/rm-parallel; do
        [[ -n ${WALL[$label]:-} ]] || continue
        case $label in
            setup/snapshot-a) name="snapshot create A (setup)"; sync_s="" ;;
            setup/snapshot-b) name="snapshot create B (setup)"; sync_s="" ;;
            gc/dry-run) name="gc --grace 0s --dry-run"; sync_s=$dry_sync ;;
            gc/real) name="gc --grace 0s"; sync_s=$gc_sync ;;
            reference/rm) name="rm -rf of a copy of the $copied block files left"
                sync_s=$rm_sync ;;
            reference/rm-parallel) name="the same with 32 rm -rf at once"
                sync_s=$rm_parallel_sync ;;
        esac
        echo "| $name | ${WALL[$label]} | $(time_field "$label" 2) | $(time_field "$label" 3) |" \
            "$(rss_mib "${RSS_KIB[$label]}") | $sync_s | ${OTHER_CPU[$label]} |"
    done
    echo
    table_header lrr measure "dry run" gc
    echo "| snapshot records read | $(json_field "$dry" snapshots) |" \
        "$(json_field "$real" snapshots) |"
    echo "| segments referenced / listed | $(json_field "$dry" segments_referenced) /" \
        "$(json_field "$dry" segments_listed) | $(json_field "$real" segments_referenced) /" \
        "$(json_field "$real" segments_listed) |"
    echo "| blocks referenced / listed | $(json_field "$dry" blocks_referenced) /" \
        "$(json_field "$dry" blocks_listed) | $(json_field "$real" blocks_referenced) /" \
        "$(json_field "$real" blocks_listed) |"
    echo "| blocks condemned | $(json_field "$dry" blocks_condemned) |" \
        "$(json_field "$real" blocks_condemned) |"
    echo "| bytes condemned (MB) | $(megabytes "$(json_field "$dry" bytes_condemned)") |" \
        "$(megabytes "$(json_field "$real" bytes_condemned)") |"
    echo "| blocks deleted | | $deleted |"
    echo "| segments deleted | | $(json_field "$real" segments_deleted) |"
    echo "| spared | | $(json_field "$real" spared) |"
    echo "| blocks listed per second | $(per_second "$(json_field "$dry" blocks_listed)" \
        "${WALL[gc/dry-run]}") | |"
    echo "| blocks deleted per second, whole gc | |" \
        "$(per_second "$deleted" "${WALL[gc/real]}") |"
    echo "| blocks deleted per second, gc less the dry run ($sweep_seconds s) | |" \
        "$(per_second "$deleted" "$sweep_seconds") |"
    if [[ $reference -eq 1 ]]; then
        echo "| files removed per second: rm -rf, one / 32 at once | |" \
            "$(per_second "$copied" "${WALL[reference/rm]}") /" \
            "$(per_second "$copied" "${WALL[reference/rm-parallel]}") |"
    fi
    echo
    table_header lrll check value target result
    echo "| block files in the store before gc | $stored_before | ≥ 1,000,000 |" \
        "$(awk -v n="$stored_before" 'BEGIN { print (n >= 1000000) ? "met" : "a trial size" }') |"
    echo "| block files in the store after gc | $stored_after | $half | $(
        [[ $stored_after -eq $half ]] && echo met || echo '**missed**') |"
    echo "| gc of 1 million blocks on a local store: peak memory | $gc_rss MiB | ≤ 200 MiB |" \
        "$met |"
    echo "| \`blockyard check\` after gc: problems, unreferenced blocks |" \
        "$problems, $unreferenced | 0, 0 |" \
        "$([[ $problems -eq 0 && $unreferenced -eq 0 ]] && echo met || echo '**missed**') |"
    echo "| B restored after gc, \`cmp\` with its image | $identical | identical |" \
        "$([[ $identical == yes ]] && echo met || echo '**missed**') |"
} | tee "$report"
note "report: $report"

[[ $identical == yes && $problems -eq 0 && $unreferenced -eq 0 ]] \
    || die "the store is not intact after gc"
