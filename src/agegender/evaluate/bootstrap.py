"""Confidence intervals that resample people, not photos.

Photos of one person are alike (Adience has dozens of one face from one album), so an
interval that resamples photos as if each were independent is far too narrow. Here the
unit resampled is the person (or any group id): :func:`grouped_accuracy_ci` draws people
with replacement, keeps all of each drawn person's photos, and reads the interval off the
accuracies of those resamples (scipy's ``stats.bootstrap``, percentile method, the
per-person correct and total counts resampled as pairs).
"""

from __future__ import annotations

import warnings
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


def grouped_ratios_ci(
    hits: np.ndarray,
    totals: np.ndarray,
    groups: Sequence[Any] | np.ndarray,
    *,
    means: Sequence[Sequence[int]] = (),
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> list[dict[str, float | int | None]]:
    """Several ratios over the same photos, each with a bootstrap interval over ``groups``
    drawn from the same resamples (one ``scipy.stats.bootstrap`` over the people).

    Ratio ``j`` is ``hits[:, j].sum() / totals[:, j].sum()`` (``(photos, k)`` arrays: an
    accuracy has 1 for a right photo in ``hits`` and 1 for each photo it counts in
    ``totals``, so a female recall counts the female photos only); each of ``means`` is
    the mean of the ratios it lists (a balanced accuracy: the mean of the per-class
    recalls). A resample draws people with replacement and keeps every photo of a drawn
    person; a resample without a photo counted by a figure is left out of that figure's
    interval. Returns one dict per ratio, then one per mean, as
    :func:`grouped_accuracy_ci`'s (``photos``/``people``: those a figure counts)."""
    hits = np.asarray(hits, dtype=float).reshape(len(hits), -1)
    totals = np.asarray(totals, dtype=float).reshape(hits.shape)
    ids = pd.factorize(np.asarray(groups))[0]
    if len(ids) != len(hits):
        raise ValueError(f"{len(hits)} photos but {len(ids)} group ids")
    n_people, k = int(ids.max()) + 1 if len(ids) else 0, hits.shape[1]
    sums = np.zeros((n_people, 2 * k))
    np.add.at(sums, ids, np.concatenate([hits, totals], axis=1))

    def figures(s: np.ndarray) -> np.ndarray:
        """``(..., 2k)`` summed hits and totals -> ``(k + len(means), ...)`` figures."""
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a mean of no class: NaN
            ratios = s[..., :k] / s[..., k:]
            extra = [np.nanmean(ratios[..., list(m)], axis=-1) for m in means]
        return np.moveaxis(
            np.concatenate([ratios, np.stack(extra, -1)], -1) if means else ratios, -1, 0
        )

    counted = [totals[:, j] > 0 for j in range(k)]
    counted += [np.any([counted[j] for j in m], axis=0) for m in means]
    value = figures(sums.sum(axis=0))
    out: list[dict[str, float | int | None]] = [
        {
            "value": float(v) if c.any() and np.isfinite(v) else None,
            "low": None,
            "high": None,
            "photos": int(c.sum()),
            "people": int(len(np.unique(ids[c]))),
            "confidence": confidence,
        }
        for v, c in zip(value, counted, strict=True)
    ]
    if n_people < 2:
        return out

    def statistic(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        flat = np.asarray(idx, dtype=np.int64).reshape(-1, n_people)
        rows = np.arange(len(flat))[:, None] * n_people
        draws = np.bincount((rows + flat).ravel(), minlength=flat.size).reshape(flat.shape)
        return figures(draws @ sums).reshape(-1, *idx.shape[:-1])

    with warnings.catch_warnings():  # figures left out of some resamples: NaN there
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.bootstrap(
            (np.arange(n_people),),
            statistic,
            vectorized=True,
            confidence_level=confidence,
            n_resamples=n_resamples,
            batch=max(1, 2_000_000 // max(n_people, 1)),
            method="percentile",
            random_state=np.random.default_rng(seed),
        )
        tail = 100 * (1 - confidence) / 2
        lows, highs = np.nanpercentile(res.bootstrap_distribution, [tail, 100 - tail], axis=-1)
    for o, lo, hi in zip(out, lows, highs, strict=True):
        if o["value"] is not None and o["people"] >= 2 and np.isfinite(lo):
            o["low"], o["high"] = float(lo), float(hi)
    return out


__all__ = ["grouped_accuracy_ci", "grouped_ratios_ci"]
