"""CelebA: ``list_attr_celeba.txt`` (or ``.csv``) for the Male attribute (1 / -1),
``list_eval_partition`` (0 train, 1 val, 2 test -> ``fold``) and ``identity_CelebA.txt``
(-> ``subject``) when present, images under ``img_align_celeba/`` (possibly nested twice,
as the Kaggle copy is). CelebA has no age labels.
"""

from __future__ import annotations

from pathlib import Path

from agegender.data.readers.common import Reader, read_text_lines, require_path
from agegender.data.records import DatasetError, Problem, ReadResult, make_table

ATTR_NAMES = ("list_attr_celeba.txt", "list_attr_celeba.csv")

#: The face box of ``img_align_celeba`` (x0, y0, x1, y1 as fractions of width and height)
#: that frames a face as UTKFace's aligned crops do: measured on the mean image of each
#: set, UTKFace's eyes sit 41.5 % of the width apart at 29.5 % of the height; CelebA's
#: aligned eyes sit at (0.38, 0.50) and (0.62, 0.50). Without it CelebA's loose crops
#: (hair, shoulders, background) would be squeezed into a square.
ALIGNED_FACE_CROP = (0.213, 0.362, 0.787, 0.830)


def _find(root: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        for cand in (root / name, root / "Anno" / name, root / "Eval" / name):
            if cand.is_file():
                return cand
    return None


def _image_dir(root: Path) -> Path:
    for cand in (
        root / "img_align_celeba" / "img_align_celeba",
        root / "img_align_celeba",
        root / "Img" / "img_align_celeba",
    ):
        if cand.is_dir():
            return cand
    return root


def _split(line: str) -> list[str]:
    return [f for f in line.replace(",", " ").split() if f]


def _read_pairs(path: Path, problems: list[Problem]) -> dict[str, str]:
    out: dict[str, str] = {}
    for lineno, line in enumerate(read_text_lines(path), start=1):
        fields = _split(line)
        if not fields or (lineno == 1 and not fields[0].lower().endswith(".jpg")):
            continue
        if len(fields) != 2:
            problems.append(Problem(str(path), lineno, f"expected 2 fields, got {len(fields)}"))
            continue
        out[fields[0]] = fields[1]
    return out


def read_celeba(path: str | Path) -> ReadResult:
    root = require_path(path)
    if root.is_file():
        root = root.parent
    attr = _find(root, ATTR_NAMES)
    if attr is None:
        raise DatasetError(f"{path}: no list_attr_celeba.txt found")
    problems: list[Problem] = []
    lines = read_text_lines(attr)
    header_at = next((i for i, ln in enumerate(lines[:3]) if "Male" in _split(ln)), None)
    if header_at is None:
        raise DatasetError(f"{attr}:2: no 'Male' attribute in the header")
    names = _split(lines[header_at])
    if names and names[0].lower() in ("image_id", "filename", "file"):
        names = names[1:]
    male_col = names.index("Male")
    part_file = _find(root, ("list_eval_partition.txt", "list_eval_partition.csv"))
    id_file = _find(root, ("identity_CelebA.txt",))
    partition = _read_pairs(part_file, problems) if part_file else {}
    identity = _read_pairs(id_file, problems) if id_file else {}
    images = _image_dir(root)
    rows = []
    for lineno, line in enumerate(lines[header_at + 1 :], start=header_at + 2):
        fields = _split(line)
        if not fields:
            continue
        if len(fields) != len(names) + 1:
            problems.append(
                Problem(str(attr), lineno, f"expected {len(names) + 1} fields, got {len(fields)}")
            )
            continue
        name, value = fields[0], fields[1 + male_col]
        if value not in ("1", "-1"):
            problems.append(Problem(str(attr), lineno, f"Male attribute {value!r} is not 1 or -1"))
            continue
        img = images / name
        if not img.is_file():
            problems.append(Problem(str(attr), lineno, f"image not found: {img}"))
            continue
        part = partition.get(name)
        rows.append(
            dict(
                path=str(img),
                gender=0 if value == "1" else 1,
                age=None,
                age_group=None,
                subject=identity.get(name, ""),
                race=None,
                source="celeba",
                fold=int(part) if part is not None and part.isdigit() else None,
                line=lineno,
            )
        )
    return ReadResult(make_table(rows), problems, "celeba")


def recognise(path: Path) -> bool:
    """``list_attr_celeba.txt``/``.csv``, or a folder holding one (or ``Anno/`` holding it)."""
    if path.is_file():
        return path.name in ATTR_NAMES
    return (
        any(c.name in ATTR_NAMES for c in path.iterdir())
        or (path / "Anno" / "list_attr_celeba.txt").is_file()
    )


READER = Reader("celeba", "CelebA lists", recognise, read_celeba, crop=ALIGNED_FACE_CROP)
