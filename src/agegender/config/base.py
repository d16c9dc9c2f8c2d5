"""What every config section shares: :class:`_Section` (unknown keys are errors, defaults
are validated) and the field checks the sections reuse: paths expanded against the config
file's folder (:func:`_resolve`; :func:`_resolve_weights` also takes a bundled model's
name), a name from a list with the closest suggested (:func:`_one_of`), numbers and pairs
within a range (:func:`_within`, :func:`_pair_within`).
"""

from __future__ import annotations

import difflib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationInfo

from agegender.config.paths import expand_path, expand_weights_path


def _resolve(v: str | None, info: ValidationInfo) -> str | None:
    if v is None:
        return None
    base = (info.context or {}).get("base_dir") if info.context else None
    return expand_path(v, Path(base) if base else None)


def _resolve_weights(v: str | None, info: ValidationInfo) -> str | None:
    """:func:`_resolve` for a model's weights: a bundled model's name is its ``.pt``."""
    if v is None:
        return None
    base = (info.context or {}).get("base_dir") if info.context else None
    return expand_weights_path(v, Path(base) if base else None)


def _one_of(kind: str, value: str, names: list[str]) -> str:
    """``value`` if it is one of ``names``, else a ValueError with the closest name."""
    if value not in names:
        close = difflib.get_close_matches(value, names, n=1)
        hint = f"did you mean {close[0]}?" if close else f"choose one of {', '.join(names)}"
        raise ValueError(f"unknown {kind} {value!r}; {hint}")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


def _within(lo: float, hi: float):
    def check(v: float | None) -> float | None:
        if v is not None and not lo <= v <= hi:
            raise ValueError(f"must be within [{lo:g}, {hi:g}]")
        return v

    return check


def _pair_within(lo: float, hi: float, *, ordered: bool = True):
    def check(v: tuple[float, float]) -> tuple[float, float]:
        a, b = v
        if not (lo <= a <= hi and lo <= b <= hi):
            raise ValueError(f"both values must be within [{lo:g}, {hi:g}]")
        if ordered and a > b:
            raise ValueError("first value must be <= second")
        return v

    return check
