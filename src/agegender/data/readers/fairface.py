"""FairFace: its official label files ``fairface_label_{train,val,test}.csv``
(``file,age,gender[,race,service_test]``) with images at the paths ``file`` names, relative
to the label file's folder. Ages are FairFace's bins (``0-2, 3-9, 10-19, ..., 60-69,
more than 70``) and land in ``age_min``/``age_max``; no exact ages, no Adience groups.
A bad row becomes a Problem naming the file and line; the other rows are still read.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

from agegender.data.readers.common import Reader, read_text_lines, require_path
from agegender.data.records import DatasetError, Problem, ReadResult, make_table, parse_gender

LABEL_FILE = re.compile(r"^fairface_label_(train|val|test)\.csv$", re.IGNORECASE)

#: FairFace's age bins, in order, as inclusive (low, high) years.
AGE_BINS: dict[str, tuple[float, float]] = {
    "0-2": (0, 2),
    "3-9": (3, 9),
    "10-19": (10, 19),
    "20-29": (20, 29),
    "30-39": (30, 39),
    "40-49": (40, 49),
    "50-59": (50, 59),
    "60-69": (60, 69),
    "more than 70": (70, math.inf),
}
BIN_NAMES: tuple[str, ...] = tuple(AGE_BINS)

#: FairFace's seven race labels onto UTKFace's five codes (White, Black, Asian, Indian,
#: Others).
RACE_CODES = {
    "white": 0,
    "black": 1,
    "east asian": 2,
    "southeast asian": 2,
    "indian": 3,
    "middle eastern": 4,
    "latino_hispanic": 4,
    "latino hispanic": 4,
}


def label_files(root: Path) -> list[Path]:
    """FairFace label files in ``root`` (a folder), sorted."""
    return sorted(p for p in root.iterdir() if p.is_file() and LABEL_FILE.match(p.name))


def looks_like_fairface(path: Path) -> bool:
    """A FairFace label file, or a folder holding one."""
    if path.is_file():
        return bool(LABEL_FILE.match(path.name))
    return bool(label_files(path))


def _read_one(label_file: Path, problems: list[Problem]) -> list[dict]:
    root = label_file.parent
    lines = read_text_lines(label_file)
    if not lines:
        raise DatasetError(f"{label_file}: empty label file")
    header = [h.strip().lower() for h in next(csv.reader([lines[0]]))]
    for need in ("file", "age", "gender"):
        if need not in header:
            raise DatasetError(f"{label_file}:1: no {need!r} column (header: {lines[0]!r})")
    col = {name: header.index(name) for name in header}
    rows: list[dict] = []
    for lineno, fields in enumerate(csv.reader(lines[1:]), start=2):
        if not fields or not "".join(fields).strip():
            continue
        if len(fields) != len(header):
            problems.append(
                Problem(
                    str(label_file), lineno, f"expected {len(header)} fields, got {len(fields)}"
                )
            )
            continue
        rel, age, gender = (fields[col[k]].strip() for k in ("file", "age", "gender"))
        bounds = AGE_BINS.get(age.lower())
        if bounds is None:
            problems.append(Problem(str(label_file), lineno, f"unknown FairFace age bin {age!r}"))
            continue
        try:
            g = parse_gender(gender)
        except ValueError:
            g = None
        if g is None:
            problems.append(Problem(str(label_file), lineno, f"unknown gender {gender!r}"))
            continue
        image = (root / rel).resolve()
        if not image.is_file():
            problems.append(Problem(str(label_file), lineno, f"missing image {rel}"))
            continue
        race = RACE_CODES.get(fields[col["race"]].strip().lower()) if "race" in col else None
        rows.append(
            {
                "path": str(image),
                "gender": g,
                "age": math.nan,
                "age_group": None,
                "subject": "",
                "race": race,
                "source": "fairface",
                "fold": None,
                "line": lineno,
                "age_min": bounds[0],
                "age_max": bounds[1],
            }
        )
    return rows


def read_fairface(path: str | Path) -> ReadResult:
    p = require_path(path)
    files = [p] if p.is_file() else label_files(p)
    if not files:
        raise DatasetError(f"{path}: no fairface_label_*.csv found")
    problems: list[Problem] = []
    rows: list[dict] = []
    for f in files:
        rows += _read_one(f, problems)
    return ReadResult(table=make_table(rows), problems=problems)


READER = Reader("fairface", "FairFace label files", looks_like_fairface, read_fairface)
