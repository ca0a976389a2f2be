#!/usr/bin/env bash
# Measures `blockyard pull` of night 2 onto a runner that holds night 1, against `casync
# extract --seed` of the same images and `qemu-img convert` of night 2 from qcow2 to raw,
# on the two nights bench/make-images.sh builds.
#
#   pull, seed      night 2 pulled from an encrypted local store into a new file, night 1
#                   given as --seed: a runner that keeps last night's image elsewhere.
#   pull, output    night 2 pulled over a copy of night 1 (the copy is not timed): the
#                   runner's usual case, where OUTPUT is last night's image.
#   casync          `casync extract --seed` of night 2 from a chunk store and index made
#                   beforehand with `casync make`, into a new file.
#   qemu-img        `qemu-img convert` of night 2 from a qcow2 made beforehand, to raw.
#
# blockyard pull fsyncs its output before it renames it into place; casync and qemu-img do
# not, so their timed command ends with `sync FILE`, which fsyncs that file. Every source
# (images, stores, qcow2) is read once beforehand so that all start from the page cache.
#
# Each step runs --repeat times (default 3), interleaved; the report gives medians. The
# report goes to standard output and WORK/results/pull-<date>.md.

set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
# shellcheck source=bench/lib.sh
source "$here/lib.sh"

parse_shared_options "$@"

command -v casync >/dev/null || die "casync is missing; on Debian: apt-get install -y casync"
require_tools cargo qemu-img python3 mkfs.ext4 debugfs findmnt

build_blockyard

prepare_images

run=$work/pull
fresh_dir "$run"
mkdir -p "$run/logs" "$work/results"
BENCH_LOGS=$run/logs
export XDG_CONFIG_HOME=$run/xdg/config XDG_CACHE_HOME=$run/xdg/cache XDG_DATA_HOME=$run/xdg/data
key=$run/store.key
head -c 32 /dev/urandom >"$key"
chmod 600 "$key"

# Pull reports: per label, the bytes and blocks fetched from the store.
# shellcheck disable=SC2034 # read through med's name reference
declare -A FETCHED BLOCKS

record_pull() {
    local out=$BENCH_LOGS/${1//\//-}.out
    # shellcheck disable=SC2034 # read through med's name reference
    FETCHED[$1]=$(json_field "$out" bytes_fetched)
    # shellcheck disable=SC2034
    BLOCKS[$1]=$(json_field "$out" blocks_fetched)
}

# --- Sources, made once and not timed -----------------------------------------------------

store=$run/store
# measure runs commands under GNU time, which cannot run a shell function: an array.
by=("$blockyard" --quiet --store "$store" --key-file "$key")
note "snapshotting both nights into an encrypted store"
"${by[@]}" store init --encrypt >/dev/null
id1=$("${by[@]}" --json snapshot create "$night1" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["snapshot"])')
id2_report=$("${by[@]}" --json snapshot create "$night2" --parent "$id1")
id2=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["snapshot"])' "$id2_report")

# What differs: the distinct blocks night 2 holds at the indexes `snapshot diff` names, and
# the bytes their files take in the store, compressed and sealed as a fetch moves them.
"${by[@]}" --json snapshot diff "$id1" "$id2" >"$run/diff.json"
read -r diff_indexes diff_blocks diff_bytes < <(python3 - "$run/diff.json" "$store" <<'PY'
import json, os, sys

changed = json.load(open(sys.argv[1]))["changed"]
ids = {c["second"] for c in changed if c["second"]}
size = sum(os.path.getsize(os.path.join(sys.argv[2], "blocks", i[:3], i)) for i in ids)
print(len(changed), len(ids), size)
PY
)
note "night 2 differs at $diff_indexes indexes: $diff_blocks blocks, $diff_bytes bytes stored"

note "making night2.qcow2 and a casync store and index of night 2"
qemu-img convert -q -f raw -O qcow2 "$night2" "$run/night2.qcow2"
casync make --store="$run/casync.castr" "$run/night2.caibx" "$night2" >/dev/null

out=$run/out.img
warm "$night1" "$run/night2.qcow2" "$run/night2.caibx"
find "$store" "$run/casync.castr" -type f -exec cat {} + >/dev/null
wait_for_quiet 300

# The timed shells take their paths as arguments, expanded inside them.
# shellcheck disable=SC2016
for ((n = 1; n <= repeat; n++)); do
    note "repetition $n of $repeat"

    rm -f "$out"
    measure "pull/seed/$n" "${by[@]}" --json pull "$id2" "$out" --seed "$night1"
    record_pull "pull/seed/$n"
    if [[ $n -eq 1 ]]; then
        same_content "$night2" "$out" || die "pull with a seed wrote another image"
    fi

    # The runner's case: last night's image is the output. The copy is not timed.
    rm -f "$out"
    cp --sparse=always "$night1" "$out"
    sync "$out"
    measure "pull/output/$n" "${by[@]}" --json pull "$id2" "$out"
    record_pull "pull/output/$n"
    if [[ $n -eq 1 ]]; then
        same_content "$night2" "$out" || die "pull over night 1 wrote another image"
    fi

    rm -f "$out"
    measure "casync/$n" sh -c 'casync extract --store="$1" --seed="$2" "$3" "$4" && sync "$4"' \
        sh "$run/casync.castr" "$night1" "$run/night2.caibx" "$out"
    if [[ $n -eq 1 ]]; then
        same_content "$night2" "$out" || die "casync extract wrote another image"
    fi

    rm -f "$out"
    measure "qemu-img/$n" sh -c 'qemu-img convert -f qcow2 -O raw "$1" "$2" && sync "$2"' \
        sh "$run/night2.qcow2" "$out"
    rm -f "$out"
done

# --- Report -------------------------------------------------------------------------------

qcow2_bytes=$(allocated_bytes "$run/night2.qcow2")
time_casync=$(ratio "$(med WALL pull/seed)" "$(med WALL casync)")
time_qemu=$(ratio "$(med WALL pull/seed)" "$(med WALL qemu-img)")
bytes_diff=$(ratio "$(med FETCHED pull/seed)" "$diff_bytes")
report=$work/results/pull-$(date -u +%Y%m%d-%H%M).md
{
    echo "# Pull of night 2 onto a runner"
    echo
    machine_section "$run"
    echo "- images: $(du -h --apparent-size "$night1" | cut -f1) each; medians of $repeat runs"
    echo "- night 2 against night 1: $diff_indexes indexes differ, $diff_blocks distinct" \
        "blocks, $(megabytes "$diff_bytes") MB in the store's block files"
    echo "- casync: chunk store and index made by \`casync make\` with its defaults"
    echo
    table_header lrrrrrr step seconds "CPU s" "peak RSS MiB" "others CPU s" "MB fetched or read" \
        "blocks fetched"
    for label in pull/seed pull/output; do
        echo "| blockyard $label | $(med WALL "$label") | $(med CPU "$label") |" \
            "$(rss_mib "$(med RSS_KIB "$label")") | $(med OTHER_CPU "$label") |" \
            "$(megabytes "$(med FETCHED "$label")") | $(printf %.0f "$(med BLOCKS "$label")") |"
    done
    echo "| casync extract --seed | $(med WALL casync) | $(med CPU casync) |" \
        "$(rss_mib "$(med RSS_KIB casync)") | $(med OTHER_CPU casync) | | |"
    echo "| qemu-img convert | $(med WALL qemu-img) | $(med CPU qemu-img) |" \
        "$(rss_mib "$(med RSS_KIB qemu-img)") | $(med OTHER_CPU qemu-img) |" \
        "$(megabytes "$qcow2_bytes") | |"
    echo
    table_header lrll measure value target met
    echo "| time: pull with seed / casync extract --seed | $time_casync | ≤ 0.1 |" \
        "$(meets "$time_casync" 0.1) |"
    echo "| time: pull with seed / qemu-img convert qcow2 → raw | $time_qemu | ≤ 3 |" \
        "$(meets "$time_qemu" 3) |"
    echo "| bytes: fetched with seed / stored size of the blocks that differ | $bytes_diff |" \
        "≤ 1 | $(meets "$bytes_diff" 1) |"
} | tee "$report"
note "report: $report"
