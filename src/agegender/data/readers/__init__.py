"""Dataset readers: one per real layout, and ``read_dataset`` that picks one.

>>> from agegender.data.readers import read_dataset
>>> result = read_dataset("../shared/data/utkface")      # format="auto"
>>> result.table.head(), result.problems[:3], result.format
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from agegender.data.readers.adience import read_adience
from agegender.data.readers.celeba import read_celeba
from agegender.data.readers.csv_manifest import read_csv_manifest
from agegender.data.readers.detect import detect_format
from agegender.data.readers.fairface import read_fairface
from agegender.data.readers.folders import read_folders
from agegender.data.readers.utkface import parse_utkface_name, read_utkface
from agegender.data.records import DatasetError, ReadResult

READERS: dict[str, Callable[[str | Path], ReadResult]] = {
    "utkface": read_utkface,
    "adience": read_adience,
    "celeba": read_celeba,
    "folders": read_folders,
    "csv": read_csv_manifest,
    "fairface": read_fairface,
}
FORMATS: tuple[str, ...] = ("auto", *READERS)


def read_dataset(path: str | Path, format: str = "auto") -> ReadResult:
    """Read a dataset into a FaceTable; ``format`` is one of :data:`FORMATS`.

    Raises :class:`DatasetError` (one line, naming the file) when nothing can be read.
    """
    if format not in FORMATS:
        raise DatasetError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    fmt = detect_format(path) if format == "auto" else format
    result = READERS[fmt](path)
    result.format = fmt
    return result


def default_crop(format: str) -> tuple[float, float, float, float] | None:
    """The face box a format's images need to match the training framing (or None)."""
    from agegender.data.readers.celeba import ALIGNED_FACE_CROP

    return {"celeba": ALIGNED_FACE_CROP}.get(format)


def read_table(path: str | Path, format: str = "auto") -> tuple[ReadResult, pd.DataFrame, dict]:
    """:func:`read_dataset`, its table with a fresh index, and a summary for run records:
    ``{"path", "format", "read", "label_problems"}``."""
    result = read_dataset(path, format)
    table = result.table.reset_index(drop=True)
    info: dict[str, Any] = {
        "path": str(path),
        "format": result.format,
        "read": len(table),
        "label_problems": len(result.problems),
    }
    return result, table, info


def sample_rows(table: pd.DataFrame, limit: int | None, seed: int) -> pd.DataFrame:
    """A seeded random sample of ``limit`` rows kept in file order (all rows when ``limit``
    is None or not smaller), re-indexed 0..n-1."""
    if limit is not None and limit < len(table):
        table = table.sample(n=limit, random_state=seed).sort_index()
    return table.reset_index(drop=True)


__all__ = [
    "FORMATS",
    "READERS",
    "DatasetError",
    "ReadResult",
    "default_crop",
    "detect_format",
    "parse_utkface_name",
    "read_dataset",
    "read_table",
    "sample_rows",
]
