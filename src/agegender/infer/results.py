"""What the predictor returns: one :class:`ImageResult` per input with its
:class:`FaceResult` s, and the flat rows (:func:`result_rows`) the CSV and JSON outputs and
the service are made of."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np


@dataclass
class FaceResult:
    """One face: where it is and what the model says about it."""

    face_index: int
    box: tuple[int, int, int, int]  # x, y, w, h in the (EXIF-rotated) image's pixels
    detector_score: float
    # P(female) and P(male) of the model's decision: the label is the more probable one
    p_female: float | None = None
    p_male: float | None = None
    gender: str | None = None  # "female" | "male" (None: model has no gender head)
    age: float | None = None  # years
    age_group: str | None = None  # Adience group name, e.g. "25-32"
    age_group_probs: dict[str, float] | None = None
    age_probs: list[float] | None = None  # DEX only: P(age = k) for k = 0..100
    face_source: str = "detected"  # detected | padded (found on a padded copy) | whole_image
    landmarks: list[list[float]] | None = None  # detector key points (x, y), if any
    aligned: bool = False  # crop aligned on the landmarks (else a square around the box)
    crop: np.ndarray | None = field(default=None, repr=False, compare=False)  # keep_crops
    # the network's own P(female), before the model's calibrated decision moved it (equal
    # to p_female for a model without one); not the answer: see p_female and gender
    p_female_raw: float | None = None

    def to_dict(self, ndigits: int = 6) -> dict[str, Any]:
        # every mutable value below is rebuilt, so a shallow copy is enough; the crop is an
        # array, not JSON (see crop_data_url)
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "crop"}
        d["box"] = list(self.box)
        for k in ("detector_score", "p_female", "p_male", "age", "p_female_raw"):
            if d[k] is not None:
                d[k] = round(float(d[k]), ndigits)
        if d["age_group_probs"] is not None:
            d["age_group_probs"] = {k: round(v, ndigits) for k, v in d["age_group_probs"].items()}
        if d["age_probs"] is not None:
            d["age_probs"] = [round(v, ndigits) for v in d["age_probs"]]
        if d["landmarks"] is not None:
            d["landmarks"] = [[round(v, 2) for v in pt] for pt in d["landmarks"]]
        return d


@dataclass
class ImageResult:
    """One input image: its faces, or ``error`` (one line) when it gave none."""

    source: str
    faces: list[FaceResult] = field(default_factory=list)
    error: str | None = None
    width: int | None = None
    height: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self, ndigits: int = 6) -> dict[str, Any]:
        return {
            "source": self.source,
            "width": self.width,
            "height": self.height,
            "error": self.error,
            "faces": [f.to_dict(ndigits) for f in self.faces],
        }


def result_rows(result: ImageResult) -> list[dict[str, Any]]:
    """Flat rows (one per face, or one with ``error`` when there is none) for CSV/JSON."""
    base = {"path": result.source}
    if not result.faces:
        return [
            {
                **base,
                "face_index": None,
                "x": None,
                "y": None,
                "w": None,
                "h": None,
                "detector_score": None,
                "p_female": None,
                "p_male": None,
                "gender": None,
                "age": None,
                "age_group": None,
                "face_source": None,
                "error": result.error,
            }
        ]
    rows = []
    for f in result.faces:
        d = f.to_dict()
        x, y, bw, bh = f.box
        row = {
            **base,
            "face_index": f.face_index,
            "x": x,
            "y": y,
            "w": bw,
            "h": bh,
            "detector_score": d["detector_score"],
            "p_female": d["p_female"],
            "p_male": d["p_male"],
            "gender": f.gender,
            "age": d["age"],
            "age_group": f.age_group,
            "face_source": f.face_source,
            "error": None,
        }
        for name, prob in (d["age_group_probs"] or {}).items():
            row[f"p_age_{name}"] = prob
        rows.append(row)
    return rows
