#!/bin/sh
# The update command of pipeline "ci-tools": writes the night's tool bundle into the qcow2
# overlay in $BLOCKYARD_VOLUME with qemu-io, leaving the rest of the disk to the base. It
# writes raw blocks past the ext4 data of the base (at 1.5 GiB), standing in for a tools
# partition.
set -eu
: "${BLOCKYARD_VOLUME:?run by blockyard bake}"
night=${NIGHT:-1}
pattern=$(( (night * 37) % 251 + 1 ))
qemu-io -f qcow2 -c "write -P $pattern 1536M 4M" -c "write -P $((pattern + 1)) 1600M 64k" \
    "$BLOCKYARD_VOLUME"
echo "tools bundle of night $night written"
