"""Folder-per-class datasets: images under ``male/`` and ``female/`` folders at any depth
(the Kaggle gender dataset's ``Training/male``, ``Validation/female`` included).

The class comes from the nearest enclosing folder whose name is a gender word
(male/female, man/woman, men/women, m/f, any case). Images outside such a folder are
reported as problems.
"""

from __future__ import annotations

from pathlib import Path

from agegender.data.readers.common import Reader, iter_images, require_path
from agegender.data.records import FEMALE, MALE, DatasetError, Problem, ReadResult, make_table

GENDER_DIRS = {
    "male": MALE,
    "males": MALE,
    "man": MALE,
    "men": MALE,
    "m": MALE,
    "female": FEMALE,
    "females": FEMALE,
    "woman": FEMALE,
    "women": FEMALE,
    "f": FEMALE,
}


def gender_dirs_under(root: Path, depth: int = 3) -> list[Path]:
    """Folders named like a gender class at most ``depth`` levels below ``root``."""
    found, level = [], [root]
    for _ in range(depth):
        nxt = []
        for d in level:
            try:
                subs = sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
            except OSError:
                continue
            found += [p for p in subs if p.name.lower() in GENDER_DIRS]
            nxt += [p for p in subs if p.name.lower() not in GENDER_DIRS]
        level = nxt
    return found


def read_folders(path: str | Path) -> ReadResult:
    root = require_path(path)
    if not root.is_dir():
        raise DatasetError(f"{path}: folder layout needs a directory")
    rows, problems = [], []
    files = list(iter_images(root))
    if not files:
        raise DatasetError(f"{path}: no images found")
    for f in files:
        gender = next(
            (
                GENDER_DIRS[p.name.lower()]
                for p in f.relative_to(root).parents
                if p.name and p.name.lower() in GENDER_DIRS
            ),
            None,
        )
        if gender is None:
            problems.append(Problem(str(f), 0, "not inside a male/ or female/ folder"))
            continue
        rows.append(
            dict(
                path=str(f),
                gender=gender,
                age=None,
                age_group=None,
                subject="",
                race=None,
                source="folders",
                fold=None,
                line=None,
            )
        )
    return ReadResult(make_table(rows), problems, "folders")


def recognise(path: Path) -> bool:
    """A folder with male/female class folders within three levels."""
    return path.is_dir() and bool(gender_dirs_under(path))


READER = Reader("folders", "male/female folders", recognise, read_folders)
