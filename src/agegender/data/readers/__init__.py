"""Dataset readers: one per real layout, and ``read_dataset`` that picks one.

>>> from agegender.data.readers import read_dataset
>>> result = read_dataset("../shared/data/utkface")      # format="auto"
>>> result.table.head(), result.problems[:3], result.format
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from agegender.data.readers.adience import read_adience
from agegender.data.readers.celeba import read_celeba
from agegender.data.readers.csv_manifest import read_csv_manifest
from agegender.data.readers.detect import detect_format
from agegender.data.readers.folders import read_folders
from agegender.data.readers.utkface import parse_utkface_name, read_utkface
from agegender.data.records import DatasetError, ReadResult

READERS: dict[str, Callable[[str | Path], ReadResult]] = {
    "utkface": read_utkface,
    "adience": read_adience,
    "celeba": read_celeba,
    "folders": read_folders,
    "csv": read_csv_manifest,
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


__all__ = [
    "FORMATS",
    "READERS",
    "DatasetError",
    "ReadResult",
    "detect_format",
    "parse_utkface_name",
    "read_dataset",
]
