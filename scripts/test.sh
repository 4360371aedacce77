#!/usr/bin/env bash
# The test suite: formatting, clippy, unit tests and the integration tests against a real
# nats-server (started per test on a free port), a real MongoDB-wire server (SecantusDB,
# started here on a free port; TEST_MONGODB_URI=mongodb://… uses an existing MongoDB instead)
# and the real model, including the fault, hostile-input and security suites.
# Sets up what it needs first (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
scripts/setup.sh

run=$(mktemp -d)
secantus_pid=
cleanup() {
  [ -n "$secantus_pid" ] && kill "$secantus_pid" 2>/dev/null && wait "$secantus_pid" 2>/dev/null
  rm -rf "$run"
}
trap cleanup EXIT

if [ -z "${TEST_MONGODB_URI:-}" ]; then
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  .venv/bin/python -m secantus --port "$port" --storage-path "$run/mongo" >"$run/secantus.log" 2>&1 &
  secantus_pid=$!
  for _ in $(seq 1 100); do
    (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    kill -0 "$secantus_pid" 2>/dev/null || { cat "$run/secantus.log" >&2; exit 1; }
    sleep 0.2
  done
  export TEST_MONGODB_URI="mongodb://127.0.0.1:$port"
fi
echo "MongoDB for the tests: $TEST_MONGODB_URI" >&2

cargo fmt --all -- --check
# Warnings are errors; unwrap/expect are denied outside tests (src/lib.rs, src/main.rs).
cargo clippy --all-targets --locked -- -D warnings
status=0
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --no-fail-fast "$@" || status=$?
else
  cargo test --no-fail-fast "$@" || status=$?
fi
# The benchmarks and measuring examples, once and briefly, so that they keep working: criterion
# runs each benchmark once in test mode; nothing here is timed or fails on a time.
cargo test --locked --quiet --bench micro || status=$?
cargo test --locked --quiet --bench stages -- "$(sequence_dir)" 3 >/dev/null || status=$?
cargo build --quiet --examples
target/debug/examples/model_alone 1 4 >/dev/null || status=$?
# The tracker against MOTChallenge ground truth, next to trackforge's ByteTrack, scored by
# motmetrics: fails when our IDF1 on TUD-Stadtmitte is below 0.85.
TRACKER_EXAMPLES_DIR=target/debug/examples .venv/bin/python scripts/eval_tracker.py --check --seeds 3 || status=$?
exit "$status"
