#!/usr/bin/env bash
# Measures import, export and overlay snapshots against qemu-img on the two nights that
# bench/make-images.sh builds.
#
#   import   night 1 as qcow2, VMDK (streamOptimized) and VHD (dynamic), each into a new
#            encrypted store, against blockyard's own import of the raw image and against
#            `qemu-img convert` of the same file to raw (what a tool that cannot read the
#            format must do first).
#   export   night 2 from a store to qcow2 and VMDK (monolithicSparse and streamOptimized),
#            against `qemu-img convert` of the raw night 2 to the same format and options.
#            Every output is checked with `qemu-img compare` against the raw image.
#   overlay  a qcow2 overlay on night 1 holding night 2's changes (the 64 KiB clusters that
#            differ, written into it with qemu-io), snapshotted with
#            --parent, against a full snapshot of night 2 with --parent; on the image as
#            built and on a copy grown to four times the size with the same change.
#
# Each step runs --repeat times (default 3) and the report gives medians. The report goes to
# standard output and WORK/results/formats-<date>.md.

set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
# shellcheck source=bench/lib.sh
source "$here/lib.sh"

parse_shared_options "$@"

require_tools cargo qemu-img python3 mkfs.ext4 debugfs findmnt

build_blockyard

prepare_images

run=$work/formats
fresh_dir "$run"
mkdir -p "$run/logs" "$run/in" "$work/results"
BENCH_LOGS=$run/logs
key=$run/master.key
head -c 32 /dev/urandom >"$key"
chmod 600 "$key"

# make_overlay BASE NEW OUT: a qcow2 overlay on BASE holding exactly the 64 KiB clusters
# in which NEW differs from BASE, written with qemu-io as a VM's writes would land.
# (`qemu-img convert -B` cannot make it: it copies every cluster allocated in its input,
# and a raw input has all of them allocated.)
make_overlay() {
    local base=$1 new=$2 out=$3 chunks
    chunks=$(mktemp -d)
    qemu-img create -q -f qcow2 -b "$base" -F raw "$out"
    python3 - "$base" "$new" "$chunks" <<'PY' >"$chunks/commands"
import os, sys

base, new, chunks = sys.argv[1:]
cluster = 64 << 10

def data_runs(fd, size):
    runs, at = [], 0
    while at < size:
        try:
            start = os.lseek(fd, at, os.SEEK_DATA)
        except OSError:
            break
        at = os.lseek(fd, start, os.SEEK_HOLE)
        runs.append((start // cluster * cluster, at))
    return runs

with open(base, "rb") as a, open(new, "rb") as b:
    size = os.fstat(b.fileno()).st_size
    offsets = set()
    for fd in (a.fileno(), b.fileno()):
        for start, end in data_runs(fd, size):
            offsets.update(range(start, end, cluster))
    n = 0
    for offset in sorted(offsets):
        length = min(cluster, size - offset)
        old, fresh = os.pread(a.fileno(), length, offset), os.pread(b.fileno(), length, offset)
        if old == fresh:
            continue
        if fresh.count(0) == len(fresh):
            print(f"write -q -z {offset} {length}")
            continue
        path = os.path.join(chunks, str(n))
        with open(path, "wb") as chunk:
            chunk.write(fresh)
        print(f"write -q -s {path} {offset} {length}")
        n += 1
PY
    qemu-io -f qcow2 "$out" <"$chunks/commands" >/dev/null
    rm -rf "$chunks"
}

# --- Inputs, made once and not timed ------------------------------------------------------

note "converting night 1 with qemu-img"
qemu-img convert -q -f raw -O qcow2 "$night1" "$run/in/night1.qcow2"
qemu-img convert -q -f raw -O vmdk -o subformat=streamOptimized "$night1" "$run/in/night1.vmdk"
qemu-img convert -q -f raw -O vpc -o subformat=dynamic,force_size=on "$night1" "$run/in/night1.vhd"
note "making the overlays"
make_overlay "$night1" "$night2" "$run/in/overlay.qcow2"
# The grown pair: the same data and the same change on a disk four times the size.
cp --sparse=always "$night1" "$run/in/big-night1.img"
truncate -s "$(($(stat -c %s "$night1") * 4))" "$run/in/big-night1.img"
cp --sparse=always "$night2" "$run/in/big-night2.img"
truncate -s "$(($(stat -c %s "$night2") * 4))" "$run/in/big-night2.img"
make_overlay "$run/in/big-night1.img" "$run/in/big-night2.img" "$run/in/big-overlay.qcow2"

declare -A FORMAT_OF=([qcow2]=qcow2 [vmdk]=vmdk [vhd]=vpc)
declare -A READ COMPARED

# measure runs commands under GNU time, which cannot run a shell function: an array.
by_cmd=("$blockyard" --quiet --key-file "$key" --store)

by() {
    "$blockyard" --quiet --key-file "$key" --store "$1" "${@:2}"
}

new_store() {
    rm -rf "$1"
    by "$1" store init --encrypt >/dev/null
}

for ((n = 1; n <= repeat; n++)); do
    note "repetition $n of $repeat"

    # Import: each format into a fresh store, as an import of an image never seen before.
    for input in raw qcow2 vmdk vhd; do
        file=$run/in/night1.$input
        [[ $input == raw ]] && file=$night1
        new_store "$run/import-$input"
        warm "$file"
        measure "import/$input/$n" "${by_cmd[@]}" "$run/import-$input" --json import "$file" --name night1
        if [[ $input != raw ]]; then
            warm "$file"
            measure "qemu-raw/$input/$n" qemu-img convert -f "${FORMAT_OF[$input]}" -O raw \
                "$file" "$run/qemu-out.raw"
            rm -f "$run/qemu-out.raw"
        fi
    done

    # Export: night 2 from a store holding both nights.
    store=$run/export-store
    new_store "$store"
    id1=$(by "$store" --json snapshot create "$night1" | json_field /dev/stdin snapshot)
    id2=$(by "$store" --json snapshot create "$night2" --parent "$id1" \
        | json_field /dev/stdin snapshot)
    for case in qcow2 vmdk-sparse vmdk-stream; do
        format=${case%%-*}
        options=()
        qemu_options=()
        case $case in
            vmdk-sparse) options=(--subformat monolithicSparse); qemu_options=(-o subformat=monolithicSparse) ;;
            vmdk-stream) options=(--subformat streamOptimized); qemu_options=(-o subformat=streamOptimized) ;;
        esac
        warm "$night2"
        measure "export/$case/$n" "${by_cmd[@]}" "$store" export "$id2" "$run/out.$format" \
            --format "$format" "${options[@]}" --force
        sync
        COMPARED[$case]='**no**'
        qemu-img compare -q -f raw -F "$format" "$night2" "$run/out.$format" && COMPARED[$case]=yes
        rm -f "$run/out.$format"
        # blockyard's export syncs its output before it returns; qemu-img does not, so its
        # step includes a sync of the file it wrote, for the same durable result.
        measure "qemu-export/$case/$n" bash -c 'qemu-img convert "$@" && sync "${@: -1}"' _ \
            -f raw -O "$format" "${qemu_options[@]}" "$night2" "$run/qemu.$format"
        sync
        rm -f "$run/qemu.$format"
    done

    # Overlay: the change as an overlay against a full snapshot, on two disk sizes.
    for pair in normal big; do
        prefix=""
        [[ $pair == big ]] && prefix=big-
        base=$night1
        full=$night2
        if [[ $pair == big ]]; then
            base=$run/in/big-night1.img
            full=$run/in/big-night2.img
        fi
        # Each in a store of its own holding only night 1, so both store the same new blocks.
        store=$run/overlay-$pair
        new_store "$store"
        id1=$(by "$store" --json snapshot create "$base" | json_field /dev/stdin snapshot)
        warm "$run/in/${prefix}overlay.qcow2"
        measure "overlay/$pair/$n" "${by_cmd[@]}" "$store" --json snapshot create \
            "$run/in/${prefix}overlay.qcow2" --parent "$id1"
        READ[overlay/$pair]=$(json_field "$BENCH_LOGS/overlay-$pair-$n.out" bytes_read)
        store=$run/full-$pair
        new_store "$store"
        id1=$(by "$store" --json snapshot create "$base" | json_field /dev/stdin snapshot)
        warm_data "$full"
        measure "full/$pair/$n" "${by_cmd[@]}" "$store" --json snapshot create "$full" \
            --parent "$id1"
        READ[full/$pair]=$(json_field "$BENCH_LOGS/full-$pair-$n.out" bytes_read)
    done
done

# --- The report ---------------------------------------------------------------------------

report=$work/results/formats-$(date -u +%Y%m%d-%H%M).md
{
    echo "# blockyard image formats against qemu-img"
    echo
    machine_section "$run"
    echo "- images: $(stat -c %s "$night1" | awk '{ printf "%.1f GiB", $1 / 2^30 }') ext4, night 1 with $(megabytes "$(allocated_bytes "$night1")") MB allocated"
    echo "- medians of $repeat runs; stores encrypted"
    echo
    echo "## Import of night 1"
    echo
    table_header lrrrrr input "file MB" "blockyard import s" "raw import s" "ratio to raw import" \
        "qemu-img convert to raw s"
    raw_import=$(med WALL import/raw)
    for input in qcow2 vmdk vhd; do
        echo "| $input | $(megabytes "$(allocated_bytes "$run/in/night1.$input")") | $(med WALL "import/$input") | $raw_import | $(ratio "$(med WALL "import/$input")" "$raw_import") | $(med WALL "qemu-raw/$input") |"
    done
    echo
    echo "## Export of night 2"
    echo
    table_header lrrrl output "blockyard export s" "qemu-img convert s" ratio "qemu-img compare"
    for case in qcow2 vmdk-sparse vmdk-stream; do
        echo "| $case | $(med WALL "export/$case") | $(med WALL "qemu-export/$case") | $(ratio "$(med WALL "export/$case")" "$(med WALL "qemu-export/$case")") | ${COMPARED[$case]} |"
    done
    echo
    echo "## Snapshot of night 2's change"
    echo
    table_header lrrrrrr disk "overlay MB" "overlay snapshot s" "bytes read" "full snapshot s" \
        "bytes read" "time ratio"
    for pair in normal big; do
        prefix=""
        [[ $pair == big ]] && prefix=big-
        disk=$night1
        [[ $pair == big ]] && disk=$run/in/big-night1.img
        echo "| $(stat -c %s "$disk" | awk '{ printf "%.0f GiB", $1 / 2^30 }') | $(megabytes "$(allocated_bytes "$run/in/${prefix}overlay.qcow2")") | $(med WALL "overlay/$pair") | $(megabytes "${READ[overlay/$pair]}") MB | $(med WALL "full/$pair") | $(megabytes "${READ[full/$pair]}") MB | $(ratio "$(med WALL "overlay/$pair")" "$(med WALL "full/$pair")") |"
    done
} | tee "$report"
note "report written to $report"
