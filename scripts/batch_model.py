#!/usr/bin/env python3
"""A copy of a YOLO ONNX export that takes a batch of images: [N, 3, H, W] -> [N, 4 + C, A].

Ultralytics exports with a fixed batch of one unless asked for `dynamic=True`, and the export
cannot be redone here (no model hub). The fixed batch lives in two places: the input and
output shapes, and the shape constants of the Reshape nodes (YOLOv12's area attention folds
the batch into its first axis as batch x areas). This script makes the batch dimension
symbolic and rewrites each Reshape's first target dimension, which is the batch (or batch x
areas), as -1; a -1 already elsewhere in that target is replaced by the size that shape
inference finds for batch one. It then checks the result: a batch of distinct images must give,
image by image, what the original model gives each one alone.

    .venv/bin/python scripts/batch_model.py [--model models/yolov12n.onnx]
        [--out models/yolov12n-batch.onnx] [--check-batch 3]

vigil uses the copy with `detector.max_batch` > 1 (see config/vigil.toml): frames of several
cameras waiting for the model at the same time go through it in one run.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pyenv import constant_tensors, ensure  # noqa: E402

ensure(("onnx", "onnx"))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import numpy_helper, shape_inference  # noqa: E402


def inferred_shapes(model):
    inferred = shape_inference.infer_shapes(model)
    shapes = {}
    for v in list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
        shapes[v.name] = dims
    return shapes


def make_dynamic(model):
    graph = model.graph
    shapes = inferred_shapes(model)
    consts = constant_tensors(graph)
    rewritten = 0
    for node in graph.node:
        if node.op_type != "Reshape":
            continue
        name = node.input[1]
        if name not in consts:
            raise SystemExit(f"{node.name}: its target shape is computed, not a constant; cannot rewrite")
        _, target = consts[name]
        target = target.astype(np.int64).copy()
        out = shapes.get(node.output[0])
        if out is None or any(d is None for d in out):
            raise SystemExit(f"{node.name}: shape inference gives no static output shape")
        new = np.array(out, dtype=np.int64)
        new[0] = -1
        if list(new) == list(target):
            continue
        # Targets are often shared by several Reshapes of different sizes: each gets its own.
        fresh = f"{node.name}/batch_target"
        graph.initializer.append(numpy_helper.from_array(new, fresh))
        node.input[1] = fresh
        rewritten += 1
    for value in list(graph.input) + list(graph.output):
        value.type.tensor_type.shape.dim[0].ClearField("dim_value")
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    del graph.value_info[:]
    return rewritten


def check(original, batched, count, seed=7):
    rng = np.random.default_rng(seed)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    one = ort.InferenceSession(original, options, providers=["CPUExecutionProvider"])
    many = ort.InferenceSession(batched, options, providers=["CPUExecutionProvider"])
    inp = one.get_inputs()[0]
    _, c, h, w = inp.shape
    images = rng.random((count, c, h, w), dtype=np.float32)
    together = many.run(None, {inp.name: images})[0]
    worst = 0.0
    for i in range(count):
        alone = one.run(None, {inp.name: images[i : i + 1]})[0]
        worst = max(worst, float(np.abs(alone[0] - together[i]).max()))
    single = many.run(None, {inp.name: images[:1]})[0]
    worst = max(worst, float(np.abs(one.run(None, {inp.name: images[:1]})[0] - single).max()))
    return worst, together.shape


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=os.path.join(root, "models/yolov12n.onnx"))
    p.add_argument("--out", default=os.path.join(root, "models/yolov12n-batch.onnx"))
    p.add_argument("--check-batch", type=int, default=3, help="images in the equivalence check")
    args = p.parse_args()

    model = onnx.load(args.model)
    rewritten = make_dynamic(model)
    onnx.checker.check_model(model)
    tmp = args.out + ".tmp"
    onnx.save(model, tmp)
    worst, shape = check(args.model, tmp, args.check_batch)
    # Batched matrix products may sum in another order: allow float rounding, nothing more.
    if worst > 1e-2:
        os.remove(tmp)
        raise SystemExit(f"the batched model disagrees with the original by {worst:.4g}: not written")
    os.replace(tmp, args.out)
    print(
        f"wrote {args.out}: batch dimension symbolic, {rewritten} Reshape targets rewritten; "
        f"a batch of {args.check_batch} gives {list(shape)}, each image within {worst:.2g} of the original alone"
    )


if __name__ == "__main__":
    main()
