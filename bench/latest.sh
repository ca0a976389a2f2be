#!/usr/bin/env bash
# Measures what resolving FAMILY@latest and FAMILY@10 costs in a family of 10,000 promoted
# images: listing calls, listing requests as S3 serves them (1000 keys a page), image record
# reads and time, on memory, a local folder and, when the env of scripts/garage.sh is
# sourced, Garage. Prints the machine, the date and a Markdown table.
#
#   bash bench/latest.sh [IMAGES]     a family of IMAGES images (default 10000)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

model=$(lscpu | sed -n 's/^Model name: *//p')
echo "$(nproc) cores ($model), $(date -u '+%Y-%m-%d %H:%M UTC'), release build"
echo
cargo run --release --quiet -p blockyard-store --example latest -- "$@"
