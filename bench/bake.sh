#!/usr/bin/env bash
# Measures `blockyard bake` of night 2 with three local regions against snapshotting night 2
# alone, on night 1 of the images bench/make-images.sh builds.
#
# Night 1 is baked once, untimed: the pipeline imports night1.img, runs the update script
# of examples/nightly (debugfs writes this night's "dependencies" into the ext4 image),
# snapshots, registers and copies the image to regions eu, us and ap of one key domain, all
# four stores local and encrypted. The state after it (stores and the bake's work folder)
# is saved, and each repetition starts again from it:
#
#   bake        `blockyard bake` of night 2: the volume (last night's kept image), the
#               update script, the incremental snapshot, registration, the copy to three
#               regions, promotion and retention.
#   snapshot    `blockyard snapshot create` of the volume night 2 produced, with night 1 as
#               its parent, into the home store as it was after night 1: what it costs to
#               store night 2 at all, without the pipeline around it.
#
# The target compares the whole bake with the snapshot alone; the table also gives the bake
# without its update script, which is the user's work, not blockyard's.
#
# Each step runs --repeat times (default 3), interleaved; the report gives medians. The
# report goes to standard output and WORK/results/bake-<date>.md.

set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
# shellcheck source=bench/lib.sh
source "$here/lib.sh"

parse_shared_options "$@"
require_tools cargo python3 mkfs.ext4 debugfs findmnt
build_blockyard

prepare_images

run=$work/bake
fresh_dir "$run"
mkdir -p "$run/logs" "$work/results" "$run/live"
BENCH_LOGS=$run/logs
export XDG_CONFIG_HOME=$run/xdg/config XDG_CACHE_HOME=$run/xdg/cache XDG_DATA_HOME=$run/xdg/data

# --- Night 1, baked once and not timed ----------------------------------------------------

live=$run/live
cd "$live"
head -c 32 /dev/urandom >master.key
chmod 600 master.key
cp "$root/examples/nightly/update.sh" .
{
    for store in home eu us ap; do
        printf '[stores.%s]\nurl = "stores/%s"\nkey_file = "master.key"\n\n' "$store" "$store"
    done
} >blockyard.toml
cat >pipeline.toml <<TOML
[[pipeline]]
name = "ci"
family = "ci"
base = "ci@latest"
first_import = { from = "$night1", format = "raw" }
command = ["sh", "update.sh", "{volume}"]
home = "home"
regions = ["eu", "us", "ap"]
TOML
by=("$blockyard" --quiet --config "$live/blockyard.toml")
"${by[@]}" --store home store init --encrypt >/dev/null
for region in eu us ap; do
    "${by[@]}" --store "$region" store init --like home >/dev/null
done
note "baking night 1 (imports night1.img, copies it to three regions)"
NIGHT=1 "${by[@]}" --json bake pipeline.toml >"$run/night1.json" || die "night 1 failed"
id1=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["pipelines"][0]
    ["snapshot"]["id"])' "$run/night1.json")
saved=$run/after-night1
cp -a "$live" "$saved"

# restore: puts the stores and the bake's work folder back as night 1 left them.
restore() {
    cd "$run"
    rm -rf "$live"
    cp -a "$saved" "$live"
    cd "$live"
    sync
}

# Bake reports: per label, the seconds of the update phase and what the run moved.
# shellcheck disable=SC2034 # read through med's name reference
declare -A UPDATE_S NOT_UPDATE_S CHANGED MOVED

# shellcheck disable=SC2016
for ((n = 1; n <= repeat; n++)); do
    note "repetition $n of $repeat"

    restore
    find stores -type f -exec cat {} + >/dev/null
    warm_data .bake/volumes/ci/snap-*.raw
    wait_for_quiet 120
    NIGHT=2 measure "bake/$n" "${by[@]}" --json bake pipeline.toml
    read -r UPDATE_S[bake/$n] CHANGED[bake/$n] MOVED[bake/$n] volume < <(python3 - \
        "$BENCH_LOGS/bake-$n.out" <<'PY'
import json, sys
ci = json.load(open(sys.argv[1]))["pipelines"][0]
update = sum(p["end"] - p["start"] for p in ci["phases"] if p["name"] == "update")
moved = sum(r["bytes_moved"] for r in ci["regions"])
snapshot = ci["snapshot"]
print(f"{update:.2f}", snapshot["bytes_changed"], moved, f"{snapshot['id']}.raw")
PY
    )
    # shellcheck disable=SC2034 # read through med's name reference
    NOT_UPDATE_S[bake/$n]=$(awk -v a="${WALL[bake/$n]}" -v b="${UPDATE_S[bake/$n]}" \
        'BEGIN { printf "%.2f", a - b }')
    # The volume night 2 produced, kept by the bake: snapshot it alone into the home store
    # as night 1 left it.
    mv ".bake/volumes/ci/$volume" "$run/night2.raw"
    restore
    warm_data "$run/night2.raw"
    find stores/home -type f -exec cat {} + >/dev/null
    wait_for_quiet 120
    measure "snapshot/$n" "${by[@]}" --store home --json snapshot create "$run/night2.raw" \
        --parent "$id1"
    rm -f "$run/night2.raw"
done
cd "$run"

# --- Report -------------------------------------------------------------------------------

ratio_all=$(ratio "$(med WALL bake)" "$(med WALL snapshot)")
ratio_ours=$(ratio "$(med NOT_UPDATE_S bake)" "$(med WALL snapshot)")
report=$work/results/bake-$(date -u +%Y%m%d-%H%M).md
{
    echo "# Bake of night 2 with three local regions"
    echo
    machine_section "$run"
    echo "- images: $(du -h --apparent-size "$night1" | cut -f1); medians of $repeat runs"
    echo "- night 2: $(megabytes "$(med CHANGED bake)") MB changed by the update script;" \
        "$(megabytes "$(med MOVED bake)") MB moved to the three regions together"
    echo
    table_header lrrrr step seconds "CPU s" "peak RSS MiB" "others CPU s"
    echo "| blockyard bake (3 regions) | $(med WALL bake) | $(med CPU bake) |" \
        "$(rss_mib "$(med RSS_KIB bake)") | $(med OTHER_CPU bake) |"
    echo "| of which the update script | $(med UPDATE_S bake) | | | |"
    echo "| blockyard snapshot create --parent | $(med WALL snapshot) |" \
        "$(med CPU snapshot) | $(rss_mib "$(med RSS_KIB snapshot)") |" \
        "$(med OTHER_CPU snapshot) |"
    echo
    table_header lrll measure value target met
    echo "| time: bake / snapshot alone | $ratio_all | ≤ 2 | $(meets "$ratio_all" 2) |"
    echo "| time: bake without the update script / snapshot alone | $ratio_ours | ≤ 2 |" \
        "$(meets "$ratio_ours" 2) |"
} | tee "$report"
note "report: $report"
