"""Measure where BlazeFace puts the landmarks in dlib's 150 px face chips.

dlib's face descriptor is computed on ``dlib.get_face_chip(img, five_points, size=150,
padding=0.25)``. The predictor aligns photos with BlazeFace's landmarks, so to cut the same
chip it needs BlazeFace's view of that chip, measured the way ``UTKFACE_TEMPLATE`` was:
BlazeFace (short range) on the chips of training faces (each padded by 25 % with black, as
the face path's retry does), medians per point, made left-right symmetric.

Needs ``dlib-bin`` (test/benchmark-only) and the face weights package::

    python scripts/measure_face_template.py --data ../shared/data --every 39
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--every", type=int, default=39, help="every Nth UTKFace file")
    ap.add_argument("--celeba", type=int, default=300, help="CelebA-10k images (every 33rd)")
    args = ap.parse_args()

    import dlib
    import face_recognition_models as frm

    from agegender.data.imageio import load_rgb
    from agegender.infer.blazeface import BlazeFaceDetector

    root = Path(args.data)
    utk = sorted(p for p in (root / "utkface").rglob("*.jpg"))[:: args.every]
    celeba = sorted((root / "celeba-10k").rglob("*.jpg"))[::33][: args.celeba]
    hog = dlib.get_frontal_face_detector()
    shapes = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
    blaze = BlazeFaceDetector()
    points: list[np.ndarray] = []
    counts = {"images": 0, "dlib_found": 0, "dlib_fixed_box": 0, "blazeface_found": 0}
    for path in [*utk, *celeba]:
        rgb = load_rgb(str(path))
        h, w = rgb.shape[:2]
        counts["images"] += 1
        pad = h // 4
        big = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
        rects = hog(big, 1)
        if len(rects):
            counts["dlib_found"] += 1
            rect = max(rects, key=lambda r: r.area())
        else:  # a tight crop: the face fills the original frame
            counts["dlib_fixed_box"] += 1
            rect = dlib.rectangle(pad + w // 8, pad + h // 8, pad + w - w // 8, pad + h - h // 8)
        chip = dlib.get_face_chip(big, shapes(big, rect), size=150, padding=0.25)
        cpad = 150 // 4
        padded = cv2.copyMakeBorder(chip, cpad, cpad, cpad, cpad, cv2.BORDER_CONSTANT, value=0)
        boxes = blaze.detect(padded)
        if not boxes:
            continue
        counts["blazeface_found"] += 1
        marks = np.asarray(boxes[0].landmarks[:4], np.float64) - cpad
        points.append(marks / 150.0)
    pts = np.stack(points)
    med = np.median(pts, axis=0)
    iqr = np.percentile(pts, 75, axis=0) - np.percentile(pts, 25, axis=0)
    # left-right symmetric: mirror and average (right eye <-> left eye)
    eye_y = (med[0, 1] + med[1, 1]) / 2
    eye_dx = (med[1, 0] - med[0, 0]) / 2
    template = [
        (round(0.5 - eye_dx, 4), round(eye_y, 4)),
        (round(0.5 + eye_dx, 4), round(eye_y, 4)),
        (0.5, round(med[2, 1], 4)),
        (0.5, round(med[3, 1], 4)),
    ]
    print(
        json.dumps(
            {
                "counts": counts,
                "median": med.round(4).tolist(),
                "iqr": iqr.round(4).tolist(),
                "template": template,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
