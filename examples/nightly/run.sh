#!/usr/bin/env bash
# The nightly job, two nights of it, on one machine: four local stores stand in for a home
# bucket and three regions. The first night imports a base ext4 image built here with
# `mkfs.ext4 -d` from a tree of this machine's files; each night, update.sh installs that
# night's "dependencies" into the image with debugfs, and `blockyard bake` snapshots it,
# registers it, copies it to the regions, promotes it everywhere and applies retention. The
# ci-tools pipeline then updates a qcow2 overlay on the new image. Both reports are printed,
# and written as JSON and HTML. Last, a CI runner that holds night 1 pulls night 2 from a
# region, fetching only what changed, and the result is compared with the baked volume.
#
# Usage: examples/nightly/run.sh [WORKDIR] [SIZE]   (defaults: target/nightly, 2G)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=${1:-$root/target/nightly}
size=${2:-2G}

bash "$root/scripts/need.sh" mkfs.ext4=e2fsprogs debugfs=e2fsprogs qemu-io=qemu-utils \
    python3=python3

echo "== building blockyard (release)"
(cd "$root" && cargo build --release --locked -p blockyard)
by=$root/target/release/blockyard

echo "== setting up $work: four stores, one key, the pipeline files"
rm -rf "$work"
mkdir -p "$work/images" "$work/runner"
cp "$here/pipeline.toml" "$here/blockyard.toml" "$here/update.sh" "$here/update-overlay.sh" \
    "$work/"
cd "$work"
head -c 32 /dev/urandom > master.key
chmod 600 master.key
by() { "$by" --config blockyard.toml "$@"; }
by --store home store init --encrypt >/dev/null
for region in eu us ap; do
    # One key domain: copies move sealed blocks verbatim, with no key needed to read them.
    by --store "$region" store init --like home >/dev/null
done

echo "== the base image: mkfs.ext4 -d over a tree of this machine's files"
tree=$work/tree
mkdir -p "$tree/usr" "$tree/deps"
cp -a /usr/bin "$tree/usr/" 2>/dev/null || true
cp -a /usr/share/doc "$tree/usr/" 2>/dev/null || true
echo "base image" > "$tree/deps/MANIFEST"
mkfs.ext4 -q -F -d "$tree" -L ci images/base.img "$size"
rm -rf "$tree"

report() {
    # The newest run report, and its page.
    local json
    json=$(ls -t .bake/runs/*.json | head -n 1)
    by report "$json" --html "${json%.json}.html" >/dev/null
    echo "report: $json and ${json%.json}.html"
}

for night in 1 2; do
    echo
    echo "== night $night: blockyard bake pipeline.toml"
    NIGHT=$night by bake pipeline.toml
    report
    if [ "$night" = 1 ]; then
        echo
        echo "== a CI runner pulls night 1 from region eu"
        by --json pull ci@latest runner/ci.img --from eu > runner/pull1.json
        python3 - runner/pull1.json <<'PY'
import json, sys
p = json.load(open(sys.argv[1]))
print(f"night 1: {p['bytes_fetched'] / 1e6:.1f} MB fetched in {p['seconds']:.2f} s")
PY
    fi
done

echo
echo "== the runner pulls night 2 over night 1, from region eu"
cp --sparse=always runner/ci.img runner/night1.img
by --json pull ci@latest runner/ci.img --from eu --seed runner/night1.img > runner/pull2.json
python3 - runner/pull2.json <<'PY'
import json, sys
p = json.load(open(sys.argv[1]))
reused = p["blocks_from_output"] + sum(p["blocks_from_seeds"].values())
print(f"night 2: {p['bytes_fetched'] / 1e6:.1f} MB fetched ({p['blocks_fetched']} blocks), "
      f"{reused} of {p['blocks_data']} data blocks reused, in {p['seconds']:.2f} s")
PY
volume=$(ls .bake/volumes/ci/snap-*.raw)
cmp runner/ci.img "$volume"
echo "the runner's image is identical to the volume night 2 baked ($volume)"
