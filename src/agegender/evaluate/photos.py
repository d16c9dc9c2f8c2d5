"""Evaluate what a user gets: labelled photos through a :class:`~agegender.infer.Predictor`
(its detector, crop framing, preprocessing and runtime), scored per photo.

A photo's prediction is its largest face; a photo where no face is found (or that cannot
be read) counts as an error in the ``*_all`` metrics, so a detector that misses faces is
not flattered. The found faces alone are scored by :func:`prediction_metrics`.

The ``*_all`` figures come from :func:`~agegender.evaluate.intervals.photo_scores` (an age
group read out two ways, :data:`~agegender.evaluate.intervals.AGE_READOUTS`), and
:func:`~agegender.evaluate.intervals.photo_intervals` gives each a confidence interval from
a bootstrap over people.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from agegender.data.records import AGE_GROUP_NAMES
from agegender.evaluate.intervals import photo_intervals, photo_scores
from agegender.evaluate.metrics import (
    P_AGE,
    age_bin_metrics,
    fairness_table,
    has_age_bins,
    prediction_metrics,
)
from agegender.evaluate.predict_batch import LABEL_COLUMNS

__all__ = ["evaluate_model_file", "evaluate_photos", "photo_metrics", "predict_photos"]


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


def photo_metrics(frame: pd.DataFrame) -> dict[str, float]:
    """Per-photo metrics of :func:`predict_photos`' frame: ``faces_found`` (share of
    photos), ``gender_accuracy_all``, ``gender_balanced_accuracy_all``,
    ``gender_recall_{female,male}_all``, for Adience groups
    ``age_group_{exact,one_off}_{mass,nearest}_all``
    (:func:`~agegender.evaluate.intervals.photo_scores`) and, for binned ages,
    ``age_bin_exact_all`` (a miss is wrong in each), then every
    :func:`prediction_metrics` key over found faces."""
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


def evaluate_photos(predictor: Any, table: pd.DataFrame) -> dict[str, Any]:
    """:func:`predict_photos` + :func:`photo_metrics` +
    :func:`~agegender.evaluate.intervals.photo_intervals` (over people) + the fairness
    table over found faces (by gender, age group or bin, race), with timing."""
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
    from agegender.data.prepare import read_rows, reject_failed_images, require_images
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
    errors = frame["error"].astype(str).to_numpy().astype(object)
    errors[~found & (errors == "")] = "no face found"
    require_images(rows, rows.table, np.where(found, "", errors))
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
