"""Choose a model's gender threshold on labelled validation faces and write it into the model.

A model calls a face female when P(female) is above a threshold: 0.5 unless its meta says
otherwise. A model trained on one population can be shifted on others (ours, trained on
UTKFace, calls too many women men on FairFace), and the threshold that gives women and
men equal recall **on held-out faces of the training population** is a cheap, honest
correction: it is chosen on validation faces, never on the test set, and applied unchanged
everywhere else (``predict``, ``evaluate``, ``serve``, both runtimes), because the
predictor reads it from the model's meta (:func:`agegender.artifact.gender_labels`).

::

    agegender calibrate accurate --data runs/val.csv --out calibrated.onnx
    agegender predict photos/ --model calibrated.onnx

Rules (``rule``), both scored on sklearn's :func:`~sklearn.metrics.roc_curve` (every
distinct threshold, not a grid), ties broken towards 0.5:

- ``equal-recall`` (default): female recall as close as possible to male recall;
- ``balanced-accuracy``: the mean of the two recalls as high as possible (sklearn's
  ``TunedThresholdClassifierCV`` default objective).

The photos go through the predictor's face path
(:func:`~agegender.evaluate.photos.predict_photos`: detector, alignment, crop, the runtime
the file runs on), so the threshold is chosen on the
probabilities users get. Photos without a face or a gender label do not take part.
The written file is the same kind as the source (``.onnx``, ``.pt`` or ``.ckpt``), with
``gender_decision`` added to its meta; ``agegender export`` carries it on from a ``.ckpt``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from agegender.artifact import GENDER_THRESHOLD, gender_labels

RULES = ("equal-recall", "balanced-accuracy")

#: Fewest validation faces of each gender a threshold may be chosen on.
MIN_FACES_PER_GENDER = 20

__all__ = [
    "MIN_FACES_PER_GENDER",
    "RULES",
    "calibrate_model",
    "check_rule",
    "choose_threshold",
    "recalls_at",
    "write_with_meta",
]


def check_rule(rule: str) -> str:
    """``rule`` if it is one of :data:`RULES`, else ``ValueError`` naming the choices."""
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose {' or '.join(RULES)}")
    return rule


def recalls_at(y: np.ndarray, p_female: np.ndarray, threshold: float) -> dict[str, float]:
    """Female and male recall and accuracy of :func:`gender_labels` at ``threshold``."""
    pred = gender_labels(p_female, threshold)
    return {
        "threshold": float(threshold),
        "accuracy": float((pred == y).mean()),
        "female_recall": float((pred[y == 1] == 1).mean()),
        "male_recall": float((pred[y == 0] == 0).mean()),
    }


def choose_threshold(
    y_true: Any, p_female: Any, rule: str = "equal-recall", where: str = "data"
) -> dict[str, Any]:
    """The P(female) threshold ``rule`` picks on labelled faces (1 female, 0 male; rows
    without a label or a probability are left out), with the recalls there at it and at
    0.5. Raises ``ValueError`` (naming ``where``) when either gender has fewer than
    :data:`MIN_FACES_PER_GENDER` faces or the rule is unknown."""
    from sklearn.metrics import roc_curve

    check_rule(rule)
    y = pd.to_numeric(pd.Series(np.asarray(y_true, dtype=object)), errors="coerce").to_numpy()
    p = pd.to_numeric(pd.Series(np.asarray(p_female, dtype=object)), errors="coerce").to_numpy()
    keep = np.isin(y, (0, 1)) & np.isfinite(p)
    y, p = y[keep].astype(np.int64), p[keep]
    n_f, n_m = int((y == 1).sum()), int((y == 0).sum())
    if min(n_f, n_m) < MIN_FACES_PER_GENDER:
        raise ValueError(
            f"{where}: a threshold needs at least {MIN_FACES_PER_GENDER} faces of each "
            f"gender with a prediction; got {n_f} female and {n_m} male"
        )
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)  # female when p >= thr[i]
    # p >= thr[i] is p > t for any t in (thr[i + 1], thr[i]): take the midpoint
    lower = np.append(thr[1:], min(0.0, float(thr[-1]) - 1e-6))
    t = (thr + lower) / 2
    usable = np.isfinite(thr) & (t > 0.0) & (t < 1.0)
    female, male = tpr[usable], 1.0 - fpr[usable]
    t = t[usable]
    score = -np.abs(female - male) if rule == "equal-recall" else (female + male) / 2
    best = np.flatnonzero(np.isclose(score, score.max(), rtol=0, atol=1e-12))
    i = best[np.argmin(np.abs(t[best] - GENDER_THRESHOLD))]
    threshold = _short(float(t[i]), float(lower[usable][i]), float(thr[usable][i]))
    return {
        "threshold": threshold,
        "rule": rule,
        "faces": int(len(y)),
        "female_faces": n_f,
        "male_faces": n_m,
        "at_threshold": recalls_at(y, p, threshold),
        "at_0.5": recalls_at(y, p, GENDER_THRESHOLD),
    }


def _short(t: float, low: float, high: float) -> float:
    """``t`` with the fewest decimals (2 to 6) that still lies in ``(low, high)``, the
    interval of thresholds that make the same decisions: a readable number, and the same
    one from runtimes whose probabilities differ in the 6th decimal."""
    for digits in range(2, 7):
        r = round(t, digits)
        if low < r < high and 0.0 < r < 1.0:
            return r
    return t


def _replace(path: Path, write: Any) -> None:
    """Write through a temporary file beside ``path``, then rename: never half a model."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_with_meta(source: str | os.PathLike, out: str | os.PathLike, meta: Mapping) -> Path:
    """Copy the model file ``source`` to ``out`` (same kind: ``.onnx``, ``.pt``/``.pth``
    or ``.ckpt``) with its meta replaced by ``meta``; the weights are untouched."""
    from agegender.artifact import parse_meta, plain_meta, read_checkpoint
    from agegender.errors import torch_load

    def kind_of(path: Path) -> str:
        return ".pt" if path.suffix == ".pth" else path.suffix

    src, dst = Path(source), Path(out)
    kind = kind_of(src)
    if kind_of(dst) != kind:
        raise ValueError(f"{dst}: write a {kind} model to a {kind} file (the source is {src})")
    parse_meta(meta)  # validate before writing
    plain = plain_meta(meta)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if kind == ".onnx":
        from agegender.infer.onnx import with_meta

        data = with_meta(src.read_bytes(), plain)
        _replace(dst, lambda p: p.write_bytes(data))
        return dst
    import torch

    if kind == ".pt":
        blob = torch_load(src)
        blob["meta"] = plain
    elif kind == ".ckpt":
        blob = read_checkpoint(src)
        stored = {k: v for k, v in plain.items() if k not in ("config", "epoch", "global_step")}
        blob["agegender"] = {**blob.get("agegender", {}), **stored}
        hparams = blob.get("hyper_parameters")
        if isinstance(hparams, dict) and isinstance(hparams.get("meta"), dict):
            hparams["meta"] = {**hparams["meta"], **stored}
    else:
        raise ValueError(f"{src}: calibrate writes .onnx, .pt or .ckpt models")
    _replace(dst, lambda p: torch.save(blob, p))
    return dst


def calibrate_model(
    model: str,
    data: str | Path,
    out: str | Path,
    *,
    format: str = "auto",
    rule: str = "equal-recall",
    detector: str = "blazeface",
    limit: int | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Predict ``data`` (labelled validation photos) with ``model`` (a bundled name or a
    file) through the face path, choose the gender threshold by ``rule`` and write the
    model to ``out`` with ``gender_decision`` in its meta (the decision, returned too)."""
    from agegender.data.prepare import read_rows
    from agegender.evaluate.photos import predict_photos
    from agegender.infer import Predictor
    from agegender.infer.predictor import _resolve_model

    check_rule(rule)
    source = _resolve_model(model, "auto")
    predictor = Predictor.load(source, detector=detector, threads=threads)
    try:
        if not predictor.spec.gender:
            raise ValueError(f"{source}: the model does not predict gender")
        meta = dict(predictor.meta)
        previous = predictor.spec.gender_threshold
        rows = read_rows(data, format, audit=False, limit=limit, seed=0)
        frame, _ = predict_photos(predictor, rows.table)
    finally:
        predictor.close()
    if "p_female" not in frame.columns or "gender" not in frame.columns:
        raise ValueError(f"{data}: no gender labels or no face found to choose a threshold on")
    decision = choose_threshold(frame["gender"], frame["p_female"], rule, where=str(data))
    decision |= {
        "chosen_on": str(data),
        "detector": detector,
        "photos": int(len(frame)),
        "faces_found": int(frame["face_found"].sum()),
        "previous_threshold": previous,
    }
    meta.pop("config", None)
    meta["gender_decision"] = decision
    path = write_with_meta(source, out, meta)
    return {
        "source": str(source),
        "out": str(path),
        "row_counts": rows.counts.to_dict(),
        **decision,
    }
