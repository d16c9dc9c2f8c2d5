"""UTKFace: labels in the file name, ``[age]_[gender]_[race]_[date&time].jpg.chip.jpg``.

Real quirks handled: a missing race field (``age_gender_date``), stray spaces
(``..._20170116220224657 .jpg.chip.jpg``), a missing dot (``...357jpg.chip.jpg``).
A name that still cannot be parsed becomes a Problem; it is never dropped silently.
UTKFace has no subject ids: ``subject`` is left empty and the audit's duplicate groups
keep copies of one photo together.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

from agegender.data.readers.common import Reader, exact_age_row, iter_images, require_path
from agegender.data.records import (
    DatasetError,
    Problem,
    ReadResult,
    make_table,
)

_SUFFIX = re.compile(r"\.?jpg\.chip\.jpg$|\.(jpe?g|png)$", re.IGNORECASE)


def parse_utkface_name(name: str) -> dict:
    """Parse one UTKFace file name into ``{age, gender, race}``; ValueError if it cannot."""
    stem = _SUFFIX.sub("", name.strip())
    parts = [p.strip() for p in stem.split("_")]
    if len(parts) not in (3, 4) or not all(p.isdigit() for p in parts):
        raise ValueError(f"cannot parse UTKFace label from file name {name!r}")
    age, gender = int(parts[0]), int(parts[1])
    race: int | None = None
    if len(parts) == 4 or len(parts[2]) == 1:
        race = int(parts[2])
    if gender not in (0, 1):
        raise ValueError(f"gender field {parts[1]!r} is not 0 or 1 in {name!r}")
    if race is not None and not 0 <= race <= 4:
        raise ValueError(f"race field {race} is not 0..4 in {name!r}")
    if age > 130:
        raise ValueError(f"age field {age} out of range in {name!r}")
    return {"age": float(age), "gender": gender, "race": race}


def looks_like_utkface(name: str) -> bool:
    try:
        parse_utkface_name(name)
    except ValueError:
        return False
    return True


def read_utkface(path: str | Path) -> ReadResult:
    root = require_path(path)
    files = [root] if root.is_file() else list(iter_images(root))
    if not files:
        raise DatasetError(f"{path}: no images found")
    rows, problems = [], []
    for f in files:
        try:
            lab = parse_utkface_name(f.name)
        except ValueError as exc:
            problems.append(Problem(str(f), 0, str(exc)))
            continue
        rows.append(exact_age_row(f, lab["gender"], lab["age"], lab["race"], "utkface"))
    return ReadResult(make_table(rows), problems, "utkface")


def recognise(path: Path) -> bool:
    """An image named like UTKFace, or a folder where at least half of the first 200
    images are."""
    if path.is_file():
        return looks_like_utkface(path.name)
    sample = list(itertools.islice(iter_images(path), 200))
    return bool(sample) and sum(looks_like_utkface(f.name) for f in sample) >= 0.5 * len(sample)


READER = Reader("utkface", "UTKFace names", recognise, read_utkface)
