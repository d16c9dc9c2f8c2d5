"""Face alignment: a similarity transform (rotation, scale, shift) from a detector's
landmarks to a canonical template, then one resampling to the crop size.

The template says where the eyes, nose tip and mouth centre fall in a training face crop,
as fractions of the crop side (x right, y down; "right eye" is the subject's right, on the
image's left). :data:`UTKFACE_TEMPLATE` was measured by running BlazeFace on UTKFace's
aligned crops, the training data of the bundled models (see the code map,
``docs/reference/architecture.md``), so an aligned photo is framed like a training face. A
tilted face comes out upright.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

#: Where BlazeFace (short range) puts the landmarks in UTKFace's 200x200 aligned crops, as
#: fractions of the side: right eye, left eye, nose tip, mouth centre. Medians over 600
#: crops (every 39th file, each padded by 25 % with black so the face is found; 600 of 600
#: found), made left-right symmetric: the eyes' median heights were 0.308 and 0.301, their
#: x 0.301 and 0.694 (interquartile ranges about 0.02-0.03), nose 0.527, mouth 0.723.
UTKFACE_TEMPLATE: tuple[tuple[float, float], ...] = (
    (0.3034, 0.3045),
    (0.6966, 0.3045),
    (0.5000, 0.5274),
    (0.5000, 0.7231),
)


#: Where BlazeFace (short range) puts the same points in dlib's 150 px face chips
#: (``get_face_chip(img, five_points, 150, padding=0.25)``, the input of dlib's face ResNet):
#: medians over 908 chips of UTKFace (every 39th) and CelebA-10k (300) faces, each padded by
#: 25 % with black, 908 of 908 found, made left-right symmetric (eyes at y 0.313 and 0.307,
#: x 0.316 and 0.678; nose 0.521, mouth 0.700; interquartile ranges 0.02-0.05). Measured by
#: ``scripts/measure_face_template.py`` (dlib-bin's own chips).
DLIB_CHIP_TEMPLATE: tuple[tuple[float, float], ...] = (
    (0.3187, 0.3098),
    (0.6813, 0.3098),
    (0.5000, 0.5205),
    (0.5000, 0.7003),
)

#: The framings a registered model can ask for (``default_cfg["face_template"]``).
FACE_TEMPLATES: dict[str, tuple[tuple[float, float], ...]] = {
    "utkface": UTKFACE_TEMPLATE,
    "dlib_chip": DLIB_CHIP_TEMPLATE,
}


def named_template(name: str) -> tuple[tuple[float, float], ...]:
    """The template called ``name`` (:data:`FACE_TEMPLATES`); ``ValueError`` otherwise."""
    try:
        return FACE_TEMPLATES[name]
    except KeyError:
        raise ValueError(
            f"unknown face template {name!r}; choose one of {', '.join(FACE_TEMPLATES)}"
        ) from None


def as_template(template: Sequence[Sequence[float]] | None) -> tuple[tuple[float, float], ...]:
    """``template`` as a tuple of ``(x, y)`` tuples; None is :data:`UTKFACE_TEMPLATE`."""
    return UTKFACE_TEMPLATE if template is None else tuple(tuple(p) for p in template)


def framing_template(crop: Sequence[float] | None, reference: Sequence[float] | None) -> tuple:
    """Where the landmarks fall in faces cut with ``crop`` (a box ``[x0, y0, x1, y1]`` as
    fractions of the image) from images in which ``reference`` is the box that gives
    UTKFace's framing (a reader's default crop; None: the whole image already is). ``crop``
    None or equal to ``reference`` gives :data:`UTKFACE_TEMPLATE` itself; a box 1.6x as
    large gives a template 1/1.6 the size: the model sees hair and neck, and the predictor
    cuts photos the same way."""
    ref = tuple(float(v) for v in (reference or (0.0, 0.0, 1.0, 1.0)))
    box = tuple(float(v) for v in crop) if crop is not None else ref
    if np.allclose(box, ref, atol=1e-6):
        return UTKFACE_TEMPLATE
    out = []
    for u, v in UTKFACE_TEMPLATE:
        x = ref[0] + u * (ref[2] - ref[0])
        y = ref[1] + v * (ref[3] - ref[1])
        out.append(
            (round((x - box[0]) / (box[2] - box[0]), 4), round((y - box[1]) / (box[3] - box[1]), 4))
        )
    return tuple(out)


#: Two templates farther apart than this (a fraction of the crop side) are two framings.
FRAMING_TOLERANCE = 0.02


def template_gap(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> float:
    """The largest distance between two templates' points, as a fraction of the crop side."""
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def similarity_transform(
    landmarks: Sequence[Sequence[float]],
    size: int,
    template: Sequence[Sequence[float]] = UTKFACE_TEMPLATE,
) -> np.ndarray:
    """The 2x3 similarity (least squares, no shear) mapping the first ``len(template)``
    landmarks onto ``template`` scaled to a ``size`` px crop."""
    n = len(template)
    src = np.asarray(landmarks, dtype=np.float64)[:n]
    dst = np.asarray(template, dtype=np.float64) * size
    if src.shape != dst.shape:
        raise ValueError(f"need {n} landmarks (x, y), got {src.shape}")
    # Umeyama / Procrustes without reflection, in closed form
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    var = (s0**2).sum()
    if var <= 1e-9:
        raise ValueError("landmarks coincide: cannot align")
    a = (s0 * d0).sum() / var  # scale * cos
    b = (s0[:, 0] * d0[:, 1] - s0[:, 1] * d0[:, 0]).sum() / var  # scale * sin
    rot = np.array([[a, -b], [b, a]])
    t = mu_d - rot @ mu_s
    return np.hstack([rot, t[:, None]])


def align_face(
    rgb: np.ndarray,
    landmarks: Sequence[Sequence[float]],
    size: int,
    template: Sequence[Sequence[float]] = UTKFACE_TEMPLATE,
) -> np.ndarray:
    """The ``(size, size, 3)`` uint8 face crop of ``rgb`` aligned on ``landmarks``.

    Large faces are first shrunk with area averaging (no aliasing), then warped at about
    1:1; parts outside the photo repeat its edge pixels."""
    m = similarity_transform(landmarks, size, template)
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    if scale < 0.9:
        inv = cv2.invertAffineTransform(m)
        corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], np.float64)
        pts = corners @ inv.T
        h, w = rgb.shape[:2]
        x0, y0 = np.floor(pts.min(0)).astype(int) - 2
        x1, y1 = np.ceil(pts.max(0)).astype(int) + 2
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if x1 - x0 >= 2 and y1 - y0 >= 2:
            region = rgb[y0:y1, x0:x1]
            sw, sh = max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))
            small = cv2.resize(region, (sw, sh), interpolation=cv2.INTER_AREA)
            fx, fy = sw / (x1 - x0), sh / (y1 - y0)
            lin = m[:, :2] @ np.diag([1 / fx, 1 / fy])
            shift = m[:, :2] @ np.array([x0, y0], np.float64) + m[:, 2]
            m, rgb = np.hstack([lin, shift[:, None]]), small
    out = cv2.warpAffine(
        np.ascontiguousarray(rgb),
        m,
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    return np.ascontiguousarray(out)
