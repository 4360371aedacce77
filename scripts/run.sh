#!/usr/bin/env bash
# The main job, end to end on this machine: sets up what is missing, uses the NATS server on
# 127.0.0.1:4222 if it is 2.11 or newer (else starts the project's own on a free port) and a
# MongoDB on 127.0.0.1:27017 if one listens (else starts SecantusDB), runs `vigil serve`, plays
# the 300-frame CCTV sequence as camera demo/vtest at 10 frames/s, prints one line per event as
# it arrives, and ends with a summary that includes the archived count read back from MongoDB.
# Options after the script name go to `vigil play` (e.g. --count 50 --fps 0).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
scripts/setup.sh
cargo build --release --quiet
vigil=target/release/vigil
state=.run
mkdir -p "$state"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

nats_port=4222
version=$(nats_version 4222)
if [ -n "$version" ] && nats_new_enough "$version"; then
  echo "using nats-server $version on 127.0.0.1:4222" >&2
else
  [ -n "$version" ] && echo "nats-server $version on 127.0.0.1:4222 is older than 2.11; starting vigil's own" >&2
  listening 4222 && nats_port=$(free_port)
  echo "starting nats-server $("$(nats_bin)" --version | sed 's/.*v//') (JetStream) on 127.0.0.1:$nats_port" >&2
  "$(nats_bin)" -a 127.0.0.1 -p "$nats_port" -js -sd "$state/nats" >"$state/nats.log" 2>&1 &
  pids+=($!)
  wait_port "$nats_port" nats-server
fi
export VIGIL_NATS__URL="nats://127.0.0.1:$nats_port"
if ! listening 27017; then
  echo "starting SecantusDB (MongoDB wire protocol) on 127.0.0.1:27017" >&2
  .venv/bin/python -m secantus --port 27017 --storage-path "$state/mongo" >"$state/mongo.log" 2>&1 &
  pids+=($!)
  wait_port 27017 SecantusDB
fi

frames=$(sequence_dir)
"$vigil" serve >"$state/vigil.log" 2>&1 &
serve_pid=$!
pids+=("$serve_pid")
exe=$vigil wait_vigil "$VIGIL_NATS__URL" "$serve_pid" "$state/vigil.log"
echo "vigil serve is running (log: $state/vigil.log); playing $frames as demo/vtest" >&2
status=0
"$vigil" play "$frames" --site demo --camera vtest "$@" || status=$?
kill -TERM "$serve_pid" && wait "$serve_pid" || true
echo "vigil serve stopped: $(tail -n 1 "$state/vigil.log" | sed 's/\x1b\[[0-9;]*m//g')" >&2
exit "$status"
