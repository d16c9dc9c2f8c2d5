"""All-Age-Faces (AAF): the publisher's layout, as unpacked from its archive.

```
all-age-faces/
  aglined faces/     13,322 upright faces with hair and shoulders (the publisher's spelling;
                     "aligned faces" is accepted too), about 309x395 JPEG
  original images/   the same faces as cut from their photos
  key points/        49 landmarks per face (in original-image pixels)
  image sets/        train.txt, val.txt, train_.txt, val_.txt, val_shuffle.txt:
                     lines ``00000A02.jpg 0`` (0 = female, 1 = male)
```

A file name ``NNNNNAxx.jpg`` holds the face's id ``NNNNN`` and its exact age ``xx``.
Gender has two sources, both the publisher's: the id rule (ids 00000-07380 are women,
the rest men) and every list in ``image sets/``. The reader checks them against each
other: a face a list labels unlike the id rule is left out, one
:class:`~agegender.data.records.Problem` per face in ``ReadResult.disagreements`` naming
the list and line, and counted (``label_disagreement`` in the row counts,
``label_source_disagreements`` in the audit); never kept or dropped silently. A list line
that cannot be read or names a missing image, and an image whose name does not follow the
rule, are bad rows (``problems``).

The reader reads the aligned faces by default; ``path`` may name ``original images/`` (or
the aligned folder) to read those, with the lists beside them. AAF has no subject ids and
no race labels (its faces are mostly Asian): duplicates are grouped by the audit, as for
UTKFace, and the publisher's train/val lists are not used as folds (they split by
alternate ids, not by person). The faces keep hair and shoulders, and where a face sits
varies from photo to photo: train on them through the face path (``align: true``).

Licence: research use; cite the dataset's authors (Cheng et al., "Exploiting effective
facial patches for robust gender recognition", Tsinghua Science and Technology, 2019;
https://github.com/JingchunCheng/All-Age-Faces-Dataset).
"""

from __future__ import annotations

import re
from pathlib import Path

from agegender.data.imageio import is_image_name
from agegender.data.readers.common import Reader, exact_age_row, read_text_lines, require_path
from agegender.data.records import (
    FEMALE,
    GENDERS,
    MALE,
    DatasetError,
    Problem,
    ReadResult,
    make_table,
)

LISTS_DIR = "image sets"
#: Image folders in the order the reader prefers them (the first that exists is read).
IMAGE_DIRS = ("aglined faces", "aligned faces", "original images")
NAME = re.compile(r"^(\d{5})A(\d{2})\.jpg$", re.IGNORECASE)
#: The publisher's id rule: ids up to this one are women, the rest men.
LAST_FEMALE_ID = 7380
#: The lists' gender codes onto ours (0 male / 1 female).
LIST_CODES = {"0": FEMALE, "1": MALE}


def parse_aaf_name(name: str) -> dict:
    """``{id, age, gender}`` of an AAF file name (gender by the id rule); ValueError if the
    name does not follow ``NNNNNAxx.jpg``."""
    m = NAME.match(name)
    if m is None:
        raise ValueError(f"cannot parse All-Age-Faces name {name!r} (expected NNNNNAxx.jpg)")
    face_id, age = int(m.group(1)), int(m.group(2))
    return {"id": face_id, "age": float(age), "gender": id_rule_gender(face_id)}


def id_rule_gender(face_id: int) -> int:
    """The publisher's id rule: 0..7380 female, above male (our codes)."""
    return FEMALE if face_id <= LAST_FEMALE_ID else MALE


def _layout(path: Path) -> tuple[Path, Path] | None:
    """``(lists folder, image folder)`` when ``path`` is an AAF root or one of its image
    folders, else None."""
    if not path.is_dir():
        return None
    if (path / LISTS_DIR).is_dir():
        images = next((path / d for d in IMAGE_DIRS if (path / d).is_dir()), None)
        return None if images is None else (path / LISTS_DIR, images)
    if path.name.lower() in IMAGE_DIRS and (path.parent / LISTS_DIR).is_dir():
        return path.parent / LISTS_DIR, path
    return None


def recognise(path: Path) -> bool:
    """A folder holding ``image sets/`` and ``aglined faces/`` (or ``aligned faces/``,
    ``original images/``), or one of those image folders beside ``image sets/``."""
    return _layout(path) is not None


def _read_lists(
    lists: Path, images: set[str], problems: list[Problem]
) -> dict[str, list[tuple[int, str]]]:
    """Every list's labels per image name: ``{name: [(gender, "image sets/x.txt:N")]}``."""
    labels: dict[str, list[tuple[int, str]]] = {}
    for f in sorted(p for p in lists.iterdir() if p.is_file() and p.suffix.lower() == ".txt"):
        for lineno, line in enumerate(read_text_lines(f), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2:
                problems.append(Problem(str(f), lineno, f"expected 2 fields, got {len(fields)}"))
                continue
            name, code = fields
            if code not in LIST_CODES:
                problems.append(Problem(str(f), lineno, f"gender {code!r} is not 0 or 1"))
                continue
            if name not in images:
                problems.append(Problem(str(f), lineno, f"image not found: {name}"))
                continue
            where = f"{lists.name}/{f.name}:{lineno}"
            labels.setdefault(name, []).append((LIST_CODES[code], where))
    return labels


def read_aaf(path: str | Path) -> ReadResult:
    root = require_path(path)
    found = _layout(root)
    if found is None:
        raise DatasetError(
            f"{path}: not the All-Age-Faces layout (expected '{LISTS_DIR}/' beside "
            f"'{IMAGE_DIRS[0]}/' or '{IMAGE_DIRS[2]}/')"
        )
    lists, folder = found
    files = sorted(p for p in folder.iterdir() if p.is_file() and is_image_name(p.name))
    if not files:
        raise DatasetError(f"{folder}: no images found")
    problems: list[Problem] = []
    listed = _read_lists(lists, {f.name for f in files}, problems)
    rows, disagreements = [], []
    for f in files:
        try:
            lab = parse_aaf_name(f.name)
        except ValueError as exc:
            problems.append(Problem(str(f), 0, str(exc)))
            continue
        other = [(g, where) for g, where in listed.get(f.name, []) if g != lab["gender"]]
        if other:
            says = ", ".join(f"{where} says {GENDERS[g]}" for g, where in other)
            reason = f"label sources disagree: id rule says {GENDERS[lab['gender']]}, {says}"
            disagreements.append(Problem(str(f), 0, reason))
            continue
        rows.append(exact_age_row(f, lab["gender"], lab["age"], None, "aaf"))
    return ReadResult(make_table(rows), problems, "aaf", disagreements=disagreements)


READER = Reader("aaf", "All-Age-Faces folders", recognise, read_aaf)
