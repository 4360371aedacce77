#!/usr/bin/env python3
"""A copy of a square YOLO ONNX export that takes a rectangular image: [1, 3, H, W] -> [1, 4 + C, A].

A 4:3 camera frame letterboxed into the square 640x640 input fills 640x480 of it; the other
quarter is padding the model convolves for nothing. Ultralytics' own validation runs such
frames at 640x480 ("rect"); its ONNX export cannot, because the export fixes the input size in
three places, and it cannot be redone here (no model hub):
  * the input and output shapes;
  * the shape constants of some Reshapes (YOLOv12's area attention flattens a level's rows x
    columns into tokens and back, the detection head splits 64 DFL channels per anchor);
  * the anchor points and strides of the box decoding, constants with one entry per anchor.
This script sets a new input height (the width stays, so every level keeps its columns),
rewrites in each Reshape target the one dimension that counts rows (a level's rows, its rows x
columns, that divided into attention areas, or all the anchors) as -1, and computes the anchor
points and strides for the new grid the way Ultralytics does (cell centres, level by level),
after checking that the same computation gives back the original's constants exactly.

It then checks the result on real frames: the copy at W x H must find what the original finds
at W x W on the same frames (precision and recall at IoU 0.5 after NMS, both >= 0.9), or
nothing is written. Pass frames of the cameras' own aspect: a 640x384 copy (for 16:9 cameras)
checked on the 4:3 sequence scales those frames smaller than the original does and fails, as it
should (measured: precision 0.897, recall 0.938). vigil's own comparison: `cargo run --release --example int8_eval -- MODEL_A
MODEL_B`.

    .venv/bin/python scripts/rect_model.py [--model models/yolov12n.onnx] [--height 480]
        [--out models/yolov12n-640x480.onnx] [--frames DIR]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pyenv import constant_tensors, ensure  # noqa: E402

ensure(("onnx", "onnx"), ("PIL", "pillow"))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import numpy_helper, shape_inference  # noqa: E402
from PIL import Image  # noqa: E402


def set_array(owner, array):
    tensor = numpy_helper.from_array(array, owner.name if isinstance(owner, onnx.TensorProto) else owner.t.name)
    if isinstance(owner, onnx.TensorProto):
        owner.CopyFrom(tensor)
    else:
        owner.t.CopyFrom(tensor)


def anchor_grid(strides, height, width):
    """Ultralytics' make_anchors: cell centres (x, y) level by level, and each cell's stride."""
    points, steps = [], []
    for s in strides:
        h, w = height // s, width // s
        sy, sx = np.meshgrid(np.arange(h, dtype=np.float32) + 0.5, np.arange(w, dtype=np.float32) + 0.5, indexing="ij")
        points.append(np.stack((sx, sy), -1).reshape(-1, 2))
        steps.append(np.full(h * w, s, dtype=np.float32))
    return np.concatenate(points).T, np.concatenate(steps)


def rect(model, height):
    graph = model.graph
    dims = graph.input[0].type.tensor_type.shape.dim
    old_h, old_w = dims[2].dim_value, dims[3].dim_value
    if not old_h or old_h != old_w:
        raise SystemExit(f"expected a square input with a fixed size, found {old_h}x{old_w}")
    out_dims = [d.dim_value for d in graph.output[0].type.tensor_type.shape.dim]
    if len(out_dims) != 3 or not out_dims[1] or out_dims[2] <= out_dims[1]:
        raise SystemExit(f"expected an output [1, 4 + classes, anchors], found {out_dims}")
    old_anchors = out_dims[2]
    consts = constant_tensors(graph)
    # The strides constant: one entry per anchor, its distinct values the levels' strides.
    per_anchor = {name: (owner, a) for name, (owner, a) in consts.items() if a.ndim and a.shape[-1] == old_anchors}
    strides_found = [
        sorted({int(v) for v in a.ravel()}) for _, a in per_anchor.values() if a.ndim <= 2 and a.size == old_anchors
    ]
    if len(strides_found) != 1:
        raise SystemExit(f"expected one strides constant of {old_anchors} entries, found {len(strides_found)}")
    strides = strides_found[0]
    old_points, old_steps = anchor_grid(strides, old_h, old_w)
    if len(old_steps) != old_anchors:
        raise SystemExit(f"strides {strides} give {len(old_steps)} anchors, the model has {old_anchors}")
    new_points, new_steps = anchor_grid(strides, height, old_w)
    replaced = 0
    for name, (owner, a) in per_anchor.items():
        if a.size == old_anchors and np.array_equal(a.ravel(), old_steps):
            set_array(owner, new_steps.reshape(a.shape[:-1] + (-1,)))
        elif a.shape[-2:] == (2, old_anchors) and np.array_equal(a.reshape(2, -1), old_points):
            set_array(owner, new_points.reshape(a.shape[:-1] + (-1,)))
        else:
            raise SystemExit(f"{name} has one value per anchor but is neither the anchor points nor the strides")
        replaced += 1

    # Sizes that count image rows at 640x640, first match in a target wins (rows come before
    # columns in row-major layouts). Attention areas split a level's tokens into 2 or 4.
    rowish = {old_anchors}
    for s in [4] + strides:
        rows, cols = old_h // s, old_w // s
        rowish.update({rows, rows * cols, rows * cols // 2, rows * cols // 4})
    rewritten = 0
    for node in graph.node:
        if node.op_type != "Reshape":
            continue
        owner, target = consts.get(node.input[1], (None, None))
        if target is None:
            raise SystemExit(f"{node.name}: its target shape is computed, not a constant; cannot rewrite")
        if -1 in target[1:]:
            continue
        at = next((i for i in range(1, len(target)) if int(target[i]) in rowish), None)
        if at is None:
            continue
        new = target.astype(np.int64).copy()
        new[at] = -1
        fresh = f"{node.name}/rect_target"
        graph.initializer.append(numpy_helper.from_array(new, fresh))
        node.input[1] = fresh
        rewritten += 1
    dims[2].dim_value = height
    del graph.value_info[:]
    out = graph.output[0].type.tensor_type.shape.dim
    out[2].dim_value = len(new_steps)
    for prop in model.metadata_props:
        if prop.key == "imgsz":
            prop.value = f"[{height}, {old_w}]"
    return rewritten, replaced, len(new_steps)


def letterbox(path, width, height):
    image = Image.open(path).convert("RGB")
    scale = min(width / image.width, height / image.height)
    w, h = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    canvas = Image.new("RGB", (width, height), (114, 114, 114))
    left, top = (width - w) // 2, (height - h) // 2
    canvas.paste(image.resize((w, h), Image.BILINEAR), (left, top))
    array = np.asarray(canvas, dtype=np.float32) / 255.0
    return array.transpose(2, 0, 1)[None], scale, left, top


def detections(session, path, width, height, threshold=0.25):
    """Boxes in source pixels, classes and scores after class-wise NMS at IoU 0.45."""
    x, scale, left, top = letterbox(path, width, height)
    out = session.run(None, {session.get_inputs()[0].name: x})[0][0]
    scores = out[4:]
    classes, best = scores.argmax(0), scores.max(0)
    keep = best > threshold
    cx, cy, w, h = out[:4, keep]
    boxes = np.stack([(cx - w / 2 - left) / scale, (cy - h / 2 - top) / scale, (cx + w / 2 - left) / scale, (cy + h / 2 - top) / scale], 1)
    classes, best = classes[keep], best[keep]
    chosen = []
    for i in np.argsort(-best):
        if all(classes[j] != classes[i] or iou(boxes[i], boxes[j]) <= 0.45 for j in chosen):
            chosen.append(i)
    return [(boxes[i], classes[i]) for i in chosen]


def iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def agreement(original, copy, files, width, height):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    square = ort.InferenceSession(original, options, providers=["CPUExecutionProvider"])
    wide = ort.InferenceSession(copy, options, providers=["CPUExecutionProvider"])
    matched = found_square = found_wide = 0
    for path in files:
        a = detections(square, path, width, width)
        b = detections(wide, path, width, height)
        found_square, found_wide = found_square + len(a), found_wide + len(b)
        used = set()
        for box, cls in a:
            j = max(
                (j for j in range(len(b)) if j not in used and b[j][1] == cls),
                key=lambda j: iou(box, b[j][0]),
                default=None,
            )
            if j is not None and iou(box, b[j][0]) >= 0.5:
                used.add(j)
                matched += 1
    precision = matched / found_wide if found_wide else 1.0
    recall = matched / found_square if found_square else 1.0
    return precision, recall, found_square, found_wide


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=os.path.join(root, "models/yolov12n.onnx"))
    p.add_argument("--height", type=int, default=480, help="the new input height (a multiple of the largest stride)")
    p.add_argument("--out", help="default: models/<model>-<W>x<H>.onnx")
    shared = os.path.join(root, "../shared/testdata/sequences/vtest")
    p.add_argument("--frames", default=shared if os.path.isdir(shared) else os.path.join(root, "testdata/sequences/vtest"))
    p.add_argument("--check", type=int, default=20, help="frames in the agreement check")
    args = p.parse_args()

    if not os.path.isfile(args.model):
        raise SystemExit(f"no model at {args.model} (scripts/setup.sh puts the default one in models/)")
    files = sorted(
        os.path.join(args.frames, f)
        for f in (os.listdir(args.frames) if os.path.isdir(args.frames) else [])
        if f.lower().endswith((".jpg", ".jpeg", ".png"))
    )
    if not files:
        raise SystemExit(f"no JPEG or PNG frames in {args.frames} to check the copy on (--frames DIR)")
    files = files[:: max(1, len(files) // args.check)][: args.check]
    model = onnx.load(args.model)
    width = model.graph.input[0].type.tensor_type.shape.dim[3].dim_value
    if args.height <= 0 or args.height % 32 or args.height > width:
        raise SystemExit(f"--height must be a positive multiple of 32 no larger than the width ({width})")
    out_path = args.out or os.path.splitext(args.model)[0] + f"-{width}x{args.height}.onnx"
    rewritten, replaced, anchors = rect(model, args.height)
    model = shape_inference.infer_shapes(model, strict_mode=True)
    del model.graph.value_info[:]
    onnx.checker.check_model(model)
    partial = out_path + ".partial.onnx"
    onnx.save(model, partial)

    precision, recall, n_square, n_wide = agreement(args.model, partial, files, width, args.height)
    if precision < 0.9 or recall < 0.9:
        os.remove(partial)
        raise SystemExit(
            f"the {width}x{args.height} copy disagrees with the original: precision {precision:.3f}, "
            f"recall {recall:.3f} over {len(files)} frames; not written"
        )
    os.replace(partial, out_path)
    print(
        f"wrote {out_path}: input {width}x{args.height}, {anchors} anchors, {rewritten} Reshape targets and "
        f"{replaced} anchor constants rewritten; on {len(files)} frames it finds {n_wide} objects where the "
        f"original finds {n_square} at {width}x{width} (precision {precision:.3f}, recall {recall:.3f})"
    )


if __name__ == "__main__":
    main()
