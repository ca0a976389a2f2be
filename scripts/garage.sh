#!/usr/bin/env bash
# A throwaway single-node Garage (an S3-compatible server) on loopback, for the tests, the
# benches and trying blockyard against S3 by hand.
#
#   scripts/garage.sh start DIR    start it with its config, data and log in DIR, and write
#                                  DIR/env: `source DIR/env` points the AWS_* variables and
#                                  BLOCKYARD_TEST_S3_BUCKET at it
#   scripts/garage.sh stop DIR     stop it and remove DIR/env (the data and log stay)
#   scripts/garage.sh status DIR   exit 0 if it is running
#
# `start` on a DIR whose server is already running only rewrites DIR/env. The server has one
# bucket, blockyard-test, and one key that may read and write it. Both, and the RPC secret,
# are fixed test values: the server listens on 127.0.0.1 only and holds nothing worth
# protecting. The garage binary is taken from $GARAGE, then PATH, then ~/.cargo/bin (where
# `cargo install garage --locked --version 2.5.0` puts it).
set -euo pipefail

BUCKET=blockyard-test
REGION=garage
# Garage's own format for generated keys: "GK" and 12 bytes in hex; a 32-byte secret in hex.
ACCESS_KEY=GKb10c7a7d5e57000000000001
SECRET_KEY=7e57b10c7a7d0000000000000000000000000000000000000000000000000001
RPC_SECRET=7e57b10c7a7d0000000000000000000000000000000000000000000000000002
# How long `start` waits for the S3 API to serve the bucket, and `stop` for the process to
# go, in seconds. Startup is normally under two seconds; a busy CI machine may be slower.
START_TIMEOUT=60
STOP_TIMEOUT=20

usage() {
  echo "usage: scripts/garage.sh start|stop|status DIR" >&2
  exit 2
}

die() {
  echo "garage.sh: $*" >&2
  exit 1
}

find_garage() {
  if [[ -n ${GARAGE:-} ]]; then
    echo "$GARAGE"
  elif command -v garage >/dev/null; then
    command -v garage
  elif [[ -x $HOME/.cargo/bin/garage ]]; then
    echo "$HOME/.cargo/bin/garage"
  else
    die "no garage binary; install it with: cargo install garage --locked --version 2.5.0"
  fi
}

# The pid recorded in DIR, if that process is still a garage server. Checking the command
# line guards against a pid the system has since given to another process.
running_pid() {
  local pid
  [[ -f $dir/pid ]] || return 1
  pid=$(<"$dir/pid")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "garage.* server" || return 1
  echo "$pid"
}

# A port is taken when something accepts a connection on it. Binding could still fail if
# another program grabs the port before Garage starts; the log then says so.
port_is_free() {
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# The first free port from $1 upward, skipping $2.
free_port() {
  local port=$1
  while [[ $port == "${2:-}" ]] || ! port_is_free "$port"; do
    port=$((port + 1))
    [[ $port -lt 65536 ]] || die "no free port above $1"
  done
  echo "$port"
}

# The S3 port of the config in DIR.
configured_s3_port() {
  sed -n 's/^api_bind_addr = "127\.0\.0\.1:\([0-9]*\)"$/\1/p' "$dir/garage.toml"
}

write_config() {
  local s3_port=$1 rpc_port=$2
  cat >"$dir/garage.toml" <<EOF
# Written by scripts/garage.sh: a single-node test server on loopback.
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "lmdb"
replication_factor = 1

rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$RPC_SECRET"

[s3_api]
api_bind_addr = "127.0.0.1:$s3_port"
s3_region = "$REGION"
EOF
}

write_env() {
  local s3_port=$1
  cat >"$dir/env.tmp" <<EOF
export AWS_ENDPOINT=http://127.0.0.1:$s3_port
export AWS_REGION=$REGION
export AWS_ACCESS_KEY_ID=$ACCESS_KEY
export AWS_SECRET_ACCESS_KEY=$SECRET_KEY
export AWS_ALLOW_HTTP=true
export BLOCKYARD_TEST_S3_BUCKET=$BUCKET
EOF
  mv "$dir/env.tmp" "$dir/env"
}

# The SHA-256 of an empty request body. Garage refuses a signed request without an
# x-amz-content-sha256 header, which curl does not add by itself.
EMPTY_SHA256=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855

# Whether a signed listing of the bucket succeeds: the S3 API is up, and the default key and
# bucket, which Garage creates before it opens the API, work.
bucket_answers() {
  local status
  status=$(curl --silent --max-time 5 --output /dev/null --write-out '%{http_code}' \
    --aws-sigv4 "aws:amz:$REGION:s3" --user "$ACCESS_KEY:$SECRET_KEY" \
    --header "x-amz-content-sha256: $EMPTY_SHA256" \
    "http://127.0.0.1:$1/$BUCKET?list-type=2&max-keys=1") || true
  [[ $status == 200 ]]
}

start() {
  local garage pid s3_port rpc_port deadline
  if running_pid >/dev/null; then
    write_env "$(configured_s3_port)"
    echo "garage.sh: already running in $dir; rewrote $dir/env"
    return
  fi
  command -v curl >/dev/null || die "curl is needed to see when Garage is ready"
  garage=$(find_garage)

  mkdir -p "$dir/meta" "$dir/data"
  s3_port=$(free_port 3900)
  rpc_port=$(free_port 3901 "$s3_port")
  write_config "$s3_port" "$rpc_port"

  # setsid puts the server in a session of its own, so that an interrupt meant for the
  # shell that started it (a test run's Ctrl-C) does not stop it: `stop` does.
  GARAGE_DEFAULT_ACCESS_KEY=$ACCESS_KEY GARAGE_DEFAULT_SECRET_KEY=$SECRET_KEY \
    GARAGE_DEFAULT_BUCKET=$BUCKET RUST_LOG=${RUST_LOG:-garage=info} \
    setsid "$garage" -c "$dir/garage.toml" server --single-node --default-bucket \
    </dev/null >>"$dir/garage.log" 2>&1 &
  pid=$!
  echo "$pid" >"$dir/pid"

  deadline=$((SECONDS + START_TIMEOUT))
  until bucket_answers "$s3_port"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$dir/garage.log" >&2
      rm -f "$dir/pid"
      die "garage exited during startup; its log is $dir/garage.log"
    fi
    if [[ $SECONDS -ge $deadline ]]; then
      tail -n 20 "$dir/garage.log" >&2
      end_process "$pid"
      die "garage did not serve bucket $BUCKET on port $s3_port within ${START_TIMEOUT}s;" \
        "its log is $dir/garage.log"
    fi
    sleep 0.2
  done

  write_env "$s3_port"
  echo "garage.sh: S3 API on http://127.0.0.1:$s3_port (pid $pid); source $dir/env"
}

# Ends process $1 politely, then by force after STOP_TIMEOUT seconds, and forgets its pid.
end_process() {
  local pid=$1 deadline=$((SECONDS + STOP_TIMEOUT))
  kill "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do
    if [[ $SECONDS -ge $deadline ]]; then
      echo "garage.sh: pid $pid still running after ${STOP_TIMEOUT}s; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  # Without a server, an env file would send whoever sources it to a closed port.
  rm -f "$dir/pid" "$dir/env"
}

stop() {
  local pid
  if ! pid=$(running_pid); then
    rm -f "$dir/pid" "$dir/env"
    echo "garage.sh: not running in $dir"
    return
  fi
  end_process "$pid"
  echo "garage.sh: stopped pid $pid"
}

[[ $# -eq 2 ]] || usage
case "$1" in
  start)
    mkdir -p "$2"
    # Absolute, because the config names its folders.
    dir=$(cd "$2" && pwd)
    start
    ;;
  stop)
    [[ -d $2 ]] || die "no folder $2"
    dir=$(cd "$2" && pwd)
    stop
    ;;
  status)
    [[ -d $2 ]] || exit 1
    dir=$(cd "$2" && pwd)
    running_pid >/dev/null
    ;;
  *) usage ;;
esac
