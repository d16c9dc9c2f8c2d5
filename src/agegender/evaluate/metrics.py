"""Evaluation metrics from true labels and predicted probabilities, and the fairness table.

Every function takes plain arrays (labels and probabilities), drops the samples whose
label is unknown (gender ``-1``/NaN, age group ``-1``/NaN, age NaN) and reports how many
it used as ``n``; with no usable sample every metric is NaN (never an exception).

- gender (:func:`gender_metrics`): accuracy, balanced accuracy, precision / recall / F1 per
  class, ROC-AUC of P(female), log loss, expected calibration error (top-label, 15 equal
  bins; :func:`reliability_bins` gives the diagram data);
- age groups (:func:`age_group_metrics`): exact and one-off accuracy over the 8 Adience
  groups (one-off: the predicted group is the true one or adjacent, as Levi & Hassner);
- exact ages (:func:`age_metrics`): MAE in years and CS@5, the fraction with
  ``|error| <= 5`` years.

:func:`prediction_metrics` computes all that apply from a per-image predictions frame
(:mod:`agegender.evaluate.predict_batch`), and :func:`fairness_table` repeats them for
every gender, age group and race (UTKFace) with the count ``n`` in each cell.

torchmetrics computes accuracy, calibration error and MAE; scikit-learn the metrics
whose edge cases torchmetrics gets wrong for our small cells (macro averages that count an
absent class as 0, AUROC 0 instead of undefined with a single class): balanced accuracy,
per-class precision/recall/F1, ROC-AUC and log loss.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    balanced_accuracy_score,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)
from torchmetrics.functional import mean_absolute_error
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_calibration_error,
)

from agegender.data.records import AGE_GROUP_NAMES, GENDERS, RACES, ages_to_groups
from agegender.readout import gender_labels

NAN = float("nan")
N_BINS = 15
CS_YEARS = 5.0
N_GROUPS = len(AGE_GROUP_NAMES)

#: Column names of the per-image predictions frame.
P_GENDER = ("p_male", "p_female")
P_AGE = tuple(f"p_age_{g}" for g in AGE_GROUP_NAMES)

GENDER_KEYS = (
    "n_gender",
    "gender_accuracy",
    "gender_balanced_accuracy",
    *(f"gender_{m}_{c}" for c in GENDERS for m in ("precision", "recall", "f1")),
    "gender_roc_auc",
    "gender_log_loss",
    "gender_ece",
)
AGE_GROUP_KEYS = ("n_age_group", "age_group_exact", "age_group_one_off")
AGE_KEYS = ("n_age", "age_mae", "age_cs5")


# --------------------------------------------------------------------------- helpers
def _labels(y: Sequence | np.ndarray, n_classes: int) -> np.ndarray:
    """Integer labels with unknown (NaN, negative, out of range) as -1."""
    a = pd.to_numeric(pd.Series(np.asarray(y, dtype=object)), errors="coerce").to_numpy(float)
    ok = np.isfinite(a) & (a >= 0) & (a < n_classes)
    out = np.full(len(a), -1, dtype=np.int64)
    out[ok] = a[ok].astype(np.int64)
    return out


def _floats(x: Sequence | np.ndarray) -> np.ndarray:
    return pd.to_numeric(pd.Series(np.asarray(x, dtype=object)), errors="coerce").to_numpy(float)


def _probs2(p_female: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p_female, dtype=np.float64), 0.0, 1.0)
    return np.stack([1.0 - p, p], axis=1)


# --------------------------------------------------------------------------- calibration
def reliability_bins(
    y_true: Sequence | np.ndarray, probs: np.ndarray, n_bins: int = N_BINS
) -> list[dict]:
    """Reliability-diagram data for top-label confidence in ``n_bins`` equal bins of [0, 1].

    ``probs`` is ``(N, C)`` class probabilities (or ``(N,)`` P(class 1) for two classes).
    Each bin ``[lower, upper)`` (the last one closed) gives ``n``, the mean ``confidence``
    of its samples, their ``accuracy`` and ``gap = accuracy - confidence`` (NaN when empty).
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim == 1:
        probs = _probs2(probs)
    y = _labels(y_true, probs.shape[1])
    keep = y >= 0
    probs, y = probs[keep], y[keep]
    conf = probs.max(axis=1) if len(probs) else np.zeros(0)
    correct = (probs.argmax(axis=1) == y) if len(probs) else np.zeros(0, bool)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, n_bins - 1)
    out = []
    for i in range(n_bins):
        m = idx == i
        n = int(m.sum())
        acc = float(correct[m].mean()) if n else NAN
        c = float(conf[m].mean()) if n else NAN
        out.append(
            {
                "lower": float(edges[i]),
                "upper": float(edges[i + 1]),
                "n": n,
                "confidence": c,
                "accuracy": acc,
                "gap": acc - c if n else NAN,
            }
        )
    return out


def expected_calibration_error(
    y_true: Sequence | np.ndarray, probs: np.ndarray, n_bins: int = N_BINS
) -> float:
    """Top-label ECE: ``sum_b n_b / N * |accuracy_b - confidence_b|`` (torchmetrics, L1)."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim == 1:
        probs = _probs2(probs)
    y = _labels(y_true, probs.shape[1])
    keep = y >= 0
    if not keep.any():
        return NAN
    return float(
        multiclass_calibration_error(
            torch.as_tensor(probs[keep]),
            torch.as_tensor(y[keep]),
            num_classes=probs.shape[1],
            n_bins=n_bins,
            norm="l1",
        )
    )


# --------------------------------------------------------------------------- gender
def gender_metrics(
    y_true: Sequence | np.ndarray,
    p_female: Sequence | np.ndarray,
    n_bins: int = N_BINS,
    predicted: Sequence | np.ndarray | None = None,
) -> dict[str, float]:
    """Gender metrics (keys :data:`GENDER_KEYS`) from labels (0 male, 1 female) and
    P(female). The predicted class is ``predicted`` (a predictions frame's
    ``pred_gender``: the model's own decision), else female when ``p_female > 0.5``
    (:func:`agegender.readout.gender_labels`)."""
    y = _labels(y_true, 2)
    p = _floats(p_female)
    decided = gender_labels(p) if predicted is None else _labels(predicted, 2)
    keep = (y >= 0) & np.isfinite(p) & (decided >= 0)
    y, p, pred = y[keep], np.clip(p[keep], 0.0, 1.0), decided[keep]
    out: dict[str, float] = {k: NAN for k in GENDER_KEYS}
    out["n_gender"] = int(len(y))
    if not len(y):
        return out
    probs = _probs2(p)
    out["gender_accuracy"] = float(
        multiclass_accuracy(
            torch.as_tensor(pred), torch.as_tensor(y), num_classes=2, average="micro"
        )
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.simplefilter("ignore", UserWarning)  # a single class in a small cell
        out["gender_balanced_accuracy"] = float(balanced_accuracy_score(y, pred))
        prec, rec, f1, _ = precision_recall_fscore_support(
            y, pred, labels=[0, 1], zero_division=np.nan
        )
        for i, c in enumerate(GENDERS):
            support = int((y == i).sum())
            out[f"gender_precision_{c}"] = float(prec[i])
            out[f"gender_recall_{c}"] = float(rec[i]) if support else NAN
            out[f"gender_f1_{c}"] = float(f1[i]) if support else NAN
        if len(np.unique(y)) == 2:
            out["gender_roc_auc"] = float(roc_auc_score(y, p))
        eps = 1e-7
        out["gender_log_loss"] = float(log_loss(y, np.clip(probs, eps, 1 - eps), labels=[0, 1]))
    out["gender_ece"] = expected_calibration_error(y, probs, n_bins)
    return out


# --------------------------------------------------------------------------- age
def age_group_metrics(
    y_true: Sequence | np.ndarray, pred_group: Sequence | np.ndarray
) -> dict[str, float]:
    """Exact and one-off accuracy over the 8 Adience groups (keys :data:`AGE_GROUP_KEYS`).

    ``pred_group`` holds predicted group indices, or ``(N, 8)`` probabilities (argmax)."""
    pred = np.asarray(pred_group)
    if pred.ndim == 2:
        pred = np.asarray(pred, dtype=np.float64).argmax(axis=1)
    y = _labels(y_true, N_GROUPS)
    pred = _labels(pred, N_GROUPS)
    keep = (y >= 0) & (pred >= 0)
    y, pred = y[keep], pred[keep]
    out: dict[str, float] = {"n_age_group": int(len(y))}
    if not len(y):
        return out | {"age_group_exact": NAN, "age_group_one_off": NAN}
    out["age_group_exact"] = float(
        multiclass_accuracy(
            torch.as_tensor(pred), torch.as_tensor(y), num_classes=N_GROUPS, average="micro"
        )
    )
    out["age_group_one_off"] = float(np.mean(np.abs(pred - y) <= 1))
    return out


def age_metrics(
    true_age: Sequence | np.ndarray, pred_age: Sequence | np.ndarray, cs_years: float = CS_YEARS
) -> dict[str, float]:
    """MAE in years and CS@5 (fraction with ``|error| <= cs_years``), keys :data:`AGE_KEYS`."""
    t, p = _floats(true_age), _floats(pred_age)
    keep = np.isfinite(t) & np.isfinite(p)
    t, p = t[keep], p[keep]
    out: dict[str, float] = {"n_age": int(len(t))}
    if not len(t):
        return out | {"age_mae": NAN, "age_cs5": NAN}
    out["age_mae"] = float(mean_absolute_error(torch.as_tensor(p), torch.as_tensor(t)))
    out["age_cs5"] = float(np.mean(np.abs(p - t) <= cs_years))
    return out


def age_bin_metrics(
    age_min: Sequence | np.ndarray, age_max: Sequence | np.ndarray, pred_age: Sequence | np.ndarray
) -> dict[str, float]:
    """Metrics for datasets whose ages are bins (FairFace): ``age_bin_exact`` (the predicted
    age in years falls in the true bin ``[min, max + 1)``), ``age_bin_one_off`` (in the true
    bin or a neighbour, the bins being the distinct ones in the data) and ``age_bin_error``
    (mean years from the prediction to the nearest edge of the true bin; 0 inside)."""
    lo, hi, p = _floats(age_min), _floats(age_max), _floats(pred_age)
    keep = np.isfinite(lo) & np.isfinite(p)
    lo, hi, p = lo[keep], hi[keep] + 1.0, p[keep]
    out: dict[str, float] = {"n_age_bin": int(len(p))}
    if not len(p):
        return out | {"age_bin_exact": NAN, "age_bin_one_off": NAN, "age_bin_error": NAN}
    edges = np.unique(lo)  # bin starts, ascending
    true_bin = np.searchsorted(edges, lo, side="right") - 1
    pred_bin = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, len(edges) - 1)
    inside = (p >= lo) & (p < hi)
    out["age_bin_exact"] = float(inside.mean())
    out["age_bin_one_off"] = float(np.mean(inside | (np.abs(pred_bin - true_bin) <= 1)))
    out["age_bin_error"] = float(
        np.mean(np.where(inside, 0.0, np.minimum(abs(p - lo), abs(p - hi))))
    )
    return out


# --------------------------------------------------------------------------- frames
def tasks_of(pred: pd.DataFrame) -> dict[str, object]:
    """Which predictions a frame holds: ``{"gender": bool, "age": none|groups|years}``."""
    gender = "p_female" in pred.columns
    if "pred_age" in pred.columns:
        age = "years"
    elif "pred_age_group" in pred.columns or P_AGE[0] in pred.columns:
        age = "groups"
    else:
        age = "none"
    return {"gender": gender, "age": age}


def predicted_groups(pred: pd.DataFrame) -> np.ndarray | None:
    """Predicted age group per row (-1 unknown): the group of the predicted age when the
    model predicts years (regression, DEX; :func:`~agegender.data.records.ages_to_groups`),
    else the argmax of the group probabilities, else the ``pred_age_group`` column."""
    if "pred_age" in pred.columns:
        return ages_to_groups(_floats(pred["pred_age"]))
    if P_AGE[0] in pred.columns:
        probs = pred[list(P_AGE)].to_numpy(dtype=np.float64)
        out = np.nan_to_num(probs, nan=-1.0).argmax(axis=1)
        out[np.isnan(probs).any(axis=1)] = -1
        return out
    if "pred_age_group" in pred.columns:
        return _labels(pred["pred_age_group"], N_GROUPS)
    return None


def _decided(pred: pd.DataFrame) -> pd.Series | None:
    """The frame's own gender decision (``pred_gender``, made at the model's threshold)."""
    return pred["pred_gender"] if "pred_gender" in pred.columns else None


def prediction_metrics(pred: pd.DataFrame) -> dict[str, float]:
    """Every metric that applies to a per-image predictions frame, as one flat dict.

    Needs true-label columns ``gender``, ``age_group`` (and ``age`` for MAE / CS@5) and
    prediction columns ``p_female``, ``p_age_<group>`` or ``pred_age`` as written by
    :func:`agegender.evaluate.predict_batch.predict_table`. Rows with an ``error`` are
    ignored. Keys: ``n`` plus :data:`GENDER_KEYS`, :data:`AGE_GROUP_KEYS`,
    :data:`AGE_KEYS` as they apply.
    """
    if "error" in pred.columns:
        pred = pred[pred["error"].isna() | (pred["error"].astype(str) == "")]
    tasks = tasks_of(pred)
    out: dict[str, float] = {"n": int(len(pred))}
    if tasks["gender"]:
        out |= gender_metrics(pred["gender"], pred["p_female"], predicted=_decided(pred))
    groups = predicted_groups(pred)
    if groups is not None:
        true_group = pred["age_group"] if "age_group" in pred.columns else np.full(len(pred), -1)
        out |= age_group_metrics(true_group, groups)
    if tasks["age"] == "years":
        true_age = pred["age"] if "age" in pred.columns else np.full(len(pred), np.nan)
        out |= age_metrics(true_age, pred["pred_age"])
        if has_age_bins(pred):
            out |= age_bin_metrics(pred["age_min"], pred["age_max"], pred["pred_age"])
    return out


def has_age_bins(pred: pd.DataFrame) -> bool:
    """Whether a frame has binned true ages (``age_min``/``age_max``, e.g. FairFace)."""
    return "age_min" in pred.columns and bool(np.isfinite(_floats(pred["age_min"])).any())


def age_bin_names(pred: pd.DataFrame) -> list[tuple[str, float]]:
    """``(name, age_min)`` of each distinct true bin, youngest first (``70+`` when open)."""
    bins = pred[["age_min", "age_max"]].astype(float).dropna().drop_duplicates()
    out = []
    for lo, hi in sorted(bins.itertuples(index=False)):
        out.append((f"{lo:g}+" if not np.isfinite(hi) else f"{lo:g}-{hi:g}", lo))
    return out


def gender_bin_cells(frame: pd.DataFrame) -> dict[str, dict]:
    """Gender accuracy (a miss is an error) per true gender x age bin, with counts."""
    if "age_min" not in frame or not frame["age_min"].notna().any() or "pred_gender" not in frame:
        return {}
    correct = (frame["pred_gender"].astype("Int8") == frame["gender"].astype("Int8")).fillna(False)
    correct &= frame["face_found"]
    out = {}
    for name, lo in age_bin_names(frame):
        for g, gname in ((0, "male"), (1, "female")):
            mask = (frame["age_min"] == lo) & (frame["gender"] == g)
            if mask.any():
                out[f"{gname} {name}"] = {
                    "n": int(mask.sum()),
                    "gender_accuracy_all": float(correct[mask].mean()),
                }
    return out


def age_split_scores(cells: dict[str, dict], adult_from: int = 20) -> dict[str, dict]:
    """From :func:`gender_bin_cells`: gender accuracy and female / male recall (a miss is an
    error) of the photos whose true age bin starts at ``adult_from`` or later (``adults``)
    and of the younger ones (``under_<adult_from>``), the issue's FairFace figures."""
    out: dict[str, dict] = {}
    for name, keep in (
        ("adults", lambda lo: lo >= adult_from),
        (f"under_{adult_from}", lambda lo: lo < adult_from),
    ):
        part = {k: c for k, c in cells.items() if keep(bin_start(k))}
        if part:
            out[name] = {
                "n": sum(c["n"] for c in part.values()),
                "gender_accuracy_all": _pooled_accuracy(part.values()),
                "recall_female_all": _pooled_accuracy(
                    c for k, c in part.items() if k.startswith("female")
                ),
                "recall_male_all": _pooled_accuracy(
                    c for k, c in part.items() if k.startswith("male")
                ),
            }
    return out


def _pooled_accuracy(cells: Iterable[dict]) -> float | None:
    """The accuracy of several cells' photos together (count-weighted); None for none."""
    cells = list(cells)
    n = sum(c["n"] for c in cells)
    return sum(c["n"] * c["gender_accuracy_all"] for c in cells) / n if n else None


def bin_start(cell: str) -> int:
    """``"female 20-29"`` -> 20, ``"male 70+"`` -> 70."""
    return int(cell.split()[-1].split("-")[0].rstrip("+"))


def gender_reliability(pred: pd.DataFrame, n_bins: int = N_BINS) -> list[dict]:
    """Reliability-diagram bins of the gender prediction in a predictions frame."""
    if "p_female" not in pred.columns:
        return []
    return reliability_bins(pred["gender"], _floats(pred["p_female"]), n_bins)


def confusion(pred: pd.DataFrame, what: str) -> np.ndarray | None:
    """Confusion matrix (rows: true, columns: predicted) for ``gender`` or ``age_group``."""
    if what == "gender":
        if "p_female" not in pred.columns:
            return None
        y = _labels(pred["gender"], 2)
        p = _decided(pred)
        p = gender_labels(_floats(pred["p_female"])) if p is None else _labels(p, 2)
        labels = [0, 1]
    else:
        groups = predicted_groups(pred)
        if groups is None:
            return None
        y, p = _labels(pred["age_group"], N_GROUPS), groups
        labels = list(range(N_GROUPS))
    keep = (y >= 0) & (p >= 0)
    if not keep.any():  # no face labelled for it (CelebA has no ages): no matrix
        return None
    return confusion_matrix(y[keep], p[keep], labels=labels)


# --------------------------------------------------------------------------- fairness
def _breakdowns(pred: pd.DataFrame) -> list[tuple[str, str, np.ndarray]]:
    cells: list[tuple[str, str, np.ndarray]] = [("all", "all", np.ones(len(pred), bool))]
    if "gender" in pred.columns:
        g = _labels(pred["gender"], 2)
        cells += [("gender", name, g == i) for i, name in enumerate(GENDERS)]
    if "age_group" in pred.columns and not has_age_bins(pred):
        a = _labels(pred["age_group"], N_GROUPS)
        cells += [("age_group", name, a == i) for i, name in enumerate(AGE_GROUP_NAMES)]
    if has_age_bins(pred):
        lo = _floats(pred["age_min"])
        cells += [("age_bin", name, lo == start) for name, start in age_bin_names(pred)]
    if "race" in pred.columns:
        r = _labels(pred["race"], len(RACES))
        if (r >= 0).any():
            cells += [("race", name, r == i) for i, name in enumerate(RACES)]
    return cells


def fairness_table(pred: pd.DataFrame) -> pd.DataFrame:
    """Every metric of :func:`prediction_metrics` per gender, age group and race.

    One row per cell: ``by`` (all, gender, age_group, race), ``group`` (its name), ``n``
    and the metric columns. All genders and age groups get a row (and all five UTKFace
    races when any race is known); an empty cell has ``n = 0`` and NaN metrics.
    """
    if "error" in pred.columns:
        pred = pred[pred["error"].isna() | (pred["error"].astype(str) == "")]
    pred = pred.reset_index(drop=True)
    rows = []
    for by, name, mask in _breakdowns(pred):
        rows.append({"by": by, "group": name, **prediction_metrics(pred[mask])})
    table = pd.DataFrame(rows)
    return table


__all__ = [
    "AGE_GROUP_KEYS",
    "AGE_KEYS",
    "GENDER_KEYS",
    "N_BINS",
    "P_AGE",
    "P_GENDER",
    "age_group_metrics",
    "age_metrics",
    "age_split_scores",
    "bin_start",
    "confusion",
    "expected_calibration_error",
    "fairness_table",
    "gender_bin_cells",
    "gender_metrics",
    "gender_reliability",
    "prediction_metrics",
    "predicted_groups",
    "reliability_bins",
    "tasks_of",
]
