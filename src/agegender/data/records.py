"""The face-record table and the label conventions shared by every stage.

A *FaceTable* is a :class:`pandas.DataFrame` with one row per face and these columns
(see :data:`COLUMNS`):

- ``path``      absolute image path (str)
- ``gender``    0 = male, 1 = female (UTKFace coding), ``<NA>`` when unknown (nullable Int8)
- ``age``       age in years when known exactly (float, NaN when unknown)
- ``age_group`` Adience group index 0..7 (nullable Int8), see :data:`AGE_GROUPS`
- ``subject``   subject / identity id used to keep a person in one fold (str, "" unknown)
- ``race``      UTKFace race code 0..4 when known (nullable Int8), see :data:`RACES`
- ``source``    reader that produced the row: utkface, adience, celeba, fairface, aaf,
  folders, csv (str)
- ``fold``      the dataset's own fold or partition when it has one (nullable Int8)
- ``line``      1-based line of the label file the row came from, when there is one
- ``age_min``, ``age_max``  the true age bin in years when the dataset labels bins
  (FairFace: ``0-2 ... 60-69, more than 70``; the last is ``(70, inf)``), else NaN

Readers never drop a row silently: what they cannot read becomes a :class:`Problem`, and a
face whose label sources disagree is a :class:`Problem` in ``ReadResult.disagreements``.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

COLUMNS: tuple[str, ...] = (
    "path",
    "gender",
    "age",
    "age_group",
    "subject",
    "race",
    "source",
    "fold",
    "line",
    "age_min",
    "age_max",
)

GENDERS: tuple[str, str] = ("male", "female")  # index = code
MALE, FEMALE = 0, 1

RACES: tuple[str, ...] = ("white", "black", "asian", "indian", "others")

#: The eight Adience age groups as (low, high) inclusive bounds in years; 60+ is (60, inf).
AGE_GROUPS: tuple[tuple[float, float], ...] = (
    (0, 2),
    (4, 6),
    (8, 13),
    (15, 20),
    (25, 32),
    (38, 43),
    (48, 53),
    (60, math.inf),
)
AGE_GROUP_NAMES: tuple[str, ...] = ("0-2", "4-6", "8-13", "15-20", "25-32", "38-43", "48-53", "60+")

#: Cut points between groups: the midpoint of each gap (3, 7, 14, 22.5, 35, 45.5, 56.5).
#: An exact age maps to the group whose interval is nearest; an age exactly halfway
#: between two groups (3, 7, 14, 35) goes to the older group.
AGE_GROUP_CUTS: tuple[float, ...] = tuple(
    (AGE_GROUPS[i][1] + AGE_GROUPS[i + 1][0]) / 2 for i in range(len(AGE_GROUPS) - 1)
)


def age_to_group(age: float | None) -> int | None:
    """Map an age in years to its Adience group index (nearest interval, ties to the older)."""
    if age is None or (isinstance(age, float) and math.isnan(age)):
        return None
    if age < 0:
        raise ValueError(f"negative age {age}")
    return int(np.searchsorted(AGE_GROUP_CUTS, age, side="right"))


def ages_to_groups(ages: np.ndarray) -> np.ndarray:
    """Vectorised :func:`age_to_group` for a float array (NaN maps to -1)."""
    ages = np.asarray(ages, dtype=float)
    out = np.searchsorted(np.asarray(AGE_GROUP_CUTS), ages, side="right").astype(np.int64)
    out[np.isnan(ages)] = -1
    return out


_GENDER_WORDS = {
    "m": MALE,
    "male": MALE,
    "man": MALE,
    "0": MALE,
    "f": FEMALE,
    "female": FEMALE,
    "woman": FEMALE,
    "1": FEMALE,
}
_UNKNOWN = {"", "u", "unknown", "none", "nan", "na", "n/a", "?", "-1"}


def parse_gender(value: object) -> int | None:
    """Parse a gender label (m/f/male/female/0/1, any case). Unknown -> None; junk -> ValueError."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip().lower()
    if text in _UNKNOWN:
        return None
    if text.endswith(".0"):
        text = text[:-2]
    if text in _GENDER_WORDS:
        return _GENDER_WORDS[text]
    raise ValueError(f"unrecognised gender {value!r}")


_RANGE = re.compile(r"^\(?\s*(\d+(?:\.\d+)?)\s*[,\-–]\s*(\d+(?:\.\d+)?)\s*\)?$")
_PLUS = re.compile(r"^(\d+(?:\.\d+)?)\s*\+$")


def parse_age(value: object) -> tuple[float | None, int | None]:
    """Parse an age label into (exact age in years or None, Adience group or None).

    Accepts a number (``35``), a range (``(25, 32)``, ``25-32``) or an open range (``60+``).
    A range gives only a group (that of its midpoint); the exact age stays unknown.
    ``None``/empty -> (None, None); anything else raises ValueError.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None, None
    text = str(value).strip()
    if text.lower() in _UNKNOWN:
        return None, None
    try:
        age = float(text)
    except ValueError:
        pass
    else:
        if not 0 <= age <= 130:
            raise ValueError(f"age {value!r} out of range 0..130")
        return age, age_to_group(age)
    m = _RANGE.match(text)
    if m:
        lo, hi = float(m.group(1)), float(m.group(2))
        if lo > hi or hi > 130:
            raise ValueError(f"bad age range {value!r}")
        return None, age_to_group((lo + hi) / 2)
    m = _PLUS.match(text)
    if m:
        return None, age_to_group(max(float(m.group(1)), AGE_GROUPS[-1][0]))
    raise ValueError(f"unrecognised age {value!r}")


@dataclass(frozen=True)
class Problem:
    """Something a reader or the audit could not use: the file, the line (0 if none), why."""

    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.reason}"

    def to_dict(self) -> dict:
        return asdict(self)


class DatasetError(ValueError):
    """A dataset that cannot be read at all (missing path, no images, unusable label file).

    The message is one line and names the file (and line when there is one).
    """


@dataclass
class ReadResult:
    """What a reader returns: the table of faces it could read, every problem it met, and
    the faces it left out because the dataset's own label sources disagree on them
    (``disagreements``, one Problem per face saying which sources; All-Age-Faces)."""

    table: pd.DataFrame
    problems: list[Problem] = field(default_factory=list)
    format: str = ""
    labels: str = ""  # the file the labels came from, where it is not the path itself
    disagreements: list[Problem] = field(default_factory=list)
    #: rows read with a remark, remark -> rows (Adience: its spellings of two age groups,
    #: rows without one of the labels); they are in ``table``, the row counts print them
    notes: dict[str, int] = field(default_factory=dict)


def make_table(rows: list[dict] | None = None) -> pd.DataFrame:
    """Build a FaceTable with the canonical columns and dtypes from a list of dicts."""
    df = pd.DataFrame(rows or [], columns=list(COLUMNS))
    df["path"] = df["path"].astype(str)
    df["gender"] = pd.array(df["gender"], dtype="Int8")
    df["age"] = pd.to_numeric(df["age"], errors="coerce").astype(float)
    df["age_group"] = pd.array(df["age_group"], dtype="Int8")
    df["subject"] = df["subject"].astype(object).where(df["subject"].notna(), "").astype(str)
    df["race"] = pd.array(df["race"], dtype="Int8")
    df["source"] = df["source"].astype(str)
    df["fold"] = pd.array(df["fold"], dtype="Int8")
    df["line"] = pd.array(df["line"], dtype="Int32")
    df["age_min"] = pd.to_numeric(df["age_min"], errors="coerce").astype(float)
    df["age_max"] = pd.to_numeric(df["age_max"], errors="coerce").astype(float)
    return df.reset_index(drop=True)
