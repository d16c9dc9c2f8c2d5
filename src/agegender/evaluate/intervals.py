"""Per-photo scores and their confidence intervals over people.

:func:`photo_scores` turns a per-photo predictions frame (:func:`agegender.evaluate.photos.
predict_photos`, or a checkpoint's :func:`agegender.evaluate.predict_batch.predict_table`)
into one 1/0 score per photo and figure, a photo without a face counting as wrong. An age
group is read out of a model's age output two ways (:data:`AGE_READOUTS`), both scored
where the model allows them: ``mass``, the group holding most of the predicted
distribution's probability (the reports' way; a groups model's own answer), and
``nearest``, the group nearest the predicted age in years (the DEX expectation, a
regression output). :func:`photo_intervals` gives every figure a confidence interval from
a bootstrap over people (the ``subject`` column; a photo without one is its own person),
overall and per true age group, with the photos and people it rests on.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from agegender.data.records import AGE_GROUP_NAMES, ages_to_groups
from agegender.evaluate.metrics import P_AGE

__all__ = ["AGE_READOUTS", "photo_intervals", "photo_scores", "readout_groups"]

#: The two read-outs of an age group (see the module docstring), in the order reported.
AGE_READOUTS = ("mass", "nearest")


def readout_groups(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Each photo's predicted age group (-1 where none) by every read-out of
    :data:`AGE_READOUTS` the frame allows: ``mass`` from the ``p_age_<group>`` columns
    (argmax), ``nearest`` from ``pred_age`` (:func:`~agegender.data.records.ages_to_groups`)."""
    out: dict[str, np.ndarray] = {}
    if P_AGE[0] in frame.columns:
        probs = frame[list(P_AGE)].to_numpy(dtype=np.float64)
        mass = np.nan_to_num(probs, nan=-1.0).argmax(axis=1)
        mass[np.isnan(probs).any(axis=1)] = -1
        out["mass"] = mass
    if "pred_age" in frame.columns:
        out["nearest"] = ages_to_groups(frame["pred_age"].to_numpy(dtype=np.float64))
    return out


def photo_scores(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per photo of :func:`predict_photos`' frame, each score 1.0 (right) or 0.0
    (wrong, a photo without a face included), NaN where the photo lacks the label:
    ``faces_found``, ``gender`` (the predictor's decision) and, per read-out ``r`` of
    :func:`readout_groups`, ``age_group_exact_r`` and ``age_group_one_off_r`` (predicted
    group at most one from the true one)."""
    found = frame["face_found"].to_numpy(bool)
    out = pd.DataFrame({"faces_found": found.astype(float)}, index=frame.index)
    if "pred_gender" in frame.columns and "gender" in frame.columns:
        y = frame["gender"].astype("Int8").fillna(-1).to_numpy(np.int64)
        pred = frame["pred_gender"].astype("Int8").fillna(-1).to_numpy(np.int64)
        out["gender"] = np.where(y >= 0, ((pred == y) & found).astype(float), np.nan)
    if "age_group" in frame.columns:
        y = frame["age_group"].astype("Int8").fillna(-1).to_numpy(np.int64)
        for name, groups in readout_groups(frame).items():
            ok = found & (groups >= 0)
            for key, right in (("exact", groups == y), ("one_off", np.abs(groups - y) <= 1)):
                out[f"age_group_{key}_{name}"] = np.where(
                    y >= 0, (right & ok).astype(float), np.nan
                )
    return out


def _people(frame: pd.DataFrame) -> np.ndarray:
    """The unit a bootstrap resamples: the ``subject`` column, a photo without one its own."""
    own = "photo:" + frame["path"].astype(str)
    if "subject" not in frame.columns:
        return own.to_numpy()
    subject = frame["subject"].astype(object).where(frame["subject"].notna(), "").astype(str)
    return subject.where(subject != "", own).to_numpy()


def photo_intervals(
    frame: pd.DataFrame, *, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> dict[str, dict]:
    """Every ``*_all`` figure of :func:`photo_metrics` that :func:`photo_scores` makes
    (faces found, gender accuracy, female and male recall, balanced accuracy, the age
    group read-outs) with a ``confidence`` interval from a bootstrap over people
    (:func:`~agegender.evaluate.bootstrap.grouped_ratios_ci`, one per cell):
    ``{"overall": {metric: ci}, "by_age_group": {group: {metric: ci}}}``, each ``ci``
    ``{"value", "low", "high", "photos", "people", "confidence"}`` (photos and people:
    those the figure counts); ``by_age_group`` by true group, for the groups with photos."""
    from agegender.evaluate.bootstrap import grouped_ratios_ci

    scores = photo_scores(frame)
    people = _people(frame)
    names, columns = [], []
    for col in scores.columns:
        v = scores[col].to_numpy()
        if col == "gender":
            y = frame["gender"].astype("Int8").fillna(-1).to_numpy(np.int64)
            names += ["gender_accuracy_all", "gender_recall_female_all", "gender_recall_male_all"]
            columns += [v, np.where(y == 1, v, np.nan), np.where(y == 0, v, np.nan)]
        else:
            names.append(col if col == "faces_found" else f"{col}_all")
            columns.append(v)
    values = np.stack(columns, axis=1)
    means = []
    if "gender_accuracy_all" in names:
        names.append("gender_balanced_accuracy_all")
        means.append(
            [names.index("gender_recall_female_all"), names.index("gender_recall_male_all")]
        )

    def cell(rows: np.ndarray) -> dict[str, dict]:
        v = values[rows]
        cis = grouped_ratios_ci(
            np.nan_to_num(v),
            np.isfinite(v),
            people[rows],
            means=means,
            confidence=confidence,
            n_resamples=n_resamples,
            seed=seed,
        )
        return {n: c for n, c in zip(names, cis, strict=True) if c["photos"]}

    result: dict[str, dict] = {"overall": cell(np.ones(len(frame), bool)), "by_age_group": {}}
    if "age_group" in frame.columns:
        y = frame["age_group"].astype("Int8").fillna(-1).to_numpy(np.int64)
        for k, name in enumerate(AGE_GROUP_NAMES):
            if (y == k).any():
                result["by_age_group"][name] = cell(y == k)
    return result
