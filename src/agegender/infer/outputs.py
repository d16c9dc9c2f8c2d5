"""Writing prediction results: CSV or JSON rows and annotated copies of the photos.

The CLI's ``predict`` and any script use the same writer:

>>> with ResultWriter("faces.csv", predictor.spec, annotate="annotated/") as out:
...     for result in predictor.predict_paths(paths):
...         out.write(result)

Rows are written as results come (CSV streams; JSON is written as one list at the end),
one per face or one per image without a face, with the columns of :func:`result_columns`.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np

from agegender.artifact import ModelSpec
from agegender.data.records import AGE_GROUP_NAMES
from agegender.infer.results import ImageResult, result_rows

BASE_COLUMNS = (
    "path",
    "face_index",
    "x",
    "y",
    "w",
    "h",
    "detector_score",
    "p_female",
    "p_male",
    "gender",
    "age",
    "age_group",
    "face_source",
    "error",
)


def result_columns(spec: ModelSpec) -> list[str]:
    """The CSV columns for a model: the base columns, plus each age group's probability
    for models that give them (age groups, DEX)."""
    extra = [f"p_age_{g}" for g in AGE_GROUP_NAMES] if spec.age in ("groups", "dex") else []
    return [*BASE_COLUMNS, *extra]


def output_format(out: str | Path) -> str:
    """``csv`` or ``json`` from a file name (``-`` is CSV on stdout); else ValueError."""
    if str(out) == "-":
        return "csv"
    suffix = Path(out).suffix.lower()
    if suffix not in (".csv", ".json"):
        raise ValueError(f"--out must end in .csv or .json (or be -), got {out}")
    return suffix[1:]


class Annotator:
    """Saves a copy of each photo with its faces' boxes, landmarks and labels into
    ``folder`` (JPEG; names made unique: ``photo.jpg``, ``photo_1.jpg`` ...)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._used: set[str] = set()

    def write(self, result: ImageResult) -> Path | None:
        from PIL import Image

        from agegender.data.imageio import ImageError, open_image
        from agegender.infer.drawing import draw_results

        if not result.faces:
            return None
        try:
            rgb = np.asarray(open_image(result.source))
        except ImageError:
            return None
        stem = Path(result.source).stem.replace(".jpg.chip", "")
        name, k = f"{stem}.jpg", 1
        while name in self._used:
            name, k = f"{stem}_{k}.jpg", k + 1
        self._used.add(name)
        path = self.folder / name
        Image.fromarray(draw_results(rgb, result)).save(path, quality=92)
        return path


class ResultWriter:
    """CSV / JSON rows to ``out`` (a path, ``-`` for stdout, or ``None`` for no rows) and
    annotated photos to ``annotate``; counts faces and failed inputs as it goes."""

    def __init__(
        self,
        out: str | Path | None,
        spec: ModelSpec,
        *,
        annotate: str | Path | None = None,
        stream: IO[str] | None = None,
    ) -> None:
        self.format = None if out is None else output_format(out)
        self.columns = result_columns(spec)
        self.annotator = None if annotate is None else Annotator(annotate)
        self._own = False
        self.stream: IO[str] | None = stream
        if out is not None and stream is None:
            if str(out) == "-":
                self.stream = sys.stdout
            else:
                Path(out).parent.mkdir(parents=True, exist_ok=True)
                self.stream = open(out, "w", newline="", encoding="utf-8")  # noqa: SIM115
                self._own = True
        self._csv = None
        if self.format == "csv" and self.stream is not None:
            self._csv = csv.DictWriter(self.stream, self.columns, restval="")
            self._csv.writeheader()
        self._json: list[dict[str, Any]] = []
        self.images = self.faces = self.failed = self.unreadable = 0

    def write(self, result: ImageResult) -> None:
        self.images += 1
        self.faces += len(result.faces)
        self.failed += result.error is not None
        self.unreadable += result.error is not None and result.error != "no face found"
        for row in result_rows(result):
            if self._csv is not None:
                self._csv.writerow({k: ("" if v is None else v) for k, v in row.items()})
            elif self.format == "json":
                self._json.append(row)
        if self.annotator is not None:
            self.annotator.write(result)

    def close(self) -> None:
        if self.format == "json" and self.stream is not None:
            json.dump(self._json, self.stream, indent=1)
            self.stream.write("\n")
        if self._own and self.stream is not None:
            self.stream.close()
        self._own = False

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
