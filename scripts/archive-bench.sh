#!/usr/bin/env bash
# The archive's rates on this machine: plain bulk inserts (Rust driver, pymongo) as the
# yardstick, archiver events/s with the snapshot writer idle and busy, snapshots/s, replay
# events/s, re-evaluation events/s (examples/archive_bench.rs).
# Starts its own nats-server and SecantusDB (durable, on disk) on free ports.
#   scripts/archive-bench.sh [EVENTS]        (default 20000; PROFILE=dev for a debug build)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
events=${1:-20000}
profile=${PROFILE:-release}
run=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$run"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
nats_port=$(port); mongo_port=$(port)
.venv/bin/nats-server -a 127.0.0.1 -p "$nats_port" -js -sd "$run/nats" >"$run/nats.log" 2>&1 &
pids+=($!)
.venv/bin/python -m secantus --port "$mongo_port" --storage-path "$run/mongo" >"$run/secantus.log" 2>&1 &
pids+=($!)
for p in "$nats_port" "$mongo_port"; do
  for _ in $(seq 1 100); do (echo >"/dev/tcp/127.0.0.1/$p") 2>/dev/null && break; sleep 0.2; done
done
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$(ls .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.1.* | head -1)}
cargo run --quiet --profile "$profile" --example archive_bench -- "nats://127.0.0.1:$nats_port" "mongodb://127.0.0.1:$mongo_port" "$events"
