#!/usr/bin/env bash
# The main job, end to end on this machine: sets up what is missing, starts NATS (JetStream)
# and a MongoDB-wire server if none is listening, runs `vigil serve`, plays the 300-frame
# CCTV sequence as camera demo/vtest at 10 frames/s, prints one line per event as it
# arrives, and ends with a summary that includes the archived count read back from MongoDB.
# Options after the script name go to `vigil play` (e.g. --count 50 --fps 0).
set -euo pipefail
cd "$(dirname "$0")/.."
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
listening() { (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  for _ in $(seq 1 150); do listening "$1" && return 0; sleep 0.2; done
  echo "nothing listens on port $1 ($2)" >&2; exit 1
}

nats_bin=$(command -v nats-server || echo /usr/sbin/nats-server)
if ! listening 4222; then
  echo "starting nats-server (JetStream) on 127.0.0.1:4222" >&2
  "$nats_bin" -a 127.0.0.1 -p 4222 -js -sd "$state/nats" >"$state/nats.log" 2>&1 &
  pids+=($!)
  wait_port 4222 nats-server
fi
if ! listening 27017; then
  echo "starting SecantusDB (MongoDB wire protocol) on 127.0.0.1:27017" >&2
  .venv/bin/python -m secantus --port 27017 --storage-path "$state/mongo" >"$state/mongo.log" 2>&1 &
  pids+=($!)
  wait_port 27017 SecantusDB
fi

frames=../shared/testdata/sequences/vtest
[ -d "$frames" ] || frames=testdata/sequences/vtest
"$vigil" serve >"$state/vigil.log" 2>&1 &
serve_pid=$!
pids+=("$serve_pid")
for _ in $(seq 1 150); do
  grep -q "processor started" "$state/vigil.log" && break
  kill -0 "$serve_pid" 2>/dev/null || { cat "$state/vigil.log" >&2; exit 1; }
  sleep 0.2
done
echo "vigil serve is running (log: $state/vigil.log); playing $frames as demo/vtest" >&2
status=0
"$vigil" play "$frames" --site demo --camera vtest "$@" || status=$?
kill -TERM "$serve_pid" && wait "$serve_pid" || true
echo "vigil serve stopped: $(tail -n 1 "$state/vigil.log" | sed 's/\x1b\[[0-9;]*m//g')" >&2
exit "$status"
