"""``--format auto``: recognise a dataset's layout from what is on disk."""

from __future__ import annotations

import itertools
from pathlib import Path

from agegender.data.readers.adience import FOLD_FILE
from agegender.data.readers.celeba import ATTR_NAMES
from agegender.data.readers.common import iter_images, require_path
from agegender.data.readers.fairface import looks_like_fairface
from agegender.data.readers.folders import gender_dirs_under
from agegender.data.readers.utkface import looks_like_utkface
from agegender.data.records import DatasetError


def detect_format(path: str | Path) -> str:
    """Return the reader name for ``path`` or raise DatasetError saying what was seen."""
    p = require_path(path)
    if p.is_file():
        if FOLD_FILE.match(p.name):
            return "adience"
        if p.name in ATTR_NAMES:
            return "celeba"
        if looks_like_fairface(p):
            return "fairface"
        if p.suffix.lower() in (".csv", ".tsv", ".txt"):
            return "csv"
        if looks_like_utkface(p.name):
            return "utkface"
        raise DatasetError(
            f"{path}: not a dataset (expected a folder, a CSV manifest or a label file)"
        )
    names = {c.name for c in p.iterdir()}
    if any(FOLD_FILE.match(n) for n in names):
        return "adience"
    if names & set(ATTR_NAMES) or (p / "Anno" / "list_attr_celeba.txt").is_file():
        return "celeba"
    if looks_like_fairface(p):
        return "fairface"
    if gender_dirs_under(p):
        return "folders"
    sample = list(itertools.islice(iter_images(p), 200))
    if sample and sum(looks_like_utkface(f.name) for f in sample) >= 0.5 * len(sample):
        return "utkface"
    if len([n for n in names if n.lower().endswith(".csv")]) == 1:
        return "csv"
    if not sample:
        raise DatasetError(f"{path}: no images found")
    raise DatasetError(
        f"{path}: cannot recognise the dataset layout (not UTKFace names, Adience fold files,"
        " CelebA lists, male/female folders or a CSV manifest); pass --format"
    )
