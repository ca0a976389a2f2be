#!/usr/bin/env bash
# Measures `blockyard copy` between stores against `restic copy` between two repositories
# and `rsync --no-whole-file` of the raw images, on the two nights bench/make-images.sh
# builds.
#
#   lineage    night 1, then night 2 (snapshotted with --parent), copied to a second store
#              of the same key domain: verbatim, no key in the copying process.
#   no parent  night 2 converted to qcow2 and imported with no parent, copied to a store
#              that holds only night 1: must move what the lineage case moves.
#   fan-out    night 1 copied to three stores at once, against one store.
#   reseal     night 1 then night 2 into a store of another key domain (keys on both sides).
#   restic     `restic copy` of night 1's, then night 2's snapshot into a second repository
#              made with --copy-chunker-params.
#   rsync      night 1 copied whole, then night 2 onto it with --no-whole-file; its
#              "Literal data" is what it moved.
#   garage     when scripts/garage.sh has a server running (or GARAGE_ENV names its env
#              file), the lineage copies again into an S3 store on it, with request counts.
#
# Each step runs --repeat times (default 3); the report gives medians. The report goes to
# standard output and WORK/results/copy-<date>.md.

set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
# shellcheck source=bench/lib.sh
source "$here/lib.sh"

parse_shared_options "$@"

require_tools cargo restic rsync qemu-img python3 mkfs.ext4 debugfs findmnt

build_blockyard

prepare_images

run=$work/copy
fresh_dir "$run"
mkdir -p "$run/logs" "$work/results"
BENCH_LOGS=$run/logs
export XDG_CONFIG_HOME=$run/xdg/config XDG_CACHE_HOME=$run/xdg/cache XDG_DATA_HOME=$run/xdg/data
key=$run/source.key
dest_key=$run/dest.key
head -c 32 /dev/urandom >"$key"
head -c 32 /dev/urandom >"$dest_key"
chmod 600 "$key" "$dest_key"

garage_env=${GARAGE_ENV:-$root/target/garage/env}
garage=0
if [[ -f $garage_env ]]; then
    # shellcheck disable=SC1090
    source "$garage_env"
    garage=1
fi

# Copy reports: per label, the destination's blocks copied, bytes moved and requests.
declare -A MOVED BLOCKS PUTS REQUESTS GROWTH

# A copy's first destination report, field by field.
copy_field() {
    python3 -c 'import json, sys
doc = json.load(open(sys.argv[1]))["destinations"][0]
for key in sys.argv[2].split("."):
    doc = doc.get(key, 0) if isinstance(doc, dict) else 0
print(doc)' "$1" "$2"
}

# shellcheck disable=SC2034 # read through med's name reference
record_copy() {
    local label=$1 out=$BENCH_LOGS/${1//\//-}.out
    MOVED[$label]=$(copy_field "$out" bytes_moved)
    BLOCKS[$label]=$(copy_field "$out" blocks_copied)
    PUTS[$label]=$(copy_field "$out" requests.put)
    REQUESTS[$label]=$(copy_field "$out" requests.total)
}

# --- Sources, made once and not timed -----------------------------------------------------

source_store=$run/source
# measure runs commands under GNU time, which cannot run a shell function: an array.
by=("$blockyard" --quiet)
note "snapshotting both nights into the source store"
"${by[@]}" --store "$source_store" --key-file "$key" store init --encrypt >/dev/null
id1=$("${by[@]}" --store "$source_store" --key-file "$key" --json snapshot create "$night1" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["snapshot"])')
id2=$("${by[@]}" --store "$source_store" --key-file "$key" --json snapshot create "$night2" \
    --parent "$id1" | python3 -c 'import json, sys; print(json.load(sys.stdin)["snapshot"])')
note "importing night 2 from qcow2 with no parent"
qemu-img convert -q -f raw -O qcow2 "$night2" "$run/night2.qcow2"
id2_orphan=$("${by[@]}" --store "$source_store" --key-file "$key" --json \
    import "$run/night2.qcow2" --name night2 \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["snapshots"][0]["snapshot"])')
rm -f "$run/night2.qcow2"

note "backing both nights up with restic"
export RESTIC_PASSWORD=blockyard-bench RESTIC_FROM_PASSWORD=blockyard-bench
export RESTIC_CACHE_DIR=$run/restic-cache
restic_source=$run/restic-source/disk.img
mkdir -p "$(dirname "$restic_source")"
restic -r "$run/restic-a" init >/dev/null
ln -f "$night1" "$restic_source"
restic -r "$run/restic-a" backup --quiet --host bench --tag night1 "$restic_source"
ln -f "$night2" "$restic_source"
restic -r "$run/restic-a" backup --quiet --host bench --tag night2 "$restic_source"

# like DEST: a store in the source's key domain.
like() {
    "${by[@]}" --store "$1" --key-file "$dest_key" store init --like "$source_store" \
        --like-key-file "$key" >/dev/null
}

for ((n = 1; n <= repeat; n++)); do
    note "repetition $n of $repeat"

    # Lineage: night 1 then night 2 into a store of the same domain, with no key.
    dest=$run/dest-$n
    like "$dest"
    warm "$night1"
    measure "lineage/night1/$n" "${by[@]}" --json --store "$source_store" copy "$id1" \
        --to "$dest"
    record_copy "lineage/night1/$n"
    measure "lineage/night2/$n" "${by[@]}" --json --store "$source_store" copy "$id2" \
        --to "$dest"
    record_copy "lineage/night2/$n"

    # No parent: night 2 imported from qcow2 into a store that holds only night 1.
    orphan=$run/orphan-$n
    like "$orphan"
    "${by[@]}" --store "$source_store" copy "$id1" --to "$orphan" >/dev/null
    measure "orphan/night2/$n" "${by[@]}" --json --store "$source_store" copy "$id2_orphan" \
        --to "$orphan"
    record_copy "orphan/night2/$n"

    # Fan-out: night 1 to three stores at once.
    fan=()
    for region in a b c; do
        like "$run/fan-$region-$n"
        fan+=("$run/fan-$region-$n")
    done
    measure "fanout/night1/$n" "${by[@]}" --json --store "$source_store" copy "$id1" \
        --to "$(IFS=,; echo "${fan[*]}")"
    record_copy "fanout/night1/$n"

    # Reseal: another key domain; the process needs both keys.
    vault=$run/vault-$n
    "${by[@]}" --store "$vault" --key-file "$dest_key" store init --encrypt >/dev/null
    measure "reseal/night1/$n" "${by[@]}" --json --store "$source_store" --key-file "$key" \
        copy "$id1" --to "$vault" --to-key-file "$dest_key"
    record_copy "reseal/night1/$n"
    measure "reseal/night2/$n" "${by[@]}" --json --store "$source_store" --key-file "$key" \
        copy "$id2" --to "$vault" --to-key-file "$dest_key"
    record_copy "reseal/night2/$n"

    # restic copy into a second repository with the same chunker parameters.
    repo=$run/restic-b-$n
    restic -r "$repo" init --from-repo "$run/restic-a" --copy-chunker-params >/dev/null
    measure "restic/night1/$n" restic -r "$repo" copy --from-repo "$run/restic-a" \
        --tag night1
    before=$(file_bytes "$repo")
    measure "restic/night2/$n" restic -r "$repo" copy --from-repo "$run/restic-a" \
        --tag night2
    GROWTH["restic/night2/$n"]=$(($(file_bytes "$repo") - before))

    # rsync: the whole of night 1, then night 2's delta onto it.
    mirror=$run/rsync-$n
    mkdir -p "$mirror"
    measure "rsync/night1/$n" rsync --sparse --stats "$night1" "$mirror/disk.img"
    measure "rsync/night2/$n" rsync --no-whole-file --inplace --stats "$night2" \
        "$mirror/disk.img"
    GROWTH["rsync/night2/$n"]=$(awk -F': ' '/^Literal data/ { gsub(/[^0-9]/, "", $2); print $2 }' \
        "$BENCH_LOGS/rsync-night2-$n.out")
    rm -rf "$mirror"

    if [[ $garage -eq 1 ]]; then
        s3=s3://${BLOCKYARD_TEST_S3_BUCKET:-blockyard-test}/bench-copy-$n-$RANDOM
        like "$s3"
        measure "garage/night1/$n" "${by[@]}" --json --store "$source_store" copy "$id1" \
            --to "$s3"
        record_copy "garage/night1/$n"
        measure "garage/night2/$n" "${by[@]}" --json --store "$source_store" copy "$id2" \
            --to "$s3"
        record_copy "garage/night2/$n"
    fi
    rm -rf "$dest" "$orphan" "${fan[@]}" "$vault" "$repo"
done

# --- Report -------------------------------------------------------------------------------

report=$work/results/copy-$(date -u +%Y%m%d-%H%M).md
{
    echo "# Copy between stores"
    echo
    machine_section "$run"
    echo "- images: $(du -h --apparent-size "$night1" | cut -f1) each; medians of $repeat runs"
    echo
    table_header lrrrrrr step seconds "CPU s" "bytes moved (MB)" blocks PUTs requests
    for label in lineage/night1 lineage/night2 orphan/night2 fanout/night1 reseal/night1 \
        reseal/night2 garage/night1 garage/night2; do
        [[ -n ${WALL[$label/1]:-} ]] || continue
        echo "| blockyard $label | $(med WALL "$label") | $(med CPU "$label") |" \
            "$(megabytes "$(med MOVED "$label")") | $(med BLOCKS "$label") |" \
            "$(med PUTS "$label") | $(med REQUESTS "$label") |"
    done
    for label in restic/night1 restic/night2 rsync/night1 rsync/night2; do
        moved=""
        [[ -n ${GROWTH[$label/1]:-} ]] && moved=$(megabytes "$(med GROWTH "$label")")
        echo "| $label | $(med WALL "$label") | $(med CPU "$label") | $moved | | | |"
    done
    echo
    table_header lrl ratio value target
    echo "| night 2 bytes: blockyard / restic copy growth |" \
        "$(ratio "$(med MOVED lineage/night2)" "$(med GROWTH restic/night2)") | ≤ 1 |"
    echo "| night 2 bytes: blockyard / rsync literal data |" \
        "$(ratio "$(med MOVED lineage/night2)" "$(med GROWTH rsync/night2)") | ≤ 0.9 |"
    echo "| night 2 bytes: no parent / with parent |" \
        "$(ratio "$(med MOVED orphan/night2)" "$(med MOVED lineage/night2)") | = 1 |"
    echo "| night 2 time: blockyard / restic copy |" \
        "$(ratio "$(med WALL lineage/night2)" "$(med WALL restic/night2)") | ≤ 0.25 |"
    echo "| fan-out to 3 / copy to 1 (night 1) |" \
        "$(ratio "$(med WALL fanout/night1)" "$(med WALL lineage/night1)") | ≤ 1.3 |"
    if [[ $garage -eq 1 ]]; then
        echo "| Garage night 2: PUTs − blocks copied |" \
            "$(awk -v p="$(med PUTS garage/night2)" -v b="$(med BLOCKS garage/night2)" \
                'BEGIN { print p - b }') | small constant |"
    fi
} | tee "$report"
note "report: $report"
