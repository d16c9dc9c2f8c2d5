"""What every dataset reader is (:class:`Reader`) and helpers the readers share."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from agegender.data.imageio import is_image_name
from agegender.data.records import DatasetError, ReadResult, age_to_group


@dataclass(frozen=True)
class Reader:
    """One dataset layout, as its reader module declares it (``READER = Reader(...)``).

    ``name`` is the ``--format`` / ``data.format`` value; ``recognise(path)`` says whether
    an existing, resolved file or folder looks like this layout (``auto`` asks each
    registered reader in turn, see :data:`agegender.data.readers.READERS`); ``read(path)``
    reads it; ``layout`` says in a few words what ``recognise`` looks for (for the "cannot
    recognise" error); ``crop`` is the face box its images need to match the training
    framing (x0, y0, x1, y1 as fractions), or None.
    """

    name: str
    layout: str
    recognise: Callable[[Path], bool]
    read: Callable[[str | Path], ReadResult]
    crop: tuple[float, float, float, float] | None = None


#: Folders that never hold dataset images (caches, VCS, macOS junk).
SKIP_DIRS = frozenset({".git", "__pycache__", "__MACOSX", ".ipynb_checkpoints", ".cache"})


def require_path(path: str | Path) -> Path:
    """Return ``path`` as an absolute Path, or raise DatasetError when it does not exist."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DatasetError(f"{path}: no such file or directory")
    return p.resolve()


def iter_images(root: Path) -> Iterator[Path]:
    """Every file under ``root`` (recursive, sorted, hidden files skipped) named like an image."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and is_image_name(name):
                yield Path(dirpath) / name


def read_text_lines(path: Path) -> list[str]:
    """Read a label file as text lines (UTF-8, falling back to Latin-1), one-line errors."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read label file: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return text.splitlines()


def exact_age_row(path: Path, gender: int, age: int, race: int | None, source: str) -> dict:
    """A FaceTable row of a face labelled in its file name with an exact age (UTKFace,
    All-Age-Faces): no subject, fold or label-file line."""
    return dict(
        path=str(path),
        gender=gender,
        age=age,
        age_group=age_to_group(age),
        subject="",
        race=race,
        source=source,
        fold=None,
        line=None,
    )
