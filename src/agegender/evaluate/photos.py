"""Evaluate what a user gets: labelled photos through a :class:`~agegender.infer.Predictor`
(its detector, crop framing, preprocessing and runtime), scored per photo.

A photo's prediction is its largest face; a photo where no face is found (or that cannot
be read) counts as an error in the ``*_all`` metrics, so a detector that misses faces is
not flattered. The found faces alone are scored by :func:`prediction_metrics`.

An age group is read out of a model's age output two ways (:data:`AGE_READOUTS`), both
scored where the model allows them: ``mass``, the group holding most of the predicted
distribution's probability (the reports' way; a groups model's own answer), and
``nearest``, the group nearest the predicted age in years (the DEX expectation, a
regression output). :func:`photo_intervals` gives every ``*_all`` figure a confidence
interval from a bootstrap over people (the ``subject`` column; a photo without one is its
own person), overall and per true age group, with the photos and people it rests on.

>>> from agegender.infer import Predictor
>>> from agegender.data.readers import read_table
>>> _, table, _ = read_table("../shared/data/fairface-540")
>>> frame, info = predict_photos(Predictor.load(), table)
>>> photo_metrics(frame)["gender_accuracy_all"]
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from agegender.data.records import AGE_GROUP_NAMES, ages_to_groups
from agegender.evaluate.metrics import (
    P_AGE,
    age_bin_metrics,
    fairness_table,
    has_age_bins,
    prediction_metrics,
)
from agegender.evaluate.predict_batch import LABEL_COLUMNS

__all__ = [
    "AGE_READOUTS",
    "evaluate_model_file",
    "evaluate_photos",
    "photo_intervals",
    "photo_metrics",
    "photo_scores",
    "predict_photos",
    "readout_groups",
]

#: The two read-outs of an age group (see the module docstring), in the order reported.
AGE_READOUTS = ("mass", "nearest")


def predict_photos(predictor: Any, table: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """One row per row of ``table``: its labels, ``face_found``, ``faces`` (count),
    ``error`` and the largest face's ``p_female``/``p_male``/``pred_gender`` (the
    predictor's decision and its probabilities), ``p_female_raw`` (the network's own
    output), ``pred_age`` and ``p_age_<group>``. ``info``: photos, seconds, photos per
    second."""
    paths = table["path"].astype(str).tolist()
    cols = [c for c in LABEL_COLUMNS if c in table.columns]
    out = table[cols].reset_index(drop=True).copy()
    n = len(paths)
    found = np.zeros(n, bool)
    count = np.zeros(n, np.int64)
    errors = np.full(n, "", dtype=object)
    p_female = np.full(n, np.nan)
    p_raw = np.full(n, np.nan)
    female = np.full(n, -1, np.int64)  # the predictor's own decision (its threshold)
    pred_age = np.full(n, np.nan)
    p_groups = np.full((n, len(AGE_GROUP_NAMES)), np.nan)
    started = time.perf_counter()
    for i, result in enumerate(predictor.predict_paths(paths)):
        if result.error is not None or not result.faces:
            errors[i] = result.error or "no face found"
            continue
        face = max(result.faces, key=lambda f: (f.box[2] * f.box[3], f.detector_score))
        found[i], count[i] = True, len(result.faces)
        if face.p_female is not None:
            p_female[i], female[i] = face.p_female, int(face.gender == "female")
            if face.p_female_raw is not None:
                p_raw[i] = face.p_female_raw
        if face.age is not None:
            pred_age[i] = face.age
        if face.age_group_probs:
            p_groups[i] = [face.age_group_probs[g] for g in AGE_GROUP_NAMES]
    seconds = time.perf_counter() - started
    out["error"] = errors
    out["face_found"] = found
    out["faces"] = count
    if np.isfinite(p_female).any():
        out["p_male"], out["p_female"] = 1 - p_female, p_female
        out["p_female_raw"] = p_raw
        out["pred_gender"] = pd.array(np.where(female < 0, None, female), dtype="Int8")
    if np.isfinite(p_groups).any():
        for j, col in enumerate(P_AGE):
            out[col] = p_groups[:, j]
    if np.isfinite(pred_age).any():
        out["pred_age"] = pred_age
    info = {
        "photos": n,
        "seconds": round(seconds, 3),
        "seconds_per_photo": seconds / n if n else None,
        "photos_per_second": n / seconds if n and seconds > 0 else None,
    }
    return out, info


def _recall_all(y: np.ndarray, correct: np.ndarray, cls: int) -> float:
    mask = y == cls
    return float(correct[mask].mean()) if mask.any() else float("nan")


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


def photo_metrics(frame: pd.DataFrame) -> dict[str, float]:
    """Per-photo metrics of :func:`predict_photos`' frame: ``faces_found`` (share of
    photos), ``gender_accuracy_all``, ``gender_balanced_accuracy_all``,
    ``gender_recall_{female,male}_all``, for Adience groups ``age_group_{exact,one_off}_
    {mass,nearest}_all`` (:func:`photo_scores`) and, for binned ages, ``age_bin_exact_all``
    (a miss is wrong in each), then every :func:`prediction_metrics` key over found faces."""
    n = len(frame)
    found = frame["face_found"].to_numpy(bool)
    out: dict[str, float] = {"n_photos": n, "faces_found": float(found.mean()) if n else np.nan}
    if "p_female" in frame.columns and "gender" in frame.columns:
        y = frame["gender"].astype("Int8").fillna(-1).to_numpy(np.int64)
        pred = frame["pred_gender"].astype("Int8").fillna(-1).to_numpy(np.int64)
        known = y >= 0
        correct = (pred == y) & found
        out["gender_accuracy_all"] = float(correct[known].mean()) if known.any() else np.nan
        rec = {c: _recall_all(y, correct, k) for k, c in enumerate(("male", "female"))}
        out["gender_recall_male_all"], out["gender_recall_female_all"] = rec["male"], rec["female"]
        out["gender_balanced_accuracy_all"] = float(np.nanmean(list(rec.values())))
    scores = photo_scores(frame)
    for col in scores.columns:
        if col.startswith("age_group_") and scores[col].notna().any():
            out[f"{col}_all"] = float(scores[col].mean())
    if has_age_bins(frame) and "pred_age" in frame.columns:
        bins = age_bin_metrics(frame["age_min"], frame["age_max"], frame["pred_age"])
        n_bins = int(np.isfinite(frame["age_min"].astype(float)).sum())
        out["age_bin_exact_all"] = bins["age_bin_exact"] * bins["n_age_bin"] / max(n_bins, 1)
    return out | prediction_metrics(frame)


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


def evaluate_photos(predictor: Any, table: pd.DataFrame) -> dict[str, Any]:
    """:func:`predict_photos` + :func:`photo_metrics` + :func:`photo_intervals` (over
    people) + the fairness table over found faces (by gender, age group or bin, race),
    with timing."""
    frame, info = predict_photos(predictor, table)
    return {
        "metrics": photo_metrics(frame),
        "intervals": photo_intervals(frame),
        "fairness": fairness_table(frame),
        "info": info,
        "predictions": frame,
    }


def evaluate_model_file(
    model: str,
    data: str | Path,
    format: str = "auto",
    *,
    detector: str = "blazeface",
    out: str | Path | None = None,
    limit: int | None = None,
    seed: int = 0,
    threads: int | None = None,
) -> dict[str, Any]:
    """Evaluate any model ``predict`` loads (a bundled name, ``.onnx``, ``.pt``, ``.ckpt``)
    on a labelled dataset through the predictor's face path, one row per photo. Writes
    ``out`` (results JSON) and the per-photo predictions CSV beside it when given."""
    from agegender.data.prepare import read_rows, reject_failed_images
    from agegender.evaluate.evaluation import write_results
    from agegender.infer import Predictor

    predictor = Predictor.load(model, detector=detector, threads=threads)
    rows = read_rows(data, format, audit=False, limit=limit, seed=seed)
    result = rows.result
    try:
        res = evaluate_photos(predictor, rows.table)
    finally:
        predictor.close()
    frame = res.pop("predictions")
    found = frame["face_found"].to_numpy(bool)
    failed = (frame["error"].astype(str) != "") & ~found
    # kept = photos with a face (the main metrics); the others count in the *_all metrics
    reasons = frame["error"].astype(str).to_numpy()[~found]
    reject_failed_images(rows.counts, [r or "no face found" for r in reasons])
    results = {
        "model": model,
        "detector": detector,
        "data": str(data),
        "format": result.format,
        "label_problems": len(result.problems),
        "row_counts": rows.counts.to_dict(),
        "n_images": len(frame),
        "n_evaluated": int(found.sum()),
        "n_failed": int(failed.sum()),
        **res,
        "predictions_csv": None,
    }
    if out is not None:
        write_results(results, frame, out)
    return results
