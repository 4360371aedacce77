#!/usr/bin/env bash
# (a) The model alone with vigil's settings (examples/model_alone.rs: letterboxed tensors through
# vigil's detector pool, 1 and 2 one-thread sessions), then (b) vigil next to (c) the Python
# baseline (../shared/baseline), both driven by the baseline's own
# load driver drive.py on the same machine, model and thread budget, one system at a time,
# each on a fresh nats-server. Prints one JSON line per run and a summary table (medians of
# REPEATS runs). The archiver is off: the baseline has no database.
#   scripts/bench.sh [COUNT] [REPEATS] [INFLIGHT]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
count=${1:-200}
repeats=${2:-3}
inflight=${3:-4}
baseline=${BASELINE_DIR:-../shared/baseline}
frames=$(sequence_dir)
scripts/setup.sh
cargo build --release --quiet
cargo build --release --quiet --example model_alone
model_fps() { target/release/examples/model_alone "$1" "$count" | python3 -c 'import json, sys; print(json.load(sys.stdin)["frames_per_s"])'; }
model1=$(model_fps 1)
model2=$(model_fps 2)
echo "{\"system\": \"model alone\", \"sessions\": 1, \"frames_per_s\": $model1}"
echo "{\"system\": \"model alone\", \"sessions\": 2, \"frames_per_s\": $model2}"
if [ ! -x .venv-baseline/bin/python ]; then
  python3 -m venv .venv-baseline
  .venv-baseline/bin/pip install -q onnxruntime pillow numpy nats-py msgpack
fi
py=.venv-baseline/bin/python
run=$(mktemp -d)
pids=()
# Each server runs in its own session (setsid), so the whole group (workers included) stops.
stop_all() { for p in "${pids[@]}"; do kill -- "-$p" 2>/dev/null || kill "$p" 2>/dev/null || true; done; for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done; pids=(); }
trap 'stop_all; rm -rf "$run"' EXIT
wait_log() { for _ in $(seq 1 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done; cat "$1" >&2; exit 1; }

# measure NAME COMMAND...: a fresh nats-server, the system under test, a warm-up, REPEATS runs.
measure() {
  local name=$1; shift
  local p; p=$(free_port)
  rm -rf "$run/js"; setsid "$(nats_bin)" -a 127.0.0.1 -p "$p" -js -sd "$run/js" >/dev/null 2>&1 & pids+=($!)
  wait_port "$p" nats-server
  NATS_URL="nats://127.0.0.1:$p" setsid "$@" >"$run/$name.log" 2>&1 & pids+=($!)
  wait_log "$run/$name.log" "${READY:-ready}"
  "$py" "$baseline/drive.py" --nats "nats://127.0.0.1:$p" --frames "$frames" --count 20 --inflight "$inflight" >/dev/null
  for i in $(seq 1 "$repeats"); do
    "$py" "$baseline/drive.py" --nats "nats://127.0.0.1:$p" --frames "$frames" --count "$count" --inflight "$inflight" \
      | sed "s/^/{\"system\": \"$name\", \"run\": $i, \"data\": /; s/\$/}/" | tee -a "$run/results.jsonl"
  done
  stop_all
}

vigil_serve() { # SESSIONS THREADS
  VIGIL_NATS__URL=$NATS_URL VIGIL_ARCHIVE__ENABLED=false VIGIL_SERVICE__ENABLED=false \
  VIGIL_DETECTOR__SESSIONS=$1 VIGIL_DETECTOR__THREADS_PER_SESSION=$2 exec target/release/vigil serve
}
py_workers() { # PROCESSES THREADS
  for _ in $(seq 1 "$1"); do "$py" "$baseline/py_worker.py" --nats "$NATS_URL" --model models/yolov12n.onnx --threads "$2" & done
  wait
}
export -f vigil_serve py_workers
export py baseline

READY="processor started" measure "vigil 1 session x 1 thread" bash -c 'vigil_serve 1 1'
READY="py_worker ready" measure "python 1 worker x 1 thread" bash -c 'py_workers 1 1'
READY="processor started" measure "vigil 2 sessions x 1 thread" bash -c 'vigil_serve 2 1'
READY="py_worker ready" measure "python 2 workers x 1 thread" bash -c 'py_workers 2 1'
READY="py_worker ready" measure "python 1 worker x 2 threads" bash -c 'py_workers 1 2'

python3 - "$run/results.jsonl" "$count" "$inflight" "$model1" "$model2" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
model = {1: float(sys.argv[4]), 2: float(sys.argv[5])}
systems = list(dict.fromkeys(r["system"] for r in rows))
print(f"\n{sys.argv[2]} frames of the vtest sequence per run, closed loop with {sys.argv[3]} in flight; medians of runs")
print(f"{'system':<30} {'frames/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'lost':>5}")
for s in systems:
    d = [r["data"] for r in rows if r["system"] == s]
    med = lambda k: statistics.median(x[k] for x in d)
    print(f"{s:<30} {med('throughput_fps'):>9.2f} {med('p50_ms'):>8.1f} {med('p95_ms'):>8.1f} {sum(x['lost'] for x in d):>5}")
fps = {s: statistics.median(r["data"]["throughput_fps"] for r in rows if r["system"] == s) for s in systems}
print(f"\nmodel alone: {model[1]:.2f} frames/s with 1 session, {model[2]:.2f} with 2 (vigil's detector pool, tensors ready)")
for n in (1, 2):
    name = f"vigil {n} session{'s' if n > 1 else ''} x 1 thread"
    if name in fps:
        print(f"{name}: {fps[name] / model[n]:.2f} x the model alone with the same sessions")
vigil = max(v for k, v in fps.items() if k.startswith("vigil"))
python = max(v for k, v in fps.items() if k.startswith("python"))
print(f"best vigil / best Python baseline: {vigil / python:.2f} x")
PY
