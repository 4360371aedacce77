#!/usr/bin/env bash
# (a) The model alone with vigil's settings (examples/model_alone.rs: letterboxed tensors through
# vigil's detector pool, 1 and 2 one-thread sessions), for the fp32 model, its int8 copy, its
# 640x480 copy ("rect") and that copy's int8 copy ("rect8"; detector.model = "auto", the default,
# runs rect8 on a CPU with VNNI and rect elsewhere), then (b) vigil
# with each next to (c) the Python baseline (../shared/baseline, which ships with the fp32 model;
# also run with the int8 one; it letterboxes to 640x640 only, so it cannot run the 640x480
# copies), all driven by the baseline's own load driver drive.py on the same machine and thread
# budget, one system at a time, each on a fresh nats-server. Prints one JSON line per run and a
# summary table (medians of REPEATS runs). vigil runs as shipped but for the archiver, which is
# off: the baseline has no database. Last, (d) what vigil.analyze adds over calling the pipeline
# in process.
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
cargo build --release --quiet --example model_alone --example analyze_overhead
fp32=models/yolov12n.onnx
int8=models/yolov12n-int8.onnx
rect=models/yolov12n-640x480.onnx       # the fp32 model for 640x480 input
rect8=models/yolov12n-640x480-int8.onnx  # its int8 copy
# What the default (detector.model = "auto") runs on this CPU.
chosen=$(VIGIL_DETECTOR__MODEL=auto target/release/vigil check-config | awk 'f {print; exit} /^# model$/ {f = 1}')
case $chosen in "# $rect8 "*) shipped=rect8 ;; "# $rect "*) shipped=rect ;; *) echo "bench.sh knows neither 640x480 copy in check-config's model line: $chosen" >&2; exit 1 ;; esac
# model_fps SESSIONS MODEL
model_fps() { target/release/examples/model_alone "$1" "$count" 1 "$2" | python3 -c 'import json, sys; print(json.load(sys.stdin)["frames_per_s"])'; }
# The model alone is measured before and after the systems, and the mean taken: this machine's
# speed drifts over a run (shared host).
declare -A alone
measure_alone() {
  for m in fp32 int8 rect rect8; do
    for n in 1 2; do
      local fps; fps=$(model_fps "$n" "${!m}")
      echo "{\"system\": \"model alone\", \"model\": \"$m\", \"sessions\": $n, \"frames_per_s\": $fps}"
      alone[$m$n]=$(python3 -c "import sys; a = sys.argv[1]; print(float(sys.argv[2]) if not a else (float(a) + float(sys.argv[2])) / 2)" "${alone[$m$n]:-}" "$fps")
    done
  done
}
measure_alone
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

vigil_serve() { # SESSIONS THREADS MODEL
  VIGIL_NATS__URL=$NATS_URL VIGIL_ARCHIVE__ENABLED=false VIGIL_SERVICE__ENABLED=false \
  VIGIL_DETECTOR__SESSIONS=$1 VIGIL_DETECTOR__THREADS_PER_SESSION=$2 VIGIL_DETECTOR__MODEL=$3 \
  exec target/release/vigil serve
}
py_workers() { # PROCESSES THREADS MODEL
  for _ in $(seq 1 "$1"); do "$py" "$baseline/py_worker.py" --nats "$NATS_URL" --model "$3" --threads "$2" & done
  wait
}
export -f vigil_serve py_workers
export py baseline fp32 int8 rect rect8

READY="processor started" measure "vigil fp32 1 session x 1 thread" bash -c 'vigil_serve 1 1 $fp32'
READY="processor started" measure "vigil int8 1 session x 1 thread" bash -c 'vigil_serve 1 1 $int8'
READY="processor started" measure "vigil rect 1 session x 1 thread" bash -c 'vigil_serve 1 1 $rect'
READY="processor started" measure "vigil rect8 1 session x 1 thread" bash -c 'vigil_serve 1 1 $rect8'
READY="py_worker ready" measure "python fp32 1 worker x 1 thread" bash -c 'py_workers 1 1 $fp32'
READY="processor started" measure "vigil fp32 2 sessions x 1 thread" bash -c 'vigil_serve 2 1 $fp32'
READY="processor started" measure "vigil int8 2 sessions x 1 thread" bash -c 'vigil_serve 2 1 $int8'
READY="processor started" measure "vigil rect 2 sessions x 1 thread" bash -c 'vigil_serve 2 1 $rect'
READY="processor started" measure "vigil rect8 2 sessions x 1 thread" bash -c 'vigil_serve 2 1 $rect8'
READY="py_worker ready" measure "python fp32 2 workers x 1 thread" bash -c 'py_workers 2 1 $fp32'
READY="py_worker ready" measure "python fp32 1 worker x 2 threads" bash -c 'py_workers 1 2 $fp32'
# The baseline given vigil's int8 model, in its best configuration above (two workers).
READY="py_worker ready" measure "python int8 2 workers x 1 thread" bash -c 'py_workers 2 1 $int8'

measure_alone

# (d) What vigil.analyze adds over the pipeline in process (examples/analyze_overhead.rs).
p=$(free_port)
rm -rf "$run/js"; setsid "$(nats_bin)" -a 127.0.0.1 -p "$p" -js -sd "$run/js" >/dev/null 2>&1 & pids+=($!)
wait_port "$p" nats-server
overhead=$(target/release/examples/analyze_overhead "nats://127.0.0.1:$p" 100)
echo "$overhead"
stop_all

python3 - "$run/results.jsonl" "$count" "$inflight" "${alone[fp321]}" "${alone[fp322]}" "${alone[int81]}" "${alone[int82]}" "${alone[rect1]}" "${alone[rect2]}" "${alone[rect81]}" "${alone[rect82]}" "$shipped" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
model = {("fp32", 1): float(sys.argv[4]), ("fp32", 2): float(sys.argv[5]),
         ("int8", 1): float(sys.argv[6]), ("int8", 2): float(sys.argv[7]),
         ("rect", 1): float(sys.argv[8]), ("rect", 2): float(sys.argv[9]),
         ("rect8", 1): float(sys.argv[10]), ("rect8", 2): float(sys.argv[11])}
systems = list(dict.fromkeys(r["system"] for r in rows))
print(f"\n{sys.argv[2]} frames of the vtest sequence per run, closed loop with {sys.argv[3]} in flight; medians of runs;")
print("the model alone: the mean of its runs before and after the systems")
print(f"{'system':<34} {'frames/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'lost':>5}")
for (m, n), fps in model.items():
    print(f"{f'model alone {m} {n} session' + ('s' if n > 1 else '') + ', mean':<34} {fps:>9.2f}")
for s in systems:
    d = [r["data"] for r in rows if r["system"] == s]
    med = lambda k: statistics.median(x[k] for x in d)
    print(f"{s:<34} {med('throughput_fps'):>9.2f} {med('p50_ms'):>8.1f} {med('p95_ms'):>8.1f} {sum(x['lost'] for x in d):>5}")
fps = {s: statistics.median(r["data"]["throughput_fps"] for r in rows if r["system"] == s) for s in systems}
print()
for (m, n), alone in model.items():
    name = f"vigil {m} {n} session{'s' if n > 1 else ''} x 1 thread"
    if name in fps:
        print(f"{name}: {fps[name] / alone:.2f} x the model alone ({m}, same sessions)")
best = lambda prefix: max(v for k, v in fps.items() if k.startswith(prefix))
print(f"best vigil fp32 / best Python fp32 (the baseline as it is): {best('vigil fp32') / best('python fp32'):.2f} x")
print(f"best vigil int8 / best Python fp32 (the baseline as it is): {best('vigil int8') / best('python fp32'):.2f} x")
print(f"best vigil int8 / Python int8 (the baseline given the same model): {best('vigil int8') / best('python int8'):.2f} x")
print(f"best vigil rect (fp32 at 640x480, the default without VNNI) / best Python fp32 (the baseline as it is): {best('vigil rect ') / best('python fp32'):.2f} x")
print(f"best vigil rect8 (int8 at 640x480, the default with VNNI) / best Python fp32 (the baseline as it is): {best('vigil rect8') / best('python fp32'):.2f} x")
shipped = sys.argv[12]
print(f"vigil as shipped on this CPU (auto runs {shipped}) / Python as shipped: {best(f'vigil {shipped} ') / best('python fp32'):.2f} x")
print(f"best vigil / best Python, any model each: {best('vigil') / best('python'):.2f} x")
PY
python3 - "$overhead" <<'PY'
import json, sys
o = json.loads(sys.argv[1])
print(f"vigil.analyze: {o['outside_pipeline_p50_ms']:.2f} ms at p50 outside the service's pipeline (round trip less the event's timings_ms.total); "
      f"{o['analyze_p50_ms']:.1f} ms a call vs {o['in_process_p50_ms']:.1f} ms in process, per-frame difference {o['added_p50_ms']:.2f} ms ({o['frames']} frames)")
PY
