#!/usr/bin/env python3
"""The first frames of OpenCV's vtest.avi (Debian's opencv-doc) as JPEG files, quality 90:
the CCTV sequence of the test data (scripts/fetch-testdata.sh) and the calibration frames of
the int8 model in the Docker image (docker/Dockerfile). Needs opencv-python-headless.

    python3 scripts/vtest_frames.py VTEST.AVI OUT_DIR [--count 300] [--stills STILLS_DIR]

Writes OUT_DIR/0000.jpg …; with --stills also frames 0, 100 and 200 as
STILLS_DIR/vtest_f000.png … (lossless, for the still-image tests).
"""
import argparse
import os

import cv2


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("video")
    p.add_argument("out")
    p.add_argument("--count", type=int, default=300)
    p.add_argument("--stills")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    cap = cv2.VideoCapture(args.video)
    written = 0
    for i in range(args.count):
        ok, frame = cap.read()
        if not ok:
            break
        cv2.imwrite(os.path.join(args.out, f"{i:04d}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
        written += 1
        if args.stills and i in (0, 100, 200):
            cv2.imwrite(os.path.join(args.stills, f"vtest_f{i:03d}.png"), frame)
    if written == 0:
        raise SystemExit(f"no frames read from {args.video}")
    print(f"{written} frames of {args.video} in {args.out}")


if __name__ == "__main__":
    main()
