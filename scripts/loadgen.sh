#!/usr/bin/env bash
# vigil under load on this machine: a fresh nats-server, `vigil serve` (release; archive and
# situation stage off unless LOADGEN_ARCHIVE=1), then `vigil loadgen` with the arguments given
# (default: 4 cameras at 2 frames/s each for 30 s, the CCTV sequence), report and chart under
# target/loadgen/.
#   scripts/loadgen.sh [LOADGEN ARGS...]      e.g. scripts/loadgen.sh --cameras 8 --inflight 4
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
scripts/setup.sh
cargo build --release --quiet --bin vigil
frames=$(sequence_dir)
out=target/loadgen
mkdir -p "$out"
run=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait; rm -rf "$run"' EXIT
port=$(free_port)
"$(nats_bin)" -a 127.0.0.1 -p "$port" -js -sd "$run/js" >"$run/nats.log" 2>&1 & pids+=($!)
wait_port "$port" nats-server
url="nats://127.0.0.1:$port"
archive=false; [ "${LOADGEN_ARCHIVE:-0}" = 1 ] && archive=true
VIGIL_NATS__URL=$url VIGIL_ARCHIVE__ENABLED=$archive VIGIL_SITUATIONS__ENABLED=$archive \
  target/release/vigil serve >"$run/vigil.log" 2>&1 & pids+=($!)
wait_vigil "$url" "${pids[-1]}" "$run/vigil.log"
[ $# -gt 0 ] || set -- --cameras 4 --fps 2 --duration 30
VIGIL_NATS__URL=$url target/release/vigil loadgen --frames "$frames" "$@" \
  --json "$out/report.json" --chart "$out/chart.png"
echo "report: $out/report.json  chart: $out/chart.png" >&2
