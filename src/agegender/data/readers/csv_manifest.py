"""A generic CSV manifest: ``path,gender[,age][,subject][,race][,fold]`` with a header row.

``path`` is relative to the manifest's folder (or absolute); gender as m/f/male/female/0/1
(0 = male, 1 = female); age as a number of years or a range such as ``(25, 32)`` / ``25-32``.
Comma, tab and semicolon delimiters are recognised. One line is one row: a row with a
stray (unbalanced) quote or with more or fewer fields than the header becomes a Problem
naming the file and line, and the other rows are still read.
"""

from __future__ import annotations

import csv
from pathlib import Path

from agegender.data.readers.common import Reader, read_text_lines, require_path
from agegender.data.records import (
    DatasetError,
    Problem,
    ReadResult,
    make_table,
    parse_age,
    parse_gender,
)

PATH_COLUMNS = ("path", "file", "filename", "image", "image_path")


#: Columns only a CSV written by ``agegender predict`` has (``infer.outputs.BASE_COLUMNS``):
#: such a file is our own output, never read as labels.
PREDICTION_COLUMNS = frozenset({"face_index", "p_female", "p_male", "face_source"})


def _delimiter(header: str) -> str:
    counts = {d: header.count(d) for d in (",", "\t", ";")}
    return max(counts, key=counts.get) if max(counts.values()) else ","


def _code(name: str, value: str | None) -> int | None:
    """A whole-number column (race, fold): ``2`` or ``2.0`` (as pandas writes a column
    with gaps); empty is None; anything else a ValueError naming the column."""
    if value in (None, ""):
        return None
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not number.is_integer():
        raise ValueError(f"{name} {value!r}: expected a whole number")
    return int(number)


def read_csv_manifest(path: str | Path) -> ReadResult:
    manifest = require_path(path)
    if manifest.is_dir():
        cands = sorted(manifest.glob("*.csv"))
        if len(cands) != 1:
            raise DatasetError(
                f"{path}: expected one .csv manifest in the folder, found {len(cands)}"
            )
        manifest = cands[0]
    lines = read_text_lines(manifest)
    if not lines:
        raise DatasetError(f"{manifest}: empty manifest")
    delimiter = _delimiter(lines[0])
    header = [h.strip().lower() for h in next(csv.reader(lines[:1], delimiter=delimiter))]
    path_col = next((header.index(c) for c in PATH_COLUMNS if c in header), None)
    if path_col is None:
        raise DatasetError(
            f"{manifest}:1: no path column (expected one of {', '.join(PATH_COLUMNS)})"
        )
    col = {
        name: header.index(name)
        for name in ("gender", "age", "subject", "race", "fold")
        if name in header
    }
    if set(header) >= PREDICTION_COLUMNS:
        raise DatasetError(
            f"{manifest}: written by agegender predict (columns "
            f"{', '.join(sorted(PREDICTION_COLUMNS))}): predictions, not labels; give a "
            "label manifest (path,gender[,age]) or the dataset's own labels"
        )
    if "gender" not in col and "age" not in col:
        raise DatasetError(f"{manifest}:1: needs a gender or an age column")
    base = manifest.parent
    rows, problems = [], []
    # One physical line is one row: a stray quote must not swallow the lines after it
    # (csv would join them into one field), so each line is parsed on its own.
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        if line.count('"') % 2:
            problems.append(Problem(str(manifest), lineno, "unbalanced quote"))
            continue
        fields = next(csv.reader([line], delimiter=delimiter), [])
        if not any(f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            problems.append(
                Problem(str(manifest), lineno, f"{len(fields)} fields, header has {len(header)}")
            )
            continue

        def get(name: str, fields: list[str] = fields) -> str | None:
            return fields[col[name]].strip() if name in col else None

        try:
            gender = parse_gender(get("gender"))
            age, group = parse_age(get("age"))
            race_code = _code("race", get("race"))
            fold_k = _code("fold", get("fold"))
        except ValueError as exc:
            problems.append(Problem(str(manifest), lineno, str(exc)))
            continue
        img = Path(fields[path_col].strip())
        img = img if img.is_absolute() else base / img
        if not img.is_file():
            problems.append(Problem(str(manifest), lineno, f"image not found: {img}"))
            continue
        rows.append(
            dict(
                path=str(img),
                gender=gender,
                age=age,
                age_group=group,
                subject=get("subject") or "",
                race=race_code,
                source="csv",
                fold=fold_k,
                line=lineno,
            )
        )
    return ReadResult(make_table(rows), problems, "csv", labels=str(manifest))


def recognise(path: Path) -> bool:
    """A ``.csv``/``.tsv``/``.txt`` file, or a folder holding exactly one ``.csv``: the
    catch-all, so ``auto`` asks it last."""
    if path.is_file():
        return path.suffix.lower() in (".csv", ".tsv", ".txt")
    return len([c for c in path.iterdir() if c.name.lower().endswith(".csv")]) == 1


READER = Reader("csv", "a CSV manifest", recognise, read_csv_manifest)
