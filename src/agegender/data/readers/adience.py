"""Adience: the official ``fold_K_data.txt`` files plus ``aligned/`` or ``faces/`` images.

Each fold file is tab-separated with the header ``user_id original_image face_id age
gender x y dx dy tilt_ang fiducial_yaw_angle fiducial_score``. The image of a row is
``aligned/<user_id>/landmark_aligned_face.<face_id>.<original_image>`` or
``faces/<user_id>/coarse_tilt_aligned_face.<face_id>.<original_image>``.
The official fold (K) goes to the ``fold`` column. The person is ``user_id`` + ``face_id``
(``face_id`` numbers the people of one album owner's photos), so ``subject`` is
``<user_id>/<face_id>``: folds and train/val/test splits group by it and never put one
person on both sides.
Truncated rows, bad labels and rows whose image is missing become Problems with file
and line number; every other row is still read.

Ages are Adience's group spellings ``(lo, hi)``, mapped to the eight groups by their
midpoint (:func:`~agegender.data.records.parse_age`); two of its usual spellings are not
the groups' own bounds, ``(8, 12)`` (8-13) and ``(60, 100)`` (60+), and every row read
that way is counted in the result's ``notes`` (``age (8, 12) read as 8-13: rows``), which
the row counts print. A ``None`` age or an empty / ``u`` gender keeps the row for the
other label (the task without it masks it) and is counted too (``without age``,
``without gender``).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from agegender.data.readers.common import Reader, read_text_lines, require_path
from agegender.data.records import (
    AGE_GROUP_NAMES,
    AGE_GROUPS,
    DatasetError,
    Problem,
    ReadResult,
    make_table,
    parse_age,
)
from agegender.data.records import parse_gender as _parse_gender

FOLD_FILE = re.compile(r"^fold_(\d+)_data\.txt$")
HEADER = (
    "user_id",
    "original_image",
    "face_id",
    "age",
    "gender",
    "x",
    "y",
    "dx",
    "dy",
    "tilt_ang",
    "fiducial_yaw_angle",
    "fiducial_score",
)
#: ``(lo, hi)``: Adience's spelling of an age group (``(60, 100)``: its 60+).
SPELLED_RANGE = re.compile(r"^\(\s*(\d+)\s*,\s*(\d+)\s*\)$")
IMAGE_LAYOUTS = (
    ("aligned", "landmark_aligned_face"),
    ("faces", "coarse_tilt_aligned_face"),
)


def fold_files(root: Path) -> list[tuple[int, Path]]:
    found = []
    for f in root.iterdir():
        m = FOLD_FILE.match(f.name)
        if m and f.is_file():
            found.append((int(m.group(1)), f))
    return sorted(found)


def _find_image(root: Path, user: str, face_id: str, image: str) -> Path | None:
    for folder, prefix in IMAGE_LAYOUTS:
        p = root / folder / user / f"{prefix}.{face_id}.{image}"
        if p.is_file():
            return p
    return None


def _age_note(text: str, group: int | None) -> str | None:
    """``age (8, 12) read as 8-13`` when a range is not its group's own bounds, else None."""
    m = SPELLED_RANGE.match(text)
    if m is None or group is None:
        return None
    lo, hi = int(m.group(1)), int(m.group(2))
    if (lo, hi) == AGE_GROUPS[group]:
        return None
    return f"age ({lo}, {hi}) read as {AGE_GROUP_NAMES[group]}"


def read_adience(path: str | Path) -> ReadResult:
    root = require_path(path)
    if root.is_file():
        root = root.parent
    folds = fold_files(root)
    if not folds:
        raise DatasetError(f"{path}: no Adience fold files (fold_K_data.txt) found")
    rows, problems = [], []
    notes: Counter[str] = Counter()
    for fold, ffile in folds:
        lines = read_text_lines(ffile)
        if not lines or lines[0].split("\t")[:2] != list(HEADER[:2]):
            raise DatasetError(f"{ffile}:1: not an Adience fold file (expected header {HEADER[0]})")
        for lineno, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < len(HEADER):
                problems.append(
                    Problem(
                        str(ffile),
                        lineno,
                        f"truncated row: {len(fields)} of {len(HEADER)} tab-separated fields",
                    )
                )
                continue
            user, image, face_id, age_text, gender_text = (f.strip() for f in fields[:5])
            try:
                gender = _parse_gender(gender_text)
                age, group = parse_age(age_text)
            except ValueError as exc:
                problems.append(Problem(str(ffile), lineno, str(exc)))
                continue
            img = _find_image(root, user, face_id, image)
            if img is None:
                problems.append(
                    Problem(
                        str(ffile),
                        lineno,
                        f"image not found: faces/{user}/coarse_tilt_aligned_face.{face_id}.{image}"
                        " (or aligned/.../landmark_aligned_face...)",
                    )
                )
                continue
            note = _age_note(age_text, group)
            if note:
                notes[note] += 1
            if gender is None:
                notes["without gender"] += 1
            if group is None:
                notes["without age"] += 1
            rows.append(
                dict(
                    path=str(img),
                    gender=gender,
                    age=age,
                    age_group=group,
                    subject=f"{user}/{face_id}",
                    race=None,
                    source="adience",
                    fold=fold,
                    line=lineno,
                )
            )

    def rank(note: str) -> tuple[int, int]:  # age notes in group order, then gender, age
        if note.startswith("age"):
            return 0, AGE_GROUP_NAMES.index(note.rsplit(" ", 1)[1])
        return 1, note == "without age"

    order = sorted(notes, key=rank)
    return ReadResult(make_table(rows), problems, "adience", notes={k: notes[k] for k in order})


def recognise(path: Path) -> bool:
    """A ``fold_K_data.txt`` file, or a folder holding one."""
    names = [path.name] if path.is_file() else [c.name for c in path.iterdir()]
    return any(FOLD_FILE.match(n) for n in names)


READER = Reader("adience", "Adience fold files", recognise, read_adience)
