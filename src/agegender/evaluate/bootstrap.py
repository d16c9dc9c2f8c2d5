"""Confidence intervals that resample people, not photos.

Photos of one person are alike (Adience has dozens of one face from one album), so an
interval that resamples photos as if each were independent is far too narrow. Here the
unit resampled is the person (or any group id): :func:`grouped_accuracy_ci` draws people
with replacement, keeps all of each drawn person's photos, and reads the interval off the
accuracies of those resamples (scipy's ``stats.bootstrap``, percentile method, the
per-person correct and total counts resampled as pairs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats


def grouped_accuracy_ci(
    correct: Sequence[bool] | np.ndarray,
    groups: Sequence[Any] | np.ndarray,
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, float | int | None]:
    """Accuracy of ``correct`` (one bool per photo) with a bootstrap interval over
    ``groups`` (one person id per photo): ``{"value", "low", "high", "photos", "people",
    "confidence"}``. ``low``/``high`` are ``None`` with fewer than 2 people (no spread to
    resample); ``value`` is ``None`` with no photo."""
    ok = np.asarray(correct, dtype=float)
    ids = np.asarray(groups)
    if len(ok) != len(ids):
        raise ValueError(f"{len(ok)} photos but {len(ids)} group ids")
    out: dict[str, float | int | None] = {
        "value": float(ok.mean()) if len(ok) else None,
        "low": None,
        "high": None,
        "photos": int(len(ok)),
        "people": int(pd.Series(ids).nunique()),
        "confidence": confidence,
    }
    if out["people"] < 2:
        return out
    per = pd.DataFrame({"g": ids, "ok": ok}).groupby("g", sort=False)["ok"].agg(["sum", "count"])
    hits, totals = per["sum"].to_numpy(), per["count"].to_numpy(dtype=float)

    def accuracy(h: np.ndarray, t: np.ndarray, axis: int = -1) -> np.ndarray:
        return h.sum(axis=axis) / t.sum(axis=axis)

    res = stats.bootstrap(
        (hits, totals),
        accuracy,
        paired=True,
        vectorized=True,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    out["low"] = float(res.confidence_interval.low)
    out["high"] = float(res.confidence_interval.high)
    return out


def grouped_balanced_accuracy_ci(
    correct: Sequence[bool] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    groups: Sequence[Any] | np.ndarray,
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, float | int | None]:
    """Balanced accuracy (the mean over the classes of ``labels`` of each class's share of
    ``correct``) with a bootstrap interval over ``groups``, as :func:`grouped_accuracy_ci`:
    people drawn with replacement, every photo of a drawn person kept (a resample that
    draws no photo of a class scores the classes it has)."""
    ok = np.asarray(correct, dtype=float)
    y, ids = np.asarray(labels), np.asarray(groups)
    if not len(ok) == len(y) == len(ids):
        raise ValueError(f"{len(ok)} photos, {len(y)} labels, {len(ids)} group ids")
    classes = np.unique(y)
    out: dict[str, float | int | None] = {
        "value": float(np.mean([ok[y == c].mean() for c in classes])) if len(ok) else None,
        "low": None,
        "high": None,
        "photos": int(len(ok)),
        "people": int(pd.Series(ids).nunique()),
        "confidence": confidence,
    }
    if out["people"] < 2:
        return out
    frame = pd.DataFrame({"g": ids})
    for c in classes:
        frame[f"h{c}"], frame[f"n{c}"] = ok * (y == c), (y == c).astype(float)
    per = frame.groupby("g", sort=False).sum()
    columns = tuple(per[col].to_numpy() for col in per.columns)

    def balanced(*sums: np.ndarray, axis: int = -1) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            recalls = [
                sums[k].sum(axis=axis) / sums[k + 1].sum(axis=axis) for k in range(0, len(sums), 2)
            ]
        return np.nanmean(np.stack(recalls), axis=0)

    res = stats.bootstrap(
        columns,
        balanced,
        paired=True,
        vectorized=True,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    out["low"] = float(res.confidence_interval.low)
    out["high"] = float(res.confidence_interval.high)
    return out


__all__ = ["grouped_accuracy_ci", "grouped_balanced_accuracy_ci"]
