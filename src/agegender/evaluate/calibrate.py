"""Choose a model's gender threshold on labelled validation faces and write it into the model.

A model calls a face female when P(female) is above a threshold: 0.5 unless its meta says
otherwise. A model trained on one population can be shifted on others (ours, trained on
UTKFace, calls too many women men on FairFace), and the threshold that gives women and
men equal recall **on held-out faces of the training population** is a cheap, honest
correction: it is chosen on validation faces, never on the test set, and applied unchanged
everywhere else (``predict``, ``evaluate``, ``serve``, both runtimes), because the
predictor reads it from the model's meta (:func:`agegender.readout.gender_labels`).

::

    agegender calibrate accurate --data runs/val.csv --out calibrated.onnx
    agegender predict photos/ --model calibrated.onnx

Rules (``rule``), both scored on sklearn's :func:`~sklearn.metrics.roc_curve` (every
distinct threshold, not a grid), ties broken towards 0.5:

- ``equal-recall`` (default): female recall as close as possible to male recall;
- ``balanced-accuracy``: the mean of the two recalls as high as possible (sklearn's
  ``TunedThresholdClassifierCV`` default objective).

**By predicted age** (``age_bands``, e.g. ``(13, 20)``: children under 13, teenagers 13-19,
adults 20+, by the model's *own* predicted age, the only age known at prediction time):
the rule is applied again to the validation faces of each band (:func:`choose_age_bands`),
so women's and men's recall are equalised within each band, not only over all faces. A
band with fewer than ``min_band_faces`` (default :data:`MIN_FACES_PER_BAND`) faces of
either gender keeps the global threshold, and its entry says so (``fallback``).

**One story per face** (``probability``): the probability every output reports is moved
so the decision falls at 0.5: ``P(female) = sigmoid(slope * (logit(p) - logit(t)))``,
``p`` the network's output, ``t`` the face's threshold (its band's, or the global one).
``platt`` (default) fits ``slope`` on the validation faces by maximum likelihood (Platt
scaling whose intercept is tied to the decision, so the labels are the rule's); ``shift``
keeps ``slope`` 1. Log loss and expected calibration error on the validation faces of the
network's output, the shift alone and the reported probability are stored beside it
(:func:`fit_probability`).

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

from agegender.readout import (
    GENDER_THRESHOLD,
    GenderDecision,
    gender_labels,
    gender_probability,
    parse_decision,
)

RULES = ("equal-recall", "balanced-accuracy")

#: Fewest validation faces of each gender a threshold may be chosen on.
MIN_FACES_PER_GENDER = 20

#: The predicted-age bands of ``--by-age``: children (< 13), teenagers (13-19), adults (20+).
DEFAULT_AGE_BANDS: tuple[float, ...] = (13.0, 20.0)

#: Fewest validation faces of each gender an age band's own threshold is chosen on; a band
#: with fewer keeps the global threshold (a 2-point step in recall at 50 faces).
MIN_FACES_PER_BAND = 50

#: How the reported probability is fitted: the slope by maximum likelihood, or 1.
PROBABILITY_FITS = ("platt", "shift")

__all__ = [
    "DEFAULT_AGE_BANDS",
    "MIN_FACES_PER_BAND",
    "MIN_FACES_PER_GENDER",
    "PROBABILITY_FITS",
    "RULES",
    "calibrate_model",
    "check_rule",
    "choose_age_bands",
    "choose_threshold",
    "fit_probability",
    "parse_age_bands",
    "recalls_at",
    "write_with_meta",
]


def check_rule(rule: str) -> str:
    """``rule`` if it is one of :data:`RULES`, else ``ValueError`` naming the choices."""
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose {' or '.join(RULES)}")
    return rule


def parse_age_bands(text: str) -> tuple[float, ...]:
    """``"13,20"`` -> ``(13.0, 20.0)``: the edges (years of predicted age) between bands,
    increasing and above 0; ``ValueError`` saying what is wrong."""
    try:
        edges = tuple(float(v) for v in text.replace(" ", "").split(",") if v != "")
    except ValueError:
        raise ValueError(f"{text!r}: give ages in years separated by commas, e.g. 13,20") from None
    if not edges or not all(np.isfinite(edges)):
        raise ValueError(f"{text!r}: give ages in years separated by commas, e.g. 13,20")
    if not all(a < b for a, b in zip((0.0, *edges), edges, strict=False)):
        raise ValueError(f"{text!r}: the ages must be above 0 and increasing")
    return edges


def _mean(x: np.ndarray) -> float | None:
    return float(x.mean()) if len(x) else None


def recalls_at(
    y: np.ndarray, p_female: np.ndarray, threshold: float | GenderDecision, age: Any = None
) -> dict[str, Any]:
    """Female and male recall and accuracy of :func:`gender_labels` at ``threshold`` (a
    number, or a decision with age bands and the faces' predicted ``age``); a recall of a
    gender without faces is None."""
    pred = gender_labels(p_female, threshold, age)
    t = threshold.threshold if isinstance(threshold, GenderDecision) else threshold
    return {
        "threshold": float(t),
        "accuracy": _mean(pred == y),
        "female_recall": _mean(pred[y == 1] == 1),
        "male_recall": _mean(pred[y == 0] == 0),
    }


def _labelled(y_true: Any, *columns: Any) -> tuple[np.ndarray, ...]:
    """Labels (0/1) and float columns, without the rows lacking a label or a probability
    (the first column)."""
    y = pd.to_numeric(pd.Series(np.asarray(y_true, dtype=object)), errors="coerce").to_numpy()
    cols = [
        pd.to_numeric(pd.Series(np.asarray(c, dtype=object)), errors="coerce").to_numpy(float)
        for c in columns
    ]
    keep = np.isin(y, (0, 1)) & np.isfinite(cols[0])
    return (y[keep].astype(np.int64), *(c[keep] for c in cols))


def choose_threshold(
    y_true: Any, p_female: Any, rule: str = "equal-recall", where: str = "data"
) -> dict[str, Any]:
    """The P(female) threshold ``rule`` picks on labelled faces (1 female, 0 male; rows
    without a label or a probability are left out), with the recalls there at it and at
    0.5. Raises ``ValueError`` (naming ``where``) when either gender has fewer than
    :data:`MIN_FACES_PER_GENDER` faces or the rule is unknown."""
    from sklearn.metrics import roc_curve

    check_rule(rule)
    y, p = _labelled(y_true, p_female)
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


def choose_age_bands(
    y_true: Any,
    p_female: Any,
    age: Any,
    edges: tuple[float, ...] = DEFAULT_AGE_BANDS,
    *,
    rule: str = "equal-recall",
    global_threshold: float,
    min_faces: int = MIN_FACES_PER_BAND,
) -> dict[str, Any]:
    """A threshold per band of predicted ``age`` (years; bands split at ``edges``), each
    chosen by ``rule`` on that band's labelled faces (:func:`choose_threshold`), or
    ``global_threshold`` for a band with fewer than ``min_faces`` faces of either gender
    (``fallback`` says why). The ``age_bands`` entry of a meta's ``gender_decision``."""
    if min_faces < MIN_FACES_PER_GENDER:
        raise ValueError(f"min_faces must be at least {MIN_FACES_PER_GENDER}, got {min_faces}")
    y, p, years = _labelled(y_true, p_female, age)
    names = GenderDecision(age_edges=edges, band_thresholds=(0.5,) * (len(edges) + 1))
    band = np.searchsorted(np.asarray(edges), np.nan_to_num(years, nan=-1.0), side="right")
    band[~np.isfinite(years)] = -1  # no predicted age: no band's faces
    bands = []
    for i, name in enumerate(names.band_names()):
        m = band == i
        yb, pb = y[m], p[m]
        n_f, n_m = int((yb == 1).sum()), int((yb == 0).sum())
        entry: dict[str, Any] = {
            "predicted_age": name,
            "from": 0.0 if i == 0 else float(edges[i - 1]),
            "to": float(edges[i]) if i < len(edges) else None,
            "faces": int(m.sum()),
            "female_faces": n_f,
            "male_faces": n_m,
        }
        if min(n_f, n_m) >= min_faces:
            t = choose_threshold(yb, pb, rule, where=f"predicted age {name}")["threshold"]
            entry |= {"threshold": t, "fallback": None}
        else:
            entry |= {
                "threshold": float(global_threshold),
                "fallback": f"fewer than {min_faces} faces of a gender ({n_f} female, "
                f"{n_m} male): the global threshold",
            }
        entry["at_threshold"] = recalls_at(yb, pb, entry["threshold"])
        entry["at_global"] = recalls_at(yb, pb, global_threshold)
        bands.append(entry)
    return {
        "by": "the model's predicted age (years)",
        "edges": [float(e) for e in edges],
        "rule": rule,
        "min_faces_per_gender": int(min_faces),
        "fallbacks": sum(b["fallback"] is not None for b in bands),
        "bands": bands,
    }


def _probability_quality(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    from agegender.evaluate.metrics import gender_metrics

    m = gender_metrics(y, p)
    return {"log_loss": m["gender_log_loss"], "ece": m["gender_ece"]}


def fit_probability(
    y_true: Any, p_female: Any, decision: GenderDecision, age: Any = None, fit: str = "platt"
) -> dict[str, Any]:
    """The reported probability of ``decision`` (its thresholds; ``slope`` is fitted here)
    on labelled faces with the network's ``p_female`` and predicted ``age``: ``fit`` is
    ``platt`` (the slope of ``sigmoid(slope * (logit(p) - logit(t)))`` by maximum
    likelihood, so the decision stays the rule's) or ``shift`` (slope 1). Returns the
    ``probability`` entry of a meta's ``gender_decision``, with the log loss and ECE on
    these faces of the network's output, the shift alone and the reported probability."""
    from scipy.optimize import minimize_scalar
    from scipy.special import log_expit, logit

    if fit not in PROBABILITY_FITS:
        raise ValueError(f"unknown probability fit {fit!r}; choose {' or '.join(PROBABILITY_FITS)}")
    y, p, years = _labelled(
        y_true, p_female, np.full(len(np.asarray(p_female)), np.nan) if age is None else age
    )
    shifted = GenderDecision(decision.threshold, 1.0, decision.age_edges, decision.band_thresholds)
    slope = 1.0
    if fit == "platt":
        t = shifted.thresholds(len(p), years)
        x = logit(np.clip(p, 1e-12, 1 - 1e-12)) - logit(t)
        sign = np.where(y == 1, 1.0, -1.0)

        def nll(log_a: float) -> float:
            return float(-np.mean(log_expit(sign * np.exp(log_a) * x)))

        best = minimize_scalar(nll, bounds=(-5.0, 5.0), method="bounded", options={"xatol": 1e-6})
        slope = float(f"{np.exp(best.x):.4g}")
    fitted = GenderDecision(decision.threshold, slope, decision.age_edges, decision.band_thresholds)
    return {
        "method": fit,
        "slope": slope,
        "formula": "P(female) = sigmoid(slope * (logit(p) - logit(t))), p the network's "
        "output, t the face's threshold (its predicted-age band's, else the global one)",
        "faces": int(len(y)),
        "network": _probability_quality(y, p),
        "shift": _probability_quality(y, gender_probability(p, shifted, years)),
        "reported": _probability_quality(y, gender_probability(p, fitted, years)),
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
    age_bands: tuple[float, ...] | None = None,
    min_band_faces: int = MIN_FACES_PER_BAND,
    probability: str = "platt",
    detector: str = "blazeface",
    limit: int | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Predict ``data`` (labelled validation photos) with ``model`` (a bundled name or a
    file) through the face path, choose the gender threshold by ``rule`` (and one per band
    of predicted age split at ``age_bands``, see :func:`choose_age_bands`), fit the
    reported probability (:func:`fit_probability`) and write the model to ``out`` with
    ``gender_decision`` in its meta (the decision, returned too). The network's own
    P(female) is what is calibrated, whatever decision ``model`` carried before."""
    from agegender.bundled import resolve_model
    from agegender.data.prepare import read_rows
    from agegender.evaluate.photos import predict_photos
    from agegender.infer import Predictor

    check_rule(rule)
    if probability not in PROBABILITY_FITS:
        raise ValueError(f"unknown probability fit {probability!r}; choose platt or shift")
    if age_bands is not None and min_band_faces < MIN_FACES_PER_GENDER:
        raise ValueError(
            f"--min-band-faces must be at least {MIN_FACES_PER_GENDER}, got {min_band_faces}"
        )
    source = resolve_model(model, "auto")
    predictor = Predictor.load(source, detector=detector, threads=threads)
    try:
        if not predictor.spec.gender:
            raise ValueError(f"{source}: the model does not predict gender")
        if age_bands is not None and predictor.spec.age == "none":
            raise ValueError(
                f"{source}: the model does not predict age: no predicted-age bands (--age-bands)"
            )
        meta = dict(predictor.meta)
        previous = predictor.spec.gender_decision.describe()
        rows = read_rows(data, format, audit=False, limit=limit, seed=0)
        frame, _ = predict_photos(predictor, rows.table)
    finally:
        predictor.close()
    if "p_female_raw" not in frame.columns or "gender" not in frame.columns:
        raise ValueError(f"{data}: no gender labels or no face found to choose a threshold on")
    y, p = frame["gender"], frame["p_female_raw"]
    age = frame["pred_age"] if "pred_age" in frame.columns else None
    decision = choose_threshold(y, p, rule, where=str(data))
    if age_bands is not None:
        bands = choose_age_bands(
            y,
            p,
            age,
            tuple(age_bands),
            rule=rule,
            global_threshold=decision["threshold"],
            min_faces=min_band_faces,
        )
        decision["age_bands"] = bands
    chosen = parse_decision(decision)  # the thresholds, slope 1 for now
    decision["probability"] = fit_probability(y, p, chosen, age, probability)
    ys, ps, ages = _labelled(y, p, np.full(len(p), np.nan) if age is None else age)
    decision["at_decision"] = recalls_at(ys, ps, chosen, ages)
    decision |= {
        "chosen_on": str(data),
        "detector": detector,
        "photos": int(len(frame)),
        "faces_found": int(frame["face_found"].sum()),
        "previous_threshold": previous["threshold"],
        "previous": previous,
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
