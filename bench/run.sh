#!/usr/bin/env bash
# Measures blockyard against borg and restic on two nights of one machine image.
#
# Each tool starts from an empty repository of its own and does the same three steps: a
# snapshot of night 1, a snapshot of night 2 (which it may deduplicate against night 1) and
# a restore of night 2, checked byte for byte against the image. Every step runs under GNU
# time for wall time, CPU time and peak memory; the repository is measured after each
# snapshot. The page cache cannot be dropped reliably here, so the images are read once
# before each tool starts and every tool runs with them cached.
#
# The whole sequence is repeated (--repeat, default 3) with the tools interleaved, each
# repetition in new repositories, and the report gives the median of each measure: on
# this shared 2-core machine one run of a step varies by up to a third.
#
# The report, in Markdown, goes to standard output and to WORK/results/; progress and the
# tools' own output go to stderr and WORK/run/logs/.

# DISK and SYNC are filled here and read only through med's name reference.
# shellcheck disable=SC2034
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
# shellcheck source=bench/lib.sh
source "$here/lib.sh"

usage() {
    cat >&2 <<'EOF'
usage: bench/run.sh [--size 4G] [--work DIR] [--repeat N] [--wait-quiet SECONDS]
                    [--rebuild-images] [--no-build] [--memory]
  --size SIZE        size of the ext4 images (default 4G)
  --work DIR         where images, repositories and results go (default bench/work)
  --repeat N         run every tool's sequence N times and report medians (default 3)
  --wait-quiet SECS  before each repetition, wait up to SECS for other work to stop
  --rebuild-images   build the images again even if WORK/images has them
  --no-build         use the release binary as it is
  --memory           also run bench/memory.sh (a 100 GiB sparse image; needs ~3 GiB of disk)
EOF
    exit 2
}

shared_defaults
quiet_wait=0
image_flags=()
memory=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --wait-quiet) [[ $# -ge 2 && $2 =~ ^[0-9]+$ ]] || usage; quiet_wait=$2; shift 2 ;;
        --rebuild-images) image_flags=(--rebuild); shift ;;
        --memory) memory=1; shift ;;
        -h | --help) usage ;;
        *)
            shared_option "$@" || { echo "run.sh: unknown argument $1" >&2; usage; }
            shift "$OPTION_WORDS"
            ;;
    esac
done

require_tools cargo borg restic python3 cmp mkfs.ext4 debugfs findmnt

# --- The binary and the images ------------------------------------------------------------

build_blockyard

mkdir -p "$work"
work=$(cd "$work" && pwd)
images=$work/images
"$here/make-images.sh" "${image_flags[@]}" "$images" "$size" >"$work/images.summary" \
    || die "make-images.sh failed"
night1=$images/night1.img
night2=$images/night2.img

# Every run starts from nothing: new repositories, caches and outputs for each tool.
run=$work/run
fresh_dir "$run"
mkdir -p "$run/logs" "$work/results"
BENCH_LOGS=$run/logs
export XDG_CONFIG_HOME=$run/xdg/config XDG_CACHE_HOME=$run/xdg/cache XDG_DATA_HOME=$run/xdg/data

declare -A STORED DISK SYNC IDENTICAL ALLOCATED APPARENT

# after_snapshot LABEL REPO: the flush the step left behind, then the repository's size.
after_snapshot() {
    SYNC[$1]=$(sync_seconds)
    STORED[$1]=$(file_bytes "$2")
    DISK[$1]=$(disk_bytes "$2")
}

# after_restore LABEL FILE REPETITION: the flush, then the output checked against night 2
# (with cmp the first time, later by comparing only allocated ranges) and removed.
after_restore() {
    local label=$1 file=$2 repetition=$3
    SYNC[$label]=$(sync_seconds)
    [[ -f $file ]] || die "$label wrote no file at $file"
    IDENTICAL[$label]='**no**'
    if [[ $repetition -eq 1 ]]; then
        cmp -s "$file" "$night2" && IDENTICAL[$label]=yes
    else
        same_content "$night2" "$file" && IDENTICAL[$label]=yes
    fi
    ALLOCATED[$label]=$(allocated_bytes "$file")
    APPARENT[$label]=$(apparent_bytes "$file")
    rm -f "$file"
}

# --- blockyard ----------------------------------------------------------------------------

key=$run/master.key
head -c 32 /dev/urandom >"$key"
chmod 600 "$key"

# bench_blockyard TOOL ENCRYPT REPETITION
bench_blockyard() {
    local tool=$1 encrypt=$2 n=$3 id1 id2
    local store=$run/$tool-$n
    local cmd=("$blockyard" --quiet --store "$store")
    local init=(store init)
    if [[ $encrypt -eq 1 ]]; then
        cmd+=(--key-file "$key")
        init+=(--encrypt)
    fi

    warm "$night1" "$night2"
    measure "$tool/init/$n" "${cmd[@]}" "${init[@]}"

    measure "$tool/night1/$n" "${cmd[@]}" --json snapshot create "$night1"
    after_snapshot "$tool/night1/$n" "$store"
    id1=$(json_field "$BENCH_LOGS/$tool-night1-$n.out" snapshot)

    measure "$tool/night2/$n" "${cmd[@]}" --json snapshot create "$night2" --parent "$id1"
    after_snapshot "$tool/night2/$n" "$store"
    id2=$(json_field "$BENCH_LOGS/$tool-night2-$n.out" snapshot)

    measure "$tool/restore/$n" "${cmd[@]}" restore "$id2" "$run/$tool-night2.img"
    after_restore "$tool/restore/$n" "$run/$tool-night2.img" "$n"
}

# --- borg ---------------------------------------------------------------------------------

# borg's fastest settings that still deduplicate: the fixed 4 MiB chunker (no rolling hash),
# zstd level 1 like blockyard, holes skipped on read (--sparse) and written as holes on
# extract, and no encryption at all.
bench_borg() {
    local n=$1
    local repo=$run/borg-$n
    export BORG_BASE_DIR=$run/borg-home-$n
    export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
    # shellcheck disable=SC2054 # the commas belong to borg's arguments
    local create=(borg create --chunker-params fixed,4194304 --compression zstd,1 --sparse)

    warm "$night1" "$night2"
    measure "borg/init/$n" borg init -e none "$repo"

    # borg stores the path it is given; from the images folder that is the bare file name.
    cd "$images"
    measure "borg/night1/$n" "${create[@]}" "$repo::night1" night1.img
    after_snapshot "borg/night1/$n" "$repo"
    measure "borg/night2/$n" "${create[@]}" "$repo::night2" night2.img
    after_snapshot "borg/night2/$n" "$repo"

    mkdir -p "$run/borg-out"
    cd "$run/borg-out"
    measure "borg/restore/$n" borg extract --sparse "$repo::night2"
    after_restore "borg/restore/$n" "$run/borg-out/night2.img" "$n"
    cd "$here"
}

# --- restic -------------------------------------------------------------------------------

# restic always encrypts. Its repository format 2 compresses with zstd ("auto" is its
# default). Both nights are backed up from one path, a hard link to the night's image, so
# restic takes night 1's snapshot as the parent of night 2 by itself, as in daily use.
bench_restic() {
    local n=$1
    local source=$run/restic-source/disk.img
    export RESTIC_REPOSITORY=$run/restic-$n RESTIC_PASSWORD=blockyard-bench
    export RESTIC_CACHE_DIR=$run/restic-cache-$n
    mkdir -p "$(dirname "$source")"

    warm "$night1" "$night2"
    measure "restic/init/$n" restic init

    ln -f "$night1" "$source" || cp --sparse=always "$night1" "$source"
    measure "restic/night1/$n" restic backup --quiet --host bench "$source"
    after_snapshot "restic/night1/$n" "$RESTIC_REPOSITORY"

    ln -f "$night2" "$source" || cp --sparse=always "$night2" "$source"
    measure "restic/night2/$n" restic backup --quiet --host bench "$source"
    after_snapshot "restic/night2/$n" "$RESTIC_REPOSITORY"

    rm -rf "$run/restic-out"
    measure "restic/restore/$n" restic restore latest --quiet --host bench --target "$run/restic-out"
    after_restore "restic/restore/$n" "$run/restic-out$source" "$n"
}

# --- The runs -----------------------------------------------------------------------------

for ((n = 1; n <= repeat; n++)); do
    [[ $quiet_wait -gt 0 ]] && wait_for_quiet "$quiet_wait"
    note "repetition $n of $repeat"
    bench_blockyard blockyard 1 "$n"
    bench_blockyard blockyard-plain 0 "$n"
    bench_borg "$n"
    bench_restic "$n"
done

# --- The report ---------------------------------------------------------------------------

tools=(blockyard blockyard-plain borg restic)
declare -A TOOL_NAME=(
    [blockyard]="blockyard, encrypted"
    [blockyard-plain]="blockyard, not encrypted"
    [borg]="borg, not encrypted"
    [restic]="restic, encrypted"
)
declare -A STEP_NAME=(
    [night1]="snapshot night 1"
    [night2]="snapshot night 2"
    [restore]="restore night 2"
)
steps=(night1 night2 restore)

# best TOOL/STEP: the shortest wall time over the repetitions, the one least disturbed.
best() {
    local n list=()
    for ((n = 1; n <= repeat; n++)); do
        list+=("${WALL[$1/$n]}")
    done
    minimum "${list[@]}"
}

# Sizes are medians too: restic draws a new chunker polynomial for every repository, so its
# chunks, and what night 2 adds, differ from one repetition to the next.
stored() {
    local n list=()
    for ((n = 1; n <= repeat; n++)); do
        list+=("${STORED[$1/$n]}")
    done
    median "${list[@]}" | cut -d. -f1
}

increment() {
    local n list=()
    for ((n = 1; n <= repeat; n++)); do
        list+=("$(( ${STORED[$1/night2/$n]} - ${STORED[$1/night1/$n]} ))")
    done
    median "${list[@]}" | cut -d. -f1
}

declare -A WALL_MED CPU_MED RSS_MED SYNC_MED OTHER_MED
for tool in "${tools[@]}"; do
    for step in "${steps[@]}"; do
        WALL_MED[$tool/$step]=$(med WALL "$tool/$step")
        CPU_MED[$tool/$step]=$(med CPU "$tool/$step")
        RSS_MED[$tool/$step]=$(med RSS_KIB "$tool/$step")
        SYNC_MED[$tool/$step]=$(med SYNC "$tool/$step")
        OTHER_MED[$tool/$step]=$(med OTHER_CPU "$tool/$step")
    done
done

all_identical() {
    local n
    for ((n = 1; n <= repeat; n++)); do
        [[ ${IDENTICAL[$1/restore/$n]} == yes ]] || return 1
    done
}

sparse_output() {
    [[ ${ALLOCATED[$1/restore/1]} -lt ${APPARENT[$1/restore/1]} ]]
}

report() {
    local tool step label

    echo "# blockyard benchmark: two nights of a ${size} ext4 image"
    echo
    machine_section "$work"
    echo
    echo "## Tools"
    echo
    echo "- blockyard $("$blockyard" --version | cut -d' ' -f2), binary built" \
        "$(date -u -r "$blockyard" '+%Y-%m-%d %H:%M UTC'); the work tree is at commit" \
        "$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)$(
            git -C "$root" diff --quiet HEAD -- crates 2>/dev/null \
                || echo ' with uncommitted changes in crates/')"
    echo "- $(borg --version): \`borg create --chunker-params fixed,4194304 --compression" \
        "zstd,1 --sparse\`, \`borg init -e none\`, \`borg extract --sparse\`"
    echo "- $(restic version | cut -d' ' -f1-2): repository format" \
        "$(RESTIC_REPOSITORY=$run/restic-1 RESTIC_PASSWORD=blockyard-bench \
            RESTIC_CACHE_DIR=$run/restic-cache-1 restic cat config \
            | python3 -c 'import json, sys; print(json.load(sys.stdin)["version"])'),"
    echo "  compression auto, \`restic backup\` of one path (parent found by path), \`restic restore\`"
    echo
    echo "## Images"
    echo
    echo "- $(cat "$work/images.summary")"
    for image in "$night1" "$night2"; do
        echo "- $(basename "$image"): $(mebibytes "$(apparent_bytes "$image")") MiB apparent," \
            "$(mebibytes "$(allocated_bytes "$image")") MiB allocated"
    done
    echo
    echo "## Results (median of $repeat)"
    echo
    echo "Stored is the bytes in the repository's files after the step (for night 2, what"
    echo "night 2 added); on disk is \`du\` of the repository after the step. Sync is how long"
    echo "a \`sync\` right after the step took: the writing it left to the kernel (not in wall)."
    echo "Others is the CPU time other processes on the machine used during the step; above a"
    echo "few tenths of a second, the step shared the cores and its wall time is stretched."
    echo
    table_header llrrrrrrr step tool "wall s" "CPU s" "peak RSS MiB" "stored MB" "on disk MB" \
        "sync s" "others CPU s"
    for step in "${steps[@]}"; do
        for tool in "${tools[@]}"; do
            label=$tool/$step
            local stored=- disk=-
            case $step in
                night1) stored=$(megabytes "$(stored "$label")") ;;
                night2) stored=+$(megabytes "$(increment "$tool")") ;;
            esac
            [[ $step != restore ]] && disk=$(megabytes "$(med DISK "$label")")
            echo "| ${STEP_NAME[$step]} | ${TOOL_NAME[$tool]} | ${WALL_MED[$label]} |" \
                "${CPU_MED[$label]} | $(rss_mib "${RSS_MED[$label]}") | $stored | $disk |" \
                "${SYNC_MED[$label]} | ${OTHER_MED[$label]} |"
        done
    done
    echo
    echo "Wall seconds of each repetition (in brackets: other processes' CPU seconds meanwhile):"
    echo
    local columns=(step tool) alignment=ll n
    for ((n = 1; n <= repeat; n++)); do
        columns+=("$n")
        alignment+=r
    done
    table_header "$alignment" "${columns[@]}"
    for step in "${steps[@]}"; do
        for tool in "${tools[@]}"; do
            local row="| ${STEP_NAME[$step]} | ${TOOL_NAME[$tool]} |"
            for ((n = 1; n <= repeat; n++)); do
                row+=" ${WALL[$tool/$step/$n]} (${OTHER_CPU[$tool/$step/$n]}) |"
            done
            echo "$row"
        done
    done
    echo
    echo "Restored night 2 (identical: \`cmp\` in the first repetition, a comparison of the"
    echo "allocated ranges in the others):"
    echo
    table_header llrrl tool "identical every time" "apparent MiB" "allocated MiB" sparse
    for tool in "${tools[@]}"; do
        local identical='**no**' sparse=no
        all_identical "$tool" && identical=yes
        sparse_output "$tool" && sparse=yes
        echo "| ${TOOL_NAME[$tool]} | $identical | $(mebibytes "${APPARENT[$tool/restore/1]}") |" \
            "$(mebibytes "${ALLOCATED[$tool/restore/1]}") | $sparse |"
    done
    echo
    echo "blockyard's own account of the first repetition (from \`--json\`):"
    echo
    table_header llrrrrrrrr tool night blocks data zero new reused "bytes read" "bytes stored" \
        seconds
    for tool in blockyard blockyard-plain; do
        for step in night1 night2; do
            local json=$BENCH_LOGS/$tool-$step-1.out
            echo "| ${TOOL_NAME[$tool]} | ${step#night} | $(json_field "$json" blocks.total) |" \
                "$(json_field "$json" blocks.data) | $(json_field "$json" blocks.zero) |" \
                "$(json_field "$json" blocks.new) | $(json_field "$json" blocks.reused) |" \
                "$(json_field "$json" bytes_read) | $(json_field "$json" bytes_stored) |" \
                "$(awk -v s="$(json_field "$json" seconds)" 'BEGIN { printf "%.2f", s }') |"
        done
    done
    echo
    echo "## Ratios against the targets"
    echo
    echo "blockyard here is the encrypted row (restic encrypts too; borg runs unencrypted, its"
    echo "fastest). Times are median wall times, and the target is judged on them. Best compares"
    echo "each tool's shortest wall time, CPU the median CPU times (user + system): both are"
    echo "disturbed less by other work on the machine."
    echo
    table_header lrrrrll measure "blockyard / borg" "blockyard / restic" "best, / borg" \
        "CPU, / borg" target met
    local r_borg r_restic r_cpu r_best
    r_borg=$(ratio "${WALL_MED[blockyard/night1]}" "${WALL_MED[borg/night1]}")
    r_restic=$(ratio "${WALL_MED[blockyard/night1]}" "${WALL_MED[restic/night1]}")
    r_cpu=$(ratio "${CPU_MED[blockyard/night1]}" "${CPU_MED[borg/night1]}")
    r_best=$(ratio "$(best blockyard/night1)" "$(best borg/night1)")
    echo "| night 1 time | $r_borg | $r_restic | $r_best | $r_cpu | ≤ 0.5 × borg |" \
        "$(meets "$r_borg" 0.5) |"
    r_borg=$(ratio "$(stored blockyard/night1)" "$(stored borg/night1)")
    r_restic=$(ratio "$(stored blockyard/night1)" "$(stored restic/night1)")
    echo "| night 1 stored | $r_borg | $r_restic | | | ≤ 1.1 × restic | $(meets "$r_restic" 1.1) |"
    r_borg=$(ratio "${WALL_MED[blockyard/night2]}" "${WALL_MED[borg/night2]}")
    r_restic=$(ratio "${WALL_MED[blockyard/night2]}" "${WALL_MED[restic/night2]}")
    r_cpu=$(ratio "${CPU_MED[blockyard/night2]}" "${CPU_MED[borg/night2]}")
    r_best=$(ratio "$(best blockyard/night2)" "$(best borg/night2)")
    echo "| night 2 time | $r_borg | $r_restic | $r_best | $r_cpu | ≤ 0.4 × borg |" \
        "$(meets "$r_borg" 0.4) |"
    r_borg=$(ratio "$(increment blockyard)" "$(increment borg)")
    r_restic=$(ratio "$(increment blockyard)" "$(increment restic)")
    echo "| night 2 increment | $r_borg | $r_restic | | | ≤ 1.0 × restic | $(meets "$r_restic" 1.0) |"
    r_borg=$(ratio "${WALL_MED[blockyard/restore]}" "${WALL_MED[borg/restore]}")
    r_restic=$(ratio "${WALL_MED[blockyard/restore]}" "${WALL_MED[restic/restore]}")
    r_cpu=$(ratio "${CPU_MED[blockyard/restore]}" "${CPU_MED[borg/restore]}")
    r_best=$(ratio "$(best blockyard/restore)" "$(best borg/restore)")
    echo "| restore time | $r_borg | $r_restic | $r_best | $r_cpu | ≤ 0.25 × borg |" \
        "$(meets "$r_borg" 0.25) |"
    local met='**no**'
    all_identical blockyard && sparse_output blockyard && met=yes
    echo "| restore output identical and sparse | | | | | yes | $met |"
}

result_file=$work/results/$(date -u +%Y%m%dT%H%M%SZ)-$size.md
report | tee "$result_file"

if [[ $memory -eq 1 ]]; then
    echo | tee -a "$result_file"
    "$here/memory.sh" --no-build --work "$work" | tee -a "$result_file"
fi
note "report saved to $result_file"

for tool in "${tools[@]}"; do
    all_identical "$tool" || die "${TOOL_NAME[$tool]} restored a night 2 that differs"
done
