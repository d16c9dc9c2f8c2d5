"""The face path, written once: detect -> (retry on a padded copy) -> align or crop.

``predict``, the service, ``evaluate --detector ...`` and the cross-dataset benchmark all
call :func:`find_faces`, so an evaluation measures exactly what a user gets.

- A detector that returns landmarks (BlazeFace) gets each face **aligned**: a similarity
  transform from its eyes, nose tip and mouth to :data:`~agegender.infer.align.UTKFACE_TEMPLATE`
  (where those points fall in the training crops), so tilted faces come out upright and
  framed like a training face. Other detectors' boxes are cut square with the detector's
  (or the model's) margin and shift (:func:`~agegender.infer.detector.crop_face`).
- When nothing is found, the detector looks once more at a copy padded by a quarter of the
  long side with black on every side: tight face crops (UTKFace, CelebA, Adience
  ``aligned/``) fill the frame, and detectors trained on photos miss faces cut at the
  border. Such faces have ``source = "padded"``; the others ``"detected"``; the ``none``
  detector's whole image is ``"whole_image"``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from agegender.infer.align import UTKFACE_TEMPLATE, align_face
from agegender.infer.detector import Box, Detector, crop_face

#: Padding of the retry, as a fraction of the image's long side on each side.
RETRY_PAD = 0.25
#: The retry looks for faces that fill the frame, so a larger image is shrunk to this long
#: side first (a padded full-size copy of a 36 MP photo would cost another 170 MB).
RETRY_MAX_SIDE = 1024
#: The retry is for a face that fills the frame: what it finds smaller than this share of
#: the photo's short side is not kept (on the group-photo benchmark's dev split, photos
#: without faces got 2 false faces of about 1/30 of the short side from the retry).
RETRY_MIN_SHARE = 0.15


@dataclass
class FoundFace:
    """A face: its box (and landmarks) in the photo, how it was found, and its crop."""

    box: Box
    crop: np.ndarray  # (S, S, 3) uint8 RGB
    source: str  # detected | padded | whole_image
    aligned: bool


def _unpad(box: Box, pad: int, w: int, h: int, scale: float = 1.0) -> Box | None:
    """A box found in the padded (and ``scale``-shrunk) copy, in the original's pixels."""
    x0, y0 = max(0.0, (box.x - pad) / scale), max(0.0, (box.y - pad) / scale)
    x1 = min(float(w), (box.x + box.w - pad) / scale)
    y1 = min(float(h), (box.y + box.h - pad) / scale)
    if x1 - x0 < 1 or y1 - y0 < 1:
        return None
    marks = None
    if box.landmarks is not None:
        marks = tuple(((px - pad) / scale, (py - pad) / scale) for px, py in box.landmarks)
    return Box(int(x0), int(y0), int(x1 - x0), int(y1 - y0), box.score, marks)


def detect_faces(detector: Detector, rgb: np.ndarray) -> tuple[list[Box], str]:
    """Boxes in ``rgb`` (best first) and how they were found: ``detected``, ``padded``
    (only the retry on the padded copy found them) or ``whole_image`` (``none``)."""
    boxes = detector.detect(rgb)
    if detector.name == "none":
        return boxes, "whole_image"
    if boxes:
        return boxes, "detected"
    return padded_retry(detector, rgb), "padded"


def padded_retry(detector: Detector, rgb: np.ndarray) -> list[Box]:
    """The faces of ``rgb`` found on a copy padded all round (a face crop that fills the
    frame, which a detector misses): the retry when nothing was found."""
    h, w = rgb.shape[:2]
    if min(h, w) < 8:
        return []
    scale = min(1.0, RETRY_MAX_SIDE / max(h, w))
    small = rgb
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    pad = int(round(RETRY_PAD * max(small.shape[:2])))
    padded = cv2.copyMakeBorder(small, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    found = [_unpad(b, pad, w, h, scale) for b in detector.detect(padded)]
    least = RETRY_MIN_SHARE * min(h, w)
    return [b for b in found if b is not None and max(b.w, b.h) >= least]


def find_faces(
    rgb: np.ndarray,
    detector: Detector,
    size: int,
    *,
    margin: float,
    shift: float,
    align: bool = True,
    template: tuple[tuple[float, float], ...] = UTKFACE_TEMPLATE,
) -> list[FoundFace]:
    """Every face of ``rgb`` as a ``size`` px square crop framed like the training faces
    (aligned on landmarks when the detector gives them and ``align``)."""
    boxes, source = detect_faces(detector, rgb)
    return crop_faces(
        rgb, boxes, source, size, margin=margin, shift=shift, align=align, template=template
    )


def crop_faces(
    rgb: np.ndarray,
    boxes: list[Box],
    source: str,
    size: int,
    *,
    margin: float,
    shift: float,
    align: bool = True,
    template: tuple[tuple[float, float], ...] = UTKFACE_TEMPLATE,
) -> list[FoundFace]:
    """The crops of ``boxes`` (found in ``rgb``, or mapped onto it) as :func:`find_faces`
    cuts them."""
    out = []
    for b in boxes:
        if align and b.landmarks is not None and len(b.landmarks) >= len(template):
            crop, aligned = align_face(rgb, b.landmarks, size, template), True
        else:
            crop, aligned = crop_face(rgb, b, margin, shift), False
            if crop.shape[0] != size:
                interp = cv2.INTER_AREA if crop.shape[0] > size else cv2.INTER_LINEAR
                crop = cv2.resize(crop, (size, size), interpolation=interp)
        out.append(FoundFace(b, crop, source, aligned))
    return out


def largest_face(found: list[FoundFace]) -> FoundFace:
    """The biggest face (then the surest): the one a per-photo label belongs to."""
    return max(found, key=lambda f: (f.box.w * f.box.h, f.box.score))
