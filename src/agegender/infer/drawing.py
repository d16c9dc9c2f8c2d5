"""Pictures of results: boxes, landmarks and labels drawn on a photo, and face crops as
data URLs for the web page."""

from __future__ import annotations

import cv2
import numpy as np

from agegender.infer.results import FaceResult, ImageResult


def crop_data_url(crop: np.ndarray) -> str:
    """A face crop as a ``data:image/png;base64,...`` URL (for the web page)."""
    import base64

    ok, buf = cv2.imencode(".png", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("cannot encode the face crop")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def face_label(face: FaceResult) -> str:
    """A short label such as ``female 93%, 27 y (25-32)``."""
    parts = []
    if face.gender is not None and face.p_female is not None and face.p_male is not None:
        parts.append(f"{face.gender} {100 * max(face.p_female, face.p_male):.0f}%")
    if face.age is not None:
        parts.append(f"{face.age:.0f} y" + (f" ({face.age_group})" if face.age_group else ""))
    return ", ".join(parts)


def draw_results(rgb: np.ndarray, result: ImageResult) -> np.ndarray:
    """A copy of ``rgb`` with each face's box and label drawn on it."""
    img = np.ascontiguousarray(rgb.copy())
    h, w = img.shape[:2]
    thick = max(1, round(max(h, w) / 300))
    scale = max(0.4, max(h, w) / 800)
    colors = [(230, 25, 75), (60, 180, 75), (67, 99, 216), (245, 130, 49), (145, 30, 180)]
    for face in result.faces:
        x, y, bw, bh = face.box
        color = colors[face.face_index % len(colors)]
        cv2.rectangle(img, (x, y), (x + bw, y + bh), color, thick)
        for px, py in face.landmarks or []:
            cv2.circle(img, (round(px), round(py)), max(2, 2 * thick), color, -1, cv2.LINE_AA)
        text = f"{face.face_index}: {face_label(face)}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        ty = y - 4 if y - th - base - 4 >= 0 else min(h - 1, y + bh + th + 4)
        lx = max(0, min(x, w - tw - 4))  # keep the label inside the image
        cv2.rectangle(img, (lx, ty - th - base), (lx + tw + 4, ty + base), color, -1)
        cv2.putText(
            img,
            text,
            (lx + 2, ty),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (255, 255, 255),
            thick,
            cv2.LINE_AA,
        )
    return img
