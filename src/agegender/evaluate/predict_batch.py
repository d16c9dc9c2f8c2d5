"""Run a trained model over a FaceTable in batches and return per-image probabilities.

Images are preprocessed the way the checkpoint says (``meta["preprocessing"]``): the face
is resized to ``resize`` x ``resize`` (through the decode-once uint8 cache at that size,
:mod:`agegender.data.cache`), the centre ``input_size`` window is taken (or the views of
:mod:`agegender.evaluate.tta`), scaled to [0, 1] and normalised by ``mean``/``std``.

With a detector (``blazeface``, ``haar``) each full image goes through the predictor's
face path (:func:`agegender.infer.faces.find_faces`: detect, retry on a padded copy, align
on landmarks or crop with the detector's framing) and the largest face is kept, exactly as
``predict`` would see it; when no face is found the whole image is used and ``face_found``
is false for that row (counted in the results).

The frame :func:`predict_table` returns has one row per table row, in order: the true
labels (``path, gender, age, age_group, race, subject`` and ``fold`` when present), an
``error`` (empty, or why the image could not be used), and the predictions:
``p_male, p_female, pred_gender`` (gender task: the model's decision and its probabilities,
:func:`predictions_frame`) and ``p_female_raw`` (the network's own output),
``p_age_<group>`` for the 8 Adience groups
(group and DEX models; for DEX the probability mass of the ages in each group),
``pred_age`` (regression and DEX: years) and ``pred_age_group`` (argmax for group models,
the group of ``pred_age`` otherwise).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch

from agegender.artifact import output_probabilities, parse_meta
from agegender.data.records import ages_to_groups
from agegender.evaluate.metrics import P_AGE, P_GENDER
from agegender.evaluate.tta import average_views, check_mode, tta_views
from agegender.infer.detector import check_detector
from agegender.readout import (
    AGE_OUTPUTS,
    NO_DECISION,
    GenderDecision,
    dex_group_matrix,
    dex_years,
    gender_labels,
    gender_probability,
    output_years,
)

LABEL_COLUMNS = (
    "path",
    "gender",
    "age",
    "age_group",
    "race",
    "subject",
    "fold",
    "age_min",
    "age_max",
)


@dataclass
class FaceImages:
    """Images at one size for the rows of a table: ``images[rows[i]]`` is row ``i``'s face
    when ``ok[i]``; ``errors[i]`` says why not; ``face_found`` is None without detection."""

    images: Any
    rows: np.ndarray
    ok: np.ndarray
    errors: np.ndarray
    face_found: np.ndarray | None = None
    seconds: float = 0.0


@dataclass
class Predictions:
    """Probabilities per row (NaN where the image failed) and the model time they took."""

    p_gender: np.ndarray | None
    p_age_group: np.ndarray | None
    pred_age: np.ndarray | None
    seconds: float
    n_views: int
    info: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- images
def _cached_images(
    table: pd.DataFrame, size: int, cache_dir: str | None, workers: int | None, progress: bool
):
    """``(images, rows, ok, errors)`` through the decode-once cache."""
    from agegender.data.cache import build_cache

    cache = build_cache(table, size, cache_dir=cache_dir, workers=workers, progress=progress)
    paths = table["path"].astype(str).tolist()
    rows = np.asarray(cache.rows_for(paths), dtype=np.int64)
    ok = np.asarray(cache.ok, dtype=bool)[rows]
    reasons = {p.path: p.reason for p in getattr(cache, "problems", [])}
    errors = np.array(
        [
            "" if good else reasons.get(p, "unreadable image")
            for p, good in zip(paths, ok, strict=True)
        ],
        dtype=object,
    )
    return cache.images, rows, ok, errors


def _load_detected(path: str, size: int, detector: str) -> tuple[np.ndarray | None, str, bool]:
    """Decode and run the predictor's face path (:func:`agegender.infer.faces.find_faces`:
    detect, retry padded, align or crop); the largest face at ``size`` px, or the whole
    image resized when none is found (``found`` False)."""
    from agegender.data.imageio import ImageError, load_rgb
    from agegender.infer.detector import shared_detector
    from agegender.infer.faces import find_faces, largest_face

    try:
        rgb = load_rgb(path)
    except ImageError as exc:
        return None, str(exc), False
    det = shared_detector(detector)
    faces = find_faces(rgb, det, size, margin=det.margin, shift=det.shift)
    if faces:
        return largest_face(faces).crop, "", True
    interp = cv2.INTER_AREA if max(rgb.shape[:2]) > size else cv2.INTER_LINEAR
    return cv2.resize(rgb, (size, size), interpolation=interp), "", False


def load_faces(
    table: pd.DataFrame,
    size: int,
    *,
    detector: str = "none",
    cache_dir: str | None = None,
    workers: int | None = None,
    progress: bool = False,
) -> FaceImages:
    """The faces of ``table`` at ``size`` px: from the image cache (``detector="none"``) or
    through the predictor's face path with that detector. Bad images get an error, not an
    exception."""
    from agegender.data.parallel import parallel_map

    check_detector(detector)
    started = time.perf_counter()
    n = len(table)
    paths = table["path"].astype(str).tolist()
    errors = np.full(n, "", dtype=object)
    if n == 0:
        empty = np.zeros((0, size, size, 3), np.uint8)
        found0 = None if detector == "none" else np.zeros(0, bool)
        return FaceImages(empty, np.zeros(0, np.int64), np.zeros(0, bool), errors, found0)
    if detector == "none":
        images, rows, ok, errors = _cached_images(table, size, cache_dir, workers, progress)
        return FaceImages(images, rows, ok, errors, None, time.perf_counter() - started)
    results3 = parallel_map(
        functools.partial(_load_detected, size=size, detector=detector),
        paths,
        workers=workers,
        progress=progress,
        description="detecting faces",
    )
    results = [(img, err) for img, err, _ in results3]
    found = np.array([f for _, _, f in results3], dtype=bool)
    images = np.zeros((n, size, size, 3), np.uint8)
    ok = np.zeros(n, bool)
    for i, (img, err) in enumerate(results):
        if img is None:
            errors[i] = err or "unreadable image"
        else:
            images[i], ok[i] = img, True
    return FaceImages(images, np.arange(n), ok, errors, found, time.perf_counter() - started)


# --------------------------------------------------------------------------- model
@torch.inference_mode()
def predict_images(
    model: torch.nn.Module,
    meta: dict,
    faces: FaceImages,
    *,
    tta: str = "none",
    batch_size: int = 64,
    device: str | torch.device | None = None,
) -> Predictions:
    """Class probabilities for every ``faces.ok`` row, averaged over the TTA views."""
    from agegender.data.augment import Preprocess

    check_mode(tta)
    pre = meta["preprocessing"]
    size, input_size = int(pre["resize"]), int(pre["input_size"])
    tasks = meta["tasks"]
    age_mode = tasks.get("age", "none")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(device).eval()
    norm = Preprocess(size=input_size, input_size=input_size, mean=pre["mean"], std=pre["std"])
    n = len(faces.ok)
    todo = np.flatnonzero(faces.ok)
    p_gender = np.full((n, 2), np.nan, np.float32) if tasks.get("gender") else None
    p_group = np.full((n, len(P_AGE)), np.nan, np.float32) if age_mode != "none" else None
    years = np.full(n, np.nan, np.float32) if age_mode in ("regression", "dex") else None
    if age_mode == "regression":
        p_group = None
    dex_groups = None
    n_views = 0
    started = time.perf_counter()
    for s in range(0, len(todo), batch_size):
        idx = todo[s : s + batch_size]
        rows = faces.rows[idx]
        order = np.argsort(rows, kind="stable")  # sorted reads from the memmap
        batch = np.asarray(faces.images[rows[order]])
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        x = torch.from_numpy(batch[inverse]).to(device).permute(0, 3, 1, 2)
        views = tta_views(x, input_size, tta)
        n_views = len(views)
        outs = [output_probabilities(model(norm.eval(v)), age_mode) for v in views]
        mean = average_views(outs)
        if p_gender is not None:
            p_gender[idx] = mean["gender"].cpu().numpy()
        if age_mode == "groups":
            p_group[idx] = mean["age"].cpu().numpy()
        elif age_mode == "dex":
            probs = mean["age"]
            if dex_groups is None:
                dex_groups = torch.from_numpy(dex_group_matrix(probs.shape[-1])).to(device)
            years[idx] = dex_years(probs).cpu().numpy()
            p_group[idx] = (probs @ dex_groups).cpu().numpy()
        elif age_mode == "regression":
            years[idx] = mean["age"].cpu().numpy()
    seconds = time.perf_counter() - started
    return Predictions(
        p_gender, p_group, years, seconds, n_views, {"device": str(device), "size": size}
    )


def predictions_frame(
    table: pd.DataFrame,
    faces: FaceImages,
    pred: Predictions,
    gender_decision: GenderDecision | float = NO_DECISION,
) -> pd.DataFrame:
    """One row per table row: true labels, error, face_found and the predictions.
    ``pred_gender`` is the model's decision (:func:`agegender.readout.gender_labels`, by
    the predicted age's band when ``gender_decision`` has bands), ``p_female``/``p_male``
    that decision's probabilities (:func:`agegender.readout.gender_probability`) and
    ``p_female_raw`` the network's own output. A plain number is a threshold alone."""
    if not isinstance(gender_decision, GenderDecision):
        gender_decision = GenderDecision(threshold=float(gender_decision))
    cols = [c for c in LABEL_COLUMNS if c in table.columns]
    out = table[cols].reset_index(drop=True).copy()
    out["error"] = faces.errors
    if faces.face_found is not None:
        out["face_found"] = faces.face_found
    if pred.p_gender is not None:
        raw = pred.p_gender[:, 1].astype(np.float64)
        years = _decision_years(pred)
        if gender_decision.identity:
            out[P_GENDER[0]] = pred.p_gender[:, 0]
            out[P_GENDER[1]] = pred.p_gender[:, 1]
        else:
            p = gender_probability(raw, gender_decision, years)
            out[P_GENDER[0]], out[P_GENDER[1]] = 1.0 - p, p
        out["p_female_raw"] = pred.p_gender[:, 1]
        g = gender_labels(raw, gender_decision, years)
        out["pred_gender"] = pd.array(np.where(g < 0, None, g), dtype="Int8")
    if pred.p_age_group is not None:
        for j, col in enumerate(P_AGE):
            out[col] = pred.p_age_group[:, j]
    if pred.pred_age is not None:
        out["pred_age"] = pred.pred_age
        groups = ages_to_groups(pred.pred_age)
    elif pred.p_age_group is not None:
        groups = np.nan_to_num(pred.p_age_group, nan=-1).argmax(1)
        groups[np.isnan(pred.p_age_group).any(1)] = -1
    else:
        groups = None
    if groups is not None:
        out["pred_age_group"] = pd.array(np.where(groups < 0, None, groups), dtype="Int8")
    return out


def _decision_years(pred: Predictions) -> np.ndarray | None:
    """Each face's predicted age in years, as the predictor reports it (the age a gender
    decision with age bands reads): DEX or regression years (at least 0), or the group
    midpoints weighted by the group probabilities."""
    if pred.pred_age is not None:
        return output_years({AGE_OUTPUTS["regression"]: pred.pred_age}, "regression")
    if pred.p_age_group is not None:
        return output_years({AGE_OUTPUTS["groups"]: pred.p_age_group}, "groups")
    return None


def predict_table(
    model: torch.nn.Module,
    meta: dict,
    table: pd.DataFrame,
    *,
    tta: str = "none",
    detector: str = "none",
    batch_size: int = 64,
    cache_dir: str | None = None,
    workers: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> tuple[pd.DataFrame, dict]:
    """Per-image predictions for ``table`` (see the module docstring) and timing info:
    ``load_seconds``, ``model_seconds``, ``seconds_per_image``, ``images_per_second``
    (model time, preprocessing and TTA included, image decoding excluded), ``views``,
    ``device``, ``n_failed`` and ``no_face`` (haar)."""
    check_mode(tta)
    size = int(meta["preprocessing"]["resize"])
    faces = load_faces(
        table, size, detector=detector, cache_dir=cache_dir, workers=workers, progress=progress
    )
    pred = predict_images(model, meta, faces, tta=tta, batch_size=batch_size, device=device)
    frame = predictions_frame(table, faces, pred, parse_meta(meta).gender_decision)
    n_ok = int(faces.ok.sum())
    info = {
        "n_images": int(len(table)),
        "n_evaluated": n_ok,
        "n_failed": int((~faces.ok).sum()),
        "no_face": None if faces.face_found is None else int((~faces.face_found & faces.ok).sum()),
        "views": pred.n_views or {"none": 1, "flip": 2, "oversample": 10}[tta],
        "device": pred.info["device"],
        "load_seconds": round(faces.seconds, 3),
        "model_seconds": round(pred.seconds, 3),
        "seconds_per_image": pred.seconds / n_ok if n_ok else None,
        "images_per_second": n_ok / pred.seconds if n_ok and pred.seconds > 0 else None,
    }
    return frame, info


__all__ = [
    "FaceImages",
    "Predictions",
    "load_faces",
    "output_probabilities",
    "predict_images",
    "predict_table",
    "predictions_frame",
]
