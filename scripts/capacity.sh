#!/usr/bin/env bash
# Cameras per box at FPS frames/s each, without motion gating and with it (refresh_s 2, the
# default, and 5), on a fleet of 3 quiet cameras to 1 busy one (vigil loadgen's fleet mode): for each mode a fresh nats-server and
# `vigil serve` (release, archive and situation stage off), then loadgen runs of DURATION s
# with more and more cameras until one does not keep up (an event for at least 99 % of the
# frames, none lost or dropped, p99 latency under 1 s). Prints one JSON line per run and the
# largest fleet each mode kept up with; reports under target/capacity/.
#   scripts/capacity.sh [FPS] [DURATION]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
fps=${1:-5}
duration=${2:-30}
scripts/setup.sh
cargo build --release --quiet --bin vigil
frames=$(sequence_dir)
out=target/capacity
mkdir -p "$out"
run=$(mktemp -d)
pids=()
stop_all() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
trap 'stop_all; rm -rf "$run"' EXIT

measure() { # MODE GATING REFRESH_S CAMERAS...
  local mode=$1 gating=$2 refresh=$3; shift 3
  local port url
  port=$(free_port); url="nats://127.0.0.1:$port"
  rm -rf "$run/js"
  "$(nats_bin)" -a 127.0.0.1 -p "$port" -js -sd "$run/js" >"$run/nats.log" 2>&1 & pids+=($!)
  wait_port "$port" nats-server
  VIGIL_NATS__URL=$url VIGIL_ARCHIVE__ENABLED=false VIGIL_SITUATIONS__ENABLED=false \
    VIGIL_MOTION__ENABLED=$gating VIGIL_MOTION__REFRESH_S=$refresh target/release/vigil serve >"$run/vigil-$mode.log" 2>&1 & pids+=($!)
  local vigil_pid=${pids[-1]}
  wait_vigil "$url" "$vigil_pid" "$run/vigil-$mode.log"
  for n in "$@"; do
    local quiet=$(( n * 3 / 4 )) report="$out/$mode-$n.json"
    VIGIL_NATS__URL=$url target/release/vigil loadgen --frames "$frames" --cameras "$n" --quiet "$quiet" \
      --fps "$fps" --duration "$duration" --wait 15 --json "$report" --chart "$out/$mode-$n.png" >/dev/null
    local rss; rss=$(awk '/VmHWM/ {print $2}' "/proc/$vigil_pid/status")
    python3 - "$report" "$mode" "$n" "$quiet" "$rss" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); a = r.get("agreement") or {}
ok = r["sent"] > 0 and r["events"] >= 0.99 * r["sent"] and r["lost"] == 0 and (r["dropped_by_vigil"] or 0) == 0 and r["latency_ms"]["p99"] < 1000
print(json.dumps({"mode": sys.argv[2], "cameras": int(sys.argv[3]), "quiet": int(sys.argv[4]), "sent": r["sent"], "events": r["events"],
  "lost": r["lost"], "dropped": r["dropped_by_vigil"], "model_skipped": r["model_skipped"], "events_per_s": round(r["throughput_fps"], 2),
  "p50_ms": r["latency_ms"]["p50"], "p99_ms": r["latency_ms"]["p99"], "f1_vs_model": a.get("f1"), "crossing_frames": a.get("crossing_frames"),
  "longest_unseen_s": a.get("longest_unseen_s"), "peak_rss_mb": round(int(sys.argv[5]) / 1024, 1), "kept_up": ok}))
sys.exit(0 if ok else 3)
PY
    local status=$?
    [ "$status" -eq 0 ] || break
  done 2>&1 | tee -a "$out/runs.jsonl"
  stop_all
}
: >"$out/runs.jsonl"
set +e
measure ungated false 2 ${UNGATED:-2 3 4 5}
measure gated true 2 ${GATED:-4 5 6 7 8 10 12}
measure gated-refresh-5s true 5 ${GATED5:-6 8 10 12 14 16}
set -e
python3 - "$out/runs.jsonl" <<'PY'
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
best = {}
for r in runs:
    if r["kept_up"]:
        best[r["mode"]] = max(best.get(r["mode"], 0), r["cameras"])
u = best.get("ungated")
print(json.dumps({"cameras_per_box": best, "ratios": {m: round(n / u, 2) for m, n in best.items()} if u else None}))
PY
