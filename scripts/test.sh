#!/usr/bin/env bash
# Runs blockyard's tests. The integration tests make disk images with the real tools
# (mkfs.ext4, debugfs, qemu-img) and render pages in Chromium, so those are installed first
# when missing. The S3 tests run against a Garage server started here for the length of the
# run; they are required, so that a machine without Garage fails them instead of skipping
# them.
set -euo pipefail
cd "$(dirname "$0")/.."

# The HTML run report is rendered in headless Chromium by its test.
bash scripts/need.sh mkfs.ext4=e2fsprogs debugfs=e2fsprogs qemu-img=qemu-utils curl=curl \
  chromium=chromium

if ! command -v garage >/dev/null && [ ! -x "$HOME/.cargo/bin/garage" ]; then
  echo "test.sh: installing Garage for the S3 tests; this takes ~20 minutes, once per machine"
  cargo install garage --locked --version 2.5.0
fi

# A server already running in target/garage (started by hand, or for the benches) is used
# and left running. Otherwise one is started on empty folders and stopped at the end; its
# log and data stay until the next run, for a look after a failure.
garage_dir=target/garage
if ! bash scripts/garage.sh status "$garage_dir"; then
  rm -rf "$garage_dir"
  trap 'bash scripts/garage.sh stop "$garage_dir" >/dev/null' EXIT
fi
bash scripts/garage.sh start "$garage_dir"
# shellcheck source=/dev/null
source "$garage_dir/env"
export BLOCKYARD_REQUIRE_S3=1

cargo test --workspace --locked "$@"
