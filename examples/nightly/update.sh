#!/bin/sh
# The update command of pipeline "ci": installs the night's "dependencies" into the ext4
# image VOLUME with debugfs, without root and without mounting it. Each night replaces one
# library, adds a new one and rewrites the manifest, as a package upgrade would. NIGHT (a
# number) names the night.
#
# Usage: sh update.sh VOLUME
set -eu
volume=${1:?usage: update.sh VOLUME}
night=${NIGHT:-1}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Fresh builds: bytes that no earlier night holds.
head -c "$((6 * 1024 * 1024))" /dev/urandom > "$work/libcore.so"
head -c "$((2 * 1024 * 1024))" /dev/urandom > "$work/libextra-$night.so"
printf 'night %s\nlibcore.so rebuilt\nlibextra-%s.so added\n' "$night" "$night" \
    > "$work/MANIFEST"

# debugfs reports a failed command on stderr but exits 0; its output is checked instead.
cat > "$work/commands" <<COMMANDS
mkdir /deps
cd /deps
rm libcore.so
write $work/libcore.so libcore.so
write $work/libextra-$night.so libextra-$night.so
rm MANIFEST
write $work/MANIFEST MANIFEST
COMMANDS
debugfs -w -f "$work/commands" "$volume" > "$work/out" 2>&1
cat "$work/out"
# mkdir and rm fail harmlessly when the folder exists or the file does not yet.
if grep -v -e 'mkdir: Ext2 directory already exists' -e 'rm: File not found' \
        -e '^debugfs ' "$work/out" | grep -qi -e error -e 'not found' -e 'cannot'; then
    echo "update.sh: debugfs reported an error" >&2
    exit 1
fi
echo "night $night installed into $volume"
