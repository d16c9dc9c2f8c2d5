"""Writing prediction results: CSV, JSON or Parquet rows and annotated copies of the photos.

The CLI's ``predict`` (both engines) and any script use the same writer:

>>> with ResultWriter("faces.csv", predictor.spec, annotate="annotated/") as out:
...     for result in predictor.predict_paths(paths):
...         out.write(result)

Rows are written as results come (CSV streams; JSON is written as one list at the end;
Parquet in parts, see :mod:`agegender.infer.parquet`), one per face or one per image
without a face, with the columns of :func:`result_columns`. :func:`keyed_rows` is how an
:class:`ImageResult` becomes rows everywhere (the Ray engine's actors call it too), and
:meth:`ResultWriter.write_rows` takes one input's rows however they were made.
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np

from agegender.artifact import ModelSpec
from agegender.data.records import AGE_GROUP_NAMES
from agegender.infer.parquet import RUN_COLUMN, ParquetOutput, input_key, new_run_id
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


#: The columns of a video's rows (:mod:`agegender.infer.video`): ``kind`` is ``frame`` (a
#: face in a frame), ``track`` (one summary per tracked face) or ``video`` (one per video:
#: the frames predicted and, when reading stopped early, why).
VIDEO_BASE_COLUMNS = (
    "path",
    "kind",
    "frame",
    "time",
    "track_id",
    *BASE_COLUMNS[BASE_COLUMNS.index("x") : BASE_COLUMNS.index("age_group") + 1],
    "first_frame",
    "last_frame",
    "first_time",
    "last_time",
    "frames_seen",
    "confidence",
    "error",
)


def _age_group_columns(spec: ModelSpec) -> list[str]:
    return [f"p_age_{g}" for g in AGE_GROUP_NAMES] if spec.age in ("groups", "dex") else []


def result_columns(spec: ModelSpec) -> list[str]:
    """The CSV columns for a model: the base columns, plus each age group's probability
    for models that give them (age groups, DEX)."""
    return [*BASE_COLUMNS, *_age_group_columns(spec)]


def video_columns(spec: ModelSpec) -> list[str]:
    """The columns of a video's rows: :data:`VIDEO_BASE_COLUMNS`, plus each age group's
    probability (frame rows) for models that give them."""
    return [*VIDEO_BASE_COLUMNS, *_age_group_columns(spec)]


def output_format(out: str | Path) -> str:
    """``csv``, ``json`` or ``parquet`` from a file name (``-`` is CSV on stdout; a
    ``.parquet`` name ending in ``/`` is a folder of parts); else ValueError."""
    text = os.fspath(out)
    if text == "-":
        return "csv"
    suffix = Path(text.rstrip("/" + os.sep)).suffix.lower()
    if suffix not in (".csv", ".json", ".parquet"):
        raise ValueError(f"--out must end in .csv, .json or .parquet (or be -), got {out}")
    if suffix != ".parquet" and text.endswith(("/", os.sep)):
        raise ValueError(f"--out {out}: only a .parquet output can be a folder of parts")
    return suffix[1:]


_JSON_OURS = re.compile(r'^\[\s*(\]|\{\s*"path"\s*:)')


def check_replaceable(out: str | Path) -> None:
    """Raise a one-line ValueError naming ``out`` when it is an existing CSV or JSON file
    that ``predict`` did not write (a label file, say): nothing is overwritten then.
    Empty files and our own earlier outputs may be replaced. (Parquet outputs:
    :meth:`agegender.infer.parquet.ParquetOutput.check_ours`.)"""
    p = Path(out)
    if str(out) == "-" or not p.is_file() or p.stat().st_size == 0:
        return
    fmt = output_format(out)
    if fmt == "parquet":
        return
    with open(p, encoding="utf-8", errors="replace") as fh:
        head = fh.read(4096)
    first = head.lstrip("\ufeff")
    ours = (
        first.startswith((",".join(BASE_COLUMNS), ",".join(VIDEO_BASE_COLUMNS)))
        if fmt == "csv"
        else bool(_JSON_OURS.match(head))
    )
    if not ours:
        raise ValueError(
            f"{p}: exists and is not an output of agegender predict (its first line is not "
            "predict's header); nothing was overwritten; remove it or choose another --out"
        )


def keyed_rows(
    result: ImageResult,
    key: tuple[int | None, int | None] | None = None,
    run_id: str | None = None,
) -> list[dict[str, Any]]:
    """:func:`result_rows` with the resume key (``file_size``, ``file_mtime_ns``: ``key``,
    or the file's own when ``None``) and ``run_id`` on each row, as Parquet stores them."""
    size, mtime = input_key(result.source) if key is None else key
    rows = result_rows(result)
    for row in rows:
        row["file_size"], row["file_mtime_ns"], row[RUN_COLUMN] = size, mtime, run_id
    return rows


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
    """CSV / JSON / Parquet rows to ``out`` (a path, ``-`` for stdout, or ``None`` for no
    rows) and annotated photos to ``annotate``; counts faces and failed inputs as it goes.

    ``parquet``: a prepared :class:`ParquetOutput` (the job's, after ``--resume`` has read
    it); without one a ``.parquet`` ``out`` replaces whatever output of ours is there.
    ``columns``: other columns than the model's photo columns (a video's,
    :func:`video_columns`)."""

    def __init__(
        self,
        out: str | Path | None,
        spec: ModelSpec,
        *,
        annotate: str | Path | None = None,
        stream: IO[str] | None = None,
        parquet: ParquetOutput | None = None,
        columns: list[str] | None = None,
    ) -> None:
        self.format = None if out is None else output_format(out)
        self.columns = result_columns(spec) if columns is None else list(columns)
        self.annotator = None if annotate is None else Annotator(annotate)
        self._own = False
        self.stream: IO[str] | None = stream
        self.parquet = parquet
        if self.format == "parquet" and parquet is None:
            self.parquet = ParquetOutput(out, self.columns, {"model": spec.name}, new_run_id())  # type: ignore[arg-type]
            self.parquet.check_ours()
            self.parquet.clear()
        if out is not None and stream is None and self.format != "parquet":
            if str(out) == "-":
                self.stream = sys.stdout
            else:
                Path(out).parent.mkdir(parents=True, exist_ok=True)
                self.stream = open(out, "w", newline="", encoding="utf-8")  # noqa: SIM115
                self._own = True
        self._csv = None
        if self.format == "csv" and self.stream is not None:
            self._csv = csv.DictWriter(self.stream, self.columns, restval="", extrasaction="ignore")
            self._csv.writeheader()
        self._json: list[dict[str, Any]] = []
        self.images = self.faces = self.failed = self.unreadable = 0

    def write(self, result: ImageResult) -> None:
        """One input's result (its rows, and its annotated copy when asked)."""
        rows = keyed_rows(result) if self.parquet is not None else result_rows(result)
        self.write_rows(rows, result)

    def write_rows(self, rows: list[dict[str, Any]], result: ImageResult | None = None) -> None:
        """One input's rows (:func:`keyed_rows`), e.g. from the Ray engine's actors;
        ``result`` (when there is one) is drawn for ``annotate``."""
        error = rows[0].get("error") if rows else None
        self.images += 1
        self.faces += sum(r.get("face_index") is not None for r in rows)
        self.failed += error is not None
        self.unreadable += error is not None and error != "no face found"
        if self._csv is not None:
            for row in rows:
                self._csv.writerow({k: ("" if v is None else v) for k, v in row.items()})
        elif self.format == "json":
            self._json.extend({k: row.get(k) for k in self.columns if k in row} for row in rows)
        elif self.parquet is not None:
            self.parquet.add(rows)
        if self.annotator is not None and result is not None:
            self.annotator.write(result)

    def close(self, finish: bool = True) -> None:
        """Write what is held; ``finish=False`` (the job was interrupted) keeps a Parquet
        output's parts as they are for ``--resume`` instead of merging them."""
        if self.format == "json" and self.stream is not None:
            json.dump(self._json, self.stream, indent=1)
            self.stream.write("\n")
        if self._own and self.stream is not None:
            self.stream.close()
        self._own = False
        if self.parquet is not None:
            parquet, self.parquet = self.parquet, None
            if finish:
                parquet.finish()
            else:
                parquet.flush()

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(finish=exc_type is None)
