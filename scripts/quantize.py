#!/usr/bin/env python3
"""Static int8 (QDQ) quantization of the detector, calibrated on frames of the CCTV sequence.

The tail of the detection head stays in fp32: it concatenates box coordinates (0-640) with class
scores (0-1) into one tensor, and one int8 scale for both loses every score (measured: a
full-graph int8 model finds nothing). The tail is the last convolution of each branch (it gives
the box and class logits) and everything from the concatenation of those logits onwards (DFL,
sigmoid, box decoding). The rest — backbone, neck and the head's convolution stacks — is
quantized per channel. (Keeping the whole head in fp32 was ~1.15x slower through vigil for
the same F1 0.987: see models/README.md.)

    .venv/bin/python scripts/quantize.py [--model models/yolov12n.onnx]
        [--out models/yolov12n-int8.onnx] [--frames DIR] [--count 32]

Pre-processing mirrors vigil's (src/vision): scale to fit, bilinear resize, pad 114 centred,
RGB, /255, planar float32. Compare the result with the fp32 model through vigil itself:
`cargo run --release --example int8_eval`.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pyenv import ensure  # noqa: E402

ensure(("onnx", "onnx"), ("PIL", "pillow"))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime  # noqa: E402
from onnxruntime.quantization import (  # noqa: E402
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: E402
from PIL import Image  # noqa: E402


def letterbox(path, width, height):
    image = Image.open(path).convert("RGB")
    scale = min(width / image.width, height / image.height)
    w, h = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    resized = image.resize((w, h), Image.BILINEAR)
    canvas = Image.new("RGB", (width, height), (114, 114, 114))
    canvas.paste(resized, ((width - w) // 2, (height - h) // 2))
    array = np.asarray(canvas, dtype=np.float32) / 255.0
    return array.transpose(2, 0, 1)[None]


class Frames(CalibrationDataReader):
    """The calibration frames, letterboxed; readable a range at a time (CalibStridedMinMax)."""

    def __init__(self, files, name, width, height):
        self.all = list(files)
        self.files = iter(self.all)
        self.name, self.width, self.height = name, width, height

    def __len__(self):
        return len(self.all)

    def set_range(self, start_index, end_index):
        self.files = iter(self.all[start_index:end_index])

    def get_next(self):
        path = next(self.files, None)
        return None if path is None else {self.name: letterbox(path, self.width, self.height)}


# Calibration frames whose activations are held in memory at once.
STRIDE = 8


def head_prefix(model):
    """The module prefix of the node that produces the model's output ("/model.21/")."""
    output = model.graph.output[0].name
    for node in model.graph.node:
        if output in node.output:
            parts = node.name.strip("/").split("/")
            if len(parts) >= 2:
                return "/" + parts[0] + "/"
    raise SystemExit(f"cannot find the head: no node named like /model.N/… produces {output}")


def head_tail(model):
    """The head's nodes that stay fp32: each Concat of the head whose inputs all come from
    convolutions (the per-level join of box and class logits), those convolutions, and every
    node downstream of the joins."""
    prefix = head_prefix(model)
    head = [n for n in model.graph.node if n.name.startswith(prefix)]
    producer = {out: n for n in head for out in n.output}
    joins = [
        n
        for n in head
        if n.op_type == "Concat"
        and n.input
        and all(i in producer and producer[i].op_type == "Conv" for i in n.input)
    ]
    if not joins:
        raise SystemExit(f"cannot find the head's logits in {prefix}: no Concat of convolutions")
    tail = {producer[i].name for n in joins for i in n.input}
    frontier = [out for n in joins for out in n.output]
    tail.update(n.name for n in joins)
    consumers = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    while frontier:
        for n in consumers.get(frontier.pop(), []):
            if n.name not in tail:
                tail.add(n.name)
                frontier.extend(n.output)
    return prefix, sorted(tail)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=os.path.join(root, "models/yolov12n.onnx"))
    p.add_argument("--out", default=os.path.join(root, "models/yolov12n-int8.onnx"))
    shared = os.path.join(root, "../shared/testdata/sequences/vtest")
    p.add_argument("--frames", default=shared if os.path.isdir(shared) else os.path.join(root, "testdata/sequences/vtest"))
    p.add_argument("--count", type=int, default=32, help="calibration frames, spread over the folder")
    args = p.parse_args()
    if not os.path.isfile(args.model):
        raise SystemExit(f"no model at {args.model} (scripts/setup.sh puts it in models/)")
    if not os.path.isdir(args.frames):
        raise SystemExit(f"no frames folder at {args.frames} (scripts/setup.sh fetches the test data)")

    files = sorted(
        os.path.join(args.frames, f)
        for f in os.listdir(args.frames)
        if f.lower().endswith((".jpg", ".jpeg", ".png"))
    )
    if args.count < 1 or not files:
        raise SystemExit(f"no calibration frames: --count must be at least 1 and {args.frames} must hold JPEG or PNG frames")
    step = max(1, len(files) // args.count)
    calibration = files[::step][: args.count]
    # ONNX Runtime wants the frames in whole strides.
    stride = min(STRIDE, len(calibration))
    calibration = calibration[: len(calibration) // stride * stride]

    # Errors only: calibration's sessions warn about every initializer the graph leaves unused.
    onnxruntime.set_default_logger_severity(3)
    prepared = args.out + ".prep.onnx"
    quant_pre_process(args.model, prepared, skip_symbolic_shape=True)
    model = onnx.load(prepared)
    inp = model.graph.input[0]
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    height, width = (dims[2] or 640), (dims[3] or 640)
    prefix, tail = head_tail(model)
    print(f"calibrating on {len(calibration)} frames of {args.frames}; the tail of head {prefix} ({len(tail)} nodes) stays fp32")
    # Written under another name and renamed at the end: an interrupted run leaves no model
    # that looks finished (scripts/setup.sh goes by the file's presence and age).
    partial = args.out + ".partial.onnx"
    quantize_static(
        prepared,
        partial,
        Frames(calibration, inp.name, width, height),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        calibrate_method=CalibrationMethod.Percentile,
        nodes_to_exclude=tail,
        # Each activation's range is the 99.999th percentile of its values (ranges that ignore
        # the rarest outliers keep more resolution for the rest): F1 0.978 instead of 0.958 for
        # the 640x480 copy against the square fp32 model, at the same speed (models/README.md).
        # The histograms are collected `stride` frames at a time: all frames' activations at once
        # took more than 24 GB for 64 square frames. 32 frames agree as well as 64 (F1 0.978 and
        # 0.979) in half the time (about a minute per model on a fast host).
        extra_options={"CalibPercentile": 99.999, "CalibStridedMinMax": stride},
    )
    os.remove(prepared)
    # vigil reads the class names and input size from the metadata: keep the original's.
    source = onnx.load(args.model)
    out = onnx.load(partial)
    del out.metadata_props[:]
    out.metadata_props.extend(source.metadata_props)
    onnx.save(out, partial)
    os.replace(partial, args.out)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.1f} MB; fp32 {os.path.getsize(args.model) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
