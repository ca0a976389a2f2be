#!/usr/bin/env bash
# Runs every image-format fuzz target, and the commit-record one, briefly: seeds and saved
# regressions first, then fresh mutations for SECONDS each (default 20). CI runs this after
# the tests, so that a parser change that panics on known-hostile input, or on what a short
# run finds, fails the build. Long runs are done by hand (see fuzz/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}

if ! command -v cargo-fuzz >/dev/null; then
  cargo install cargo-fuzz --locked --version 0.13.2
fi

export RUSTC_BOOTSTRAP=1
targets=(qcow2_open vmdk_open vhd_open vhdx_open ova_open raw_blocks record_parse)
cargo fuzz build
for target in "${targets[@]}"; do
  corpus=fuzz/corpus/$target
  mkdir -p "$corpus"
  inputs=("$corpus")
  for dir in "fuzz/seeds/${target%_open}" "fuzz/regressions/$target"; do
    [[ -d $dir ]] && inputs+=("$dir")
  done
  artifacts=$(mktemp -d)
  echo "== fuzz $target for ${seconds}s"
  if ! cargo fuzz run "$target" "${inputs[@]}" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -max_len=1048576 \
    -artifact_prefix="$artifacts/" >"$artifacts/log" 2>&1; then
    tail -n 40 "$artifacts/log" >&2
    echo "fuzz: $target failed; the input is in $artifacts" >&2
    exit 1
  fi
  grep -E '^Done [0-9]+ runs' "$artifacts/log" || tail -n 2 "$artifacts/log"
  rm -rf "$artifacts"
done
