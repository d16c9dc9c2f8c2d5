"""Face detectors and crops (``agegender.infer.detector``): Haar on real faces pasted into
photos (``photos`` in ``conftest.py``), the whole-image detector, ``crop_face``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from agegender.infer.detector import Box, HaarDetector, NoneDetector, crop_face


def test_haar_finds_pasted_faces(photos: list[Path]) -> None:
    det = HaarDetector()
    found = 0
    for p in photos:
        rgb = np.asarray(Image.open(p).convert("RGB"))
        boxes = det.detect(rgb)
        found += bool(boxes)
        for b in boxes:
            assert min(b.x, b.y) >= 0 and b.x + b.w <= 250 and b.y + b.h <= 250
            assert b.score > 0
        if boxes:
            assert boxes == sorted(boxes, key=lambda b: -b.score)
    assert found >= 0.75 * len(photos), f"Haar found faces in only {found}/{len(photos)} photos"


def test_haar_detects_on_downscaled_copy_and_maps_back(photos: list[Path]) -> None:
    rgb = np.asarray(Image.open(photos[0]).convert("RGB"))
    big = np.asarray(Image.fromarray(rgb).resize((1000, 1000)))
    small_boxes, big_boxes = HaarDetector().detect(rgb), HaarDetector().detect(big)
    assert small_boxes and big_boxes
    b, s = big_boxes[0], small_boxes[0]
    # the same face, 4x the coordinates (within the detector's step)
    assert abs(b.x - 4 * s.x) < 40 and abs(b.w - 4 * s.w) < 60


def test_crop_face_square_shift_and_pad() -> None:
    img = np.arange(100 * 200 * 3, dtype=np.uint32).reshape(100, 200, 3).astype(np.uint8)
    crop = crop_face(img, Box(80, 30, 40, 40, 1.0), margin=0.4)  # 72 px square, fits
    assert crop.shape == (72, 72, 3)
    edge = crop_face(img, Box(0, 0, 20, 20, 1.0), margin=0.4)  # shifted inside, not padded
    assert edge.shape == (36, 36, 3) and np.array_equal(edge, img[:36, :36])
    moved = crop_face(img, Box(80, 30, 40, 40, 1.0), margin=0.0, shift=0.25)  # 10 px down
    assert np.array_equal(moved, img[40:80, 80:120])
    whole = crop_face(img, (0, 0, 200, 100), margin=0.0)  # taller than the image: padded
    assert whole.shape == (200, 200, 3)
    assert np.array_equal(whole[50:150], img)
    assert np.array_equal(whole[0], img[0])  # edge rows repeated


def test_none_detector_whole_image() -> None:
    boxes = NoneDetector().detect(np.zeros((30, 40, 3), np.uint8))
    assert boxes == [Box(0, 0, 40, 30, 1.0)]
