#!/bin/sh
# The update command of pipeline "ci-tools": writes the night's tool bundle into the qcow2
# overlay in $BLOCKYARD_VOLUME with qemu-io, leaving the rest of the disk to the base. It
# writes raw blocks in the last quarter of the disk, past the ext4 data of the base,
# standing in for a tools partition.
set -eu
: "${BLOCKYARD_VOLUME:?run by blockyard bake}"
night=${NIGHT:-1}
pattern=$(( (night * 37) % 251 + 1 ))
size=$(qemu-img info --output=json "$BLOCKYARD_VOLUME" |
    sed -n 's/^ *"virtual-size": \([0-9]*\).*/\1/p' | head -n 1)
mib=$(( size / 1048576 ))
at=$(( mib * 3 / 4 ))
qemu-io -f qcow2 -c "write -P $pattern ${at}M 4M" \
    -c "write -P $((pattern + 1)) $((at + 64))M 64k" "$BLOCKYARD_VOLUME"
echo "tools bundle of night $night written at ${at} MiB"
