# shellcheck shell=bash
# Helpers shared by the scripts in bench/; sourced, never run, after the script has set
# `here` (this folder) and `root` (the workspace).
#
# Every measured command runs under GNU time. Its numbers land in the associative arrays
# below, keyed by a label such as "borg/night1", and its standard output and error in
# "$BENCH_LOGS/<label>.out" and ".err" (the label's slash becomes a dash).

# shellcheck disable=SC2034 # filled here, read by the scripts that source this file
declare -A WALL CPU RSS_KIB OTHER_CPU

die() {
    echo "bench: $*" >&2
    exit 1
}

note() {
    echo "bench [${SECONDS}s]: $*" >&2
}

require_tools() {
    local tool missing=()
    for tool in "$@"; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    [[ ! -x /usr/bin/time ]] && missing+=("/usr/bin/time (package time)")
    if [[ ${#missing[@]} -gt 0 ]]; then
        die "missing: ${missing[*]}; on Debian: apt-get install -y borgbackup restic e2fsprogs time"
    fi
}

# --- Options and the binary ----------------------------------------------------------------

# The command line of the scripts whose options are the shared ones below (copy.sh,
# formats.sh, pull.sh). A script with other options defines its own usage after sourcing
# this file, and shared_option calls that one.
usage() {
    echo "usage: bench/$(basename "$0") [--size 4G] [--work DIR] [--repeat N] [--no-build]" >&2
    exit 2
}

# shared_option ARG...: takes the option at the front of ARG if it is one the scripts that
# measure two nights share: --size SIZE (of the images), --work DIR, --repeat N or
# --no-build, which set size, work, repeat and build. OPTION_WORDS says how many words it
# took; for any other option it takes none and fails. A missing or bad value calls usage.
shared_option() {
    OPTION_WORDS=0
    case "$1" in
        --size) [[ $# -ge 2 ]] || usage; size=$2; OPTION_WORDS=2 ;;
        --work) [[ $# -ge 2 ]] || usage; work=$2; OPTION_WORDS=2 ;;
        --repeat) [[ $# -ge 2 && $2 =~ ^[1-9][0-9]*$ ]] || usage; repeat=$2; OPTION_WORDS=2 ;;
        --no-build) build=0; OPTION_WORDS=1 ;;
        *) return 1 ;;
    esac
}

# shared_defaults: the shared options' defaults: 4G images, WORK bench/work, 3 repetitions,
# and a build first.
# shellcheck disable=SC2154 # here comes from the sourcing script
shared_defaults() {
    size=4G
    work=$here/work
    repeat=3
    build=1
}

# parse_shared_options ARG...: the defaults, then a command line that holds only shared
# options; -h, --help or any other option prints the usage and exits.
parse_shared_options() {
    shared_defaults
    while [[ $# -gt 0 ]]; do
        [[ $1 == -h || $1 == --help ]] && usage
        if ! shared_option "$@"; then
            echo "$(basename "$0"): unknown argument $1" >&2
            usage
        fi
        shift "$OPTION_WORDS"
    done
}

# build_blockyard: builds the release binary unless build is 0 (--no-build), then sets
# blockyard to its path in the workspace's target folder.
# shellcheck disable=SC2154 # root comes from the sourcing script
build_blockyard() {
    if [[ $build -eq 1 ]]; then
        note "building blockyard (release)"
        (cd "$root" && cargo build --release -p blockyard) >&2 || die "cargo build failed"
    fi
    local target_dir
    target_dir=$(cd "$root" && cargo metadata --format-version 1 --no-deps \
        | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
    blockyard=$target_dir/release/blockyard
    [[ -x $blockyard ]] || die "$blockyard does not exist; run without --no-build"
}

# prepare_images: makes WORK absolute and the two nights of bench/make-images.sh in
# WORK/images at SIZE (built once and kept); sets work, images, night1 and night2.
# shellcheck disable=SC2034 # night2 is read by the scripts that compare two nights
prepare_images() {
    mkdir -p "$work"
    work=$(cd "$work" && pwd)
    images=$work/images
    "$here/make-images.sh" "$images" "$size" >/dev/null || die "make-images.sh failed"
    night1=$images/night1.img
    night2=$images/night2.img
}

# On a shared machine other work competes for the two cores. As root, every measured
# command, of every tool alike, runs at a raised priority so that it gets them first.
if [[ $EUID -eq 0 ]]; then
    BENCH_PRIORITY=(nice -n -15)
else
    BENCH_PRIORITY=()
fi

# measure LABEL COMMAND...: runs COMMAND, records wall seconds, CPU seconds (user + system,
# children included) and peak resident set size, and stops the benchmark if it fails.
measure() {
    local label=$1 log
    shift
    log=$BENCH_LOGS/${label//\//-}
    note "$label: $*"
    local busy_before
    busy_before=$(busy_seconds)
    if ! "${BENCH_PRIORITY[@]}" /usr/bin/time -o "$log.time" -f '%e %U %S %M' "$@" \
        >"$log.out" 2>"$log.err"; then
        echo "bench: $label failed: $*" >&2
        tail -n 20 "$log.err" >&2
        exit 1
    fi
    local wall user sys rss
    read -r wall user sys rss < <(tail -n 1 "$log.time")
    WALL[$label]=$wall
    CPU[$label]=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')
    RSS_KIB[$label]=$rss
    OTHER_CPU[$label]=$(awk -v a="$busy_before" -v b="$(busy_seconds)" -v c="${CPU[$label]}" \
        'BEGIN { o = b - a - c; printf "%.2f", o < 0 ? 0 : o }')
}

# CPU seconds all cores have been busy since boot. The difference over a step, less the
# step's own CPU time, is what other processes took meanwhile: on a shared machine, the
# sign that a step's wall time was stretched by someone else's work.
busy_seconds() {
    awk -v hz="$(getconf CLK_TCK)" '$1 == "cpu" {
        printf "%.2f", ($2 + $3 + $4 + $7 + $8 + $9) / hz; exit }' /proc/stat
}

# Seconds that `sync` takes: what the last step left for the kernel to write back.
sync_seconds() {
    local start end
    start=$(date +%s.%N)
    sync
    end=$(date +%s.%N)
    awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }'
}

# Bytes in the regular files under a folder: what a store holds, without the sizes that
# du -b gives folders themselves (4 KiB each, which would penalise a store of many folders).
file_bytes() {
    find "$1" -type f -printf '%s\n' | awk '{ s += $1 } END { printf "%d\n", s }'
}

# Bytes the file system allocates for a path (du's disk usage, rounded to its blocks).
disk_bytes() {
    du -sB1 "$1" | cut -f1
}

allocated_bytes() {
    stat -c '%b %B' "$1" | awk '{ printf "%d\n", $1 * $2 }'
}

apparent_bytes() {
    stat -c '%s' "$1"
}

megabytes() {
    awk -v b="$1" 'BEGIN { printf "%.1f", b / 1e6 }'
}

mebibytes() {
    awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'
}

rss_mib() {
    awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'
}

# ratio A B: A / B to two places, or "n/a" when B is zero or missing.
ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "n/a"; else printf "%.2f", a / b }'
}

# meets VALUE LIMIT: "yes" when VALUE <= LIMIT.
meets() {
    awk -v v="$1" -v l="$2" 'BEGIN { if (v == "n/a") print "n/a"; else print (v + 0 <= l + 0) ? "yes" : "**no**" }'
}

# wait_for_quiet SECONDS: waits, at most that long, until the cores have been nearly idle
# (under a tenth of a core busy) for three seconds in a row. Says so if they never were.
wait_for_quiet() {
    local deadline=$((SECONDS + $1)) before after
    while true; do
        before=$(busy_seconds)
        sleep 3
        after=$(busy_seconds)
        if awk -v a="$before" -v b="$after" 'BEGIN { exit !((b - a) / 3 < 0.1) }'; then
            return 0
        fi
        if [[ $SECONDS -ge $deadline ]]; then
            note "the machine is still busy with other work; measuring anyway"
            return 0
        fi
        note "waiting for other work on the machine to finish"
        sleep 7
    done
}

# fresh_dir DIR: makes DIR empty. When it held an earlier run, the wait matters: ext4 skips
# inodes freed in the last 30 seconds when it allocates new ones; right after a store was
# deleted, that search took a fifth of the CPU samples of a blockyard snapshot in a trial.
fresh_dir() {
    if [[ -e $1 ]]; then
        note "removing the earlier run in $1, then waiting 31 s for ext4 to settle"
        rm -rf "$1"
        sync
        sleep 31
    fi
    mkdir -p "$1"
}

# Reads a file once so that every tool starts with it in the page cache.
warm() {
    local file
    for file in "$@"; do
        cat "$file" >/dev/null
    done
}

# Reads only the allocated ranges of a file, for a sparse disk far larger than its data.
warm_data() {
    python3 - "$1" <<'PY'
import os, sys

with open(sys.argv[1], "rb") as f:
    fd, size, at = f.fileno(), os.fstat(f.fileno()).st_size, 0
    while at < size:
        try:
            start = os.lseek(fd, at, os.SEEK_DATA)
        except OSError:
            break
        at = os.lseek(fd, start, os.SEEK_HOLE)
        for offset in range(start, at, 1 << 22):
            os.pread(fd, min(1 << 22, at - offset), offset)
PY
}

json_field() {
    python3 -c 'import json, sys
doc = json.load(open(sys.argv[1]))
for key in sys.argv[2].split("."):
    doc = doc[key]
print(doc)' "$1" "$2"
}

machine_section() {
    local work=$1
    echo "## Machine"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- CPU: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "- memory: $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
    echo "- kernel: $(uname -sr)"
    echo "- OS: $(. /etc/os-release && echo "$PRETTY_NAME")"
    if [[ ${#BENCH_PRIORITY[@]} -gt 0 ]]; then
        echo "- priority: every measured command ran under \`${BENCH_PRIORITY[*]}\`"
    else
        echo "- priority: normal (not root)"
    fi
    echo "- file system of the work dir: $(findmnt -n -o FSTYPE,SOURCE --target "$work" | tr -s " ")"
    echo "- commit: $(git -C "$root" describe --always --dirty)"
}

# table_header ALIGNMENT COLUMN...: the header row and rule of a Markdown table. ALIGNMENT
# has a letter per column: l for text, aligned left, r for numbers, aligned right.
table_header() {
    local alignment=$1 header="|" rule="|" column i=0
    shift
    [[ ${#alignment} -eq $# ]] || die "table_header: ${#alignment} alignments for $# columns"
    for column in "$@"; do
        header+=" $column |"
        case ${alignment:i:1} in
            l) rule+="---|" ;;
            r) rule+="---:|" ;;
            *) die "table_header: alignment ${alignment:i:1} is neither l nor r" ;;
        esac
        i=$((i + 1))
    done
    echo "$header"
    echo "$rule"
}

# same_content ORIGINAL COPY: true when both files hold the same bytes. Reads only what
# either file has allocated (holes read as zeros), so it takes seconds where cmp reads the
# whole apparent size of two sparse disks.
same_content() {
    python3 - "$1" "$2" <<'PY'
import os, sys

def extents(fd, size):
    """The (start, end) runs of a file that are not holes."""
    runs, at = [], 0
    while at < size:
        try:
            start = os.lseek(fd, at, os.SEEK_DATA)
        except OSError:
            break
        end = os.lseek(fd, start, os.SEEK_HOLE)
        runs.append((start, end))
        at = end
    return runs

chunk = 1 << 22
with open(sys.argv[1], "rb") as a, open(sys.argv[2], "rb") as b:
    size = os.fstat(a.fileno()).st_size
    if os.fstat(b.fileno()).st_size != size:
        sys.exit(1)
    for fd in (a.fileno(), b.fileno()):
        for start, end in extents(fd, size):
            for at in range(start, end, chunk):
                length = min(chunk, end - at)
                if os.pread(a.fileno(), length, at) != os.pread(b.fileno(), length, at):
                    sys.exit(1)
PY
}

# minimum VALUE...: the smallest value.
minimum() {
    printf '%s\n' "$@" | sort -g | head -n 1
}

# median VALUE...: the middle value, or the mean of the middle two.
median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
        if (NR % 2) printf "%.2f", v[(NR + 1) / 2]; else printf "%.2f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# med ARRAY LABEL: the median of ARRAY[LABEL/1..repeat].
med() {
    local -n values=$1
    local label=$2 all=() i
    for ((i = 1; i <= repeat; i++)); do
        all+=("${values[$label/$i]:-0}")
    done
    median "${all[@]}"
}
