#!/usr/bin/env bash
# Builds the test data from the package registries, for machines without ../shared/testdata:
# bus.jpg and zidane.jpg from the ultralytics wheel (AGPL-3.0), the OpenCV sample images and
# the vtest CCTV video from Debian's opencv-doc (Apache-2.0 AND BSD-3-Clause), the video's
# first 300 frames as JPEG (quality 90), and the reference detections and letterboxed inputs
# recomputed by scripts/reference_detect.py (the same plain Python pipeline as ../shared).
# Usage: scripts/fetch-testdata.sh DIR
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: fetch-testdata.sh DIR}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out/images" "$out/sequences/vtest" "$out/reference"
.venv/bin/pip install -q pillow numpy opencv-python-headless

.venv/bin/pip download -q --no-deps -d "$work" ultralytics==8.4.190
python3 - "$work"/ultralytics-*.whl "$out/images" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for name in ("bus.jpg", "zidane.jpg"):
        open(f"{sys.argv[2]}/{name}", "wb").write(z.read(f"ultralytics/assets/{name}"))
PY

(cd "$work" && apt-get download opencv-doc >/dev/null 2>&1) || { apt-get update -qq && (cd "$work" && apt-get download opencv-doc); }
dpkg-deb -x "$work"/opencv-doc_*.deb "$work/doc"
data="$work/doc/usr/share/doc/opencv-doc/examples/data"
for f in basketball1.png building.jpg leuvenA.jpg; do
  src=$(find "$data" -name "$f*" | head -n 1)
  case "$src" in *.gz) gunzip -c "$src" > "$out/images/opencv_$f" ;; *) cp "$src" "$out/images/opencv_$f" ;; esac
done
avi=$(find "$data" -name 'vtest.avi*' | head -n 1)
case "$avi" in *.gz) gunzip -c "$avi" > "$work/vtest.avi" ;; *) cp "$avi" "$work/vtest.avi" ;; esac
.venv/bin/python scripts/vtest_frames.py "$work/vtest.avi" "$out/sequences/vtest" --count 300 --stills "$out/images" >/dev/null

.venv/bin/python scripts/reference_detect.py models/yolov12n.onnx "$out"/images/* \
  --out-dir "$out/reference/yolov12n" --canvas-dir "$out/reference/canvas640" >/dev/null
touch "$out/.complete"
echo "test data written to $out" >&2
