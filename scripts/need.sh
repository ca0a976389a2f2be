#!/usr/bin/env bash
# Installs, with apt, the Debian packages of the commands that are missing.
#
# Usage: scripts/need.sh COMMAND=PACKAGE...   e.g. scripts/need.sh debugfs=e2fsprogs
set -euo pipefail
packages=()
for pair in "$@"; do
    command -v "${pair%%=*}" >/dev/null || packages+=("${pair#*=}")
done
[ ${#packages[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing ${packages[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${packages[@]}" >/dev/null
