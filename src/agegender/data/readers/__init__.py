"""Dataset readers: one module per real layout, each declaring its :class:`Reader`
(name, how to recognise the layout, how to read it), registered here in :data:`READERS`;
``read_dataset`` picks one (``format="auto"`` asks each in turn).

>>> from agegender.data.readers import read_dataset
>>> result = read_dataset("../shared/data/utkface")      # format="auto"
>>> result.table.head(), result.problems[:3], result.format
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from agegender.data.readers import aaf, adience, celeba, csv_manifest, fairface, folders, utkface
from agegender.data.readers.common import Reader, iter_images, require_path
from agegender.data.readers.utkface import parse_utkface_name
from agegender.data.records import DatasetError, ReadResult

#: Every reader by name, in the order ``auto`` asks them to recognise a path: the layouts
#: marked by their own label files (All-Age-Faces by its ``image sets/``) first, then class
#: folders, then UTKFace file names, and the generic CSV manifest last.
READERS: dict[str, Reader] = {
    r.name: r
    for r in (
        adience.READER,
        celeba.READER,
        fairface.READER,
        aaf.READER,
        folders.READER,
        utkface.READER,
        csv_manifest.READER,
    )
}
#: The accepted ``format`` values (``--format``, ``data.format``): ``auto`` and the readers.
FORMATS: tuple[str, ...] = ("auto", *READERS)


def detect_format(path: str | Path) -> str:
    """``format="auto"``: the name of the first reader in :data:`READERS` that recognises
    ``path``, or DatasetError saying what was seen."""
    p = require_path(path)
    found = next((r.name for r in READERS.values() if r.recognise(p)), None)
    if found is not None:
        return found
    if p.is_file():
        raise DatasetError(
            f"{path}: not a dataset (expected a folder, a CSV manifest or a label file)"
        )
    if next(iter_images(p), None) is None:
        raise DatasetError(f"{path}: no images found")
    layouts = [r.layout for r in READERS.values()]
    raise DatasetError(
        f"{path}: cannot recognise the dataset layout (not {', '.join(layouts[:-1])}"
        f" or {layouts[-1]}); pass --format"
    )


def read_dataset(path: str | Path, format: str = "auto") -> ReadResult:
    """Read a dataset into a FaceTable; ``format`` is one of :data:`FORMATS`.

    Raises :class:`DatasetError` (one line, naming the file) when nothing can be read.
    """
    if format not in FORMATS:
        raise DatasetError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    fmt = detect_format(path) if format == "auto" else format
    result = READERS[fmt].read(path)
    result.format = fmt
    return result


def default_crop(format: str) -> tuple[float, float, float, float] | None:
    """The face box a format's images need to match the training framing (or None):
    its reader's ``crop``."""
    reader = READERS.get(format)
    return reader.crop if reader is not None else None


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
    "Reader",
    "default_crop",
    "detect_format",
    "parse_utkface_name",
    "read_dataset",
    "read_table",
    "sample_rows",
]
