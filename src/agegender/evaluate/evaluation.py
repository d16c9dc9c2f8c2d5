"""Evaluate a checkpoint on a dataset: metrics, fairness table, per-image predictions.

>>> from agegender.evaluate import evaluate_checkpoint
>>> res = evaluate_checkpoint("runs/default/checkpoints/best.ckpt", "../shared/data/utkface",
...                           tta="flip", out="runs/default/eval/results.json")
>>> res["metrics"]["gender_accuracy"], res["fairness"][0]["n"]

Files: ``results.json`` (this dict) and, beside it, the per-image predictions CSV
(:func:`predictions_path`: ``predictions.csv`` next to ``results.json``, else
``<stem>.predictions.csv``) with the true labels and every predicted probability.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from agegender.evaluate.metrics import (
    confusion,
    fairness_table,
    gender_reliability,
    prediction_metrics,
)
from agegender.fileio import atomic_path


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types; NaN/inf become null, numpy scalars/arrays become numbers/lists."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, pd.DataFrame):
        return to_jsonable(obj.to_dict(orient="records"))
    if isinstance(obj, np.bool_ | bool):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating | float):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, Path):
        return str(obj)
    if obj is pd.NA:
        return None
    return obj


def write_json(obj: Any, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(to_jsonable(obj), indent=2), encoding="utf-8")
    return path


def predictions_path(results_json: str | Path) -> Path:
    """Where the per-image predictions CSV of a results JSON goes."""
    p = Path(results_json)
    name = "predictions.csv" if p.stem == "results" else f"{p.stem}.predictions.csv"
    return p.with_name(name)


def run_dir_of(checkpoint: str | Path) -> Path:
    """The run directory of a checkpoint (the parent of ``checkpoints/``)."""
    p = Path(checkpoint).resolve()
    return p.parent.parent if p.parent.name == "checkpoints" else p.parent


def ok_rows(pred: pd.DataFrame) -> np.ndarray:
    """Rows of a predictions frame without an ``error`` (empty or missing)."""
    if "error" not in pred.columns:
        return np.ones(len(pred), dtype=bool)
    err = pred["error"]
    return (err.isna() | (err.astype(str) == "")).to_numpy()


def summarise_predictions(pred: pd.DataFrame) -> dict[str, Any]:
    """Metrics, fairness table, reliability bins and confusion matrices of a predictions
    frame (the part of the results that depends only on the predictions)."""
    out: dict[str, Any] = {
        "metrics": prediction_metrics(pred),
        "fairness": fairness_table(pred).to_dict(orient="records"),
    }
    ok = pred[ok_rows(pred)]
    out["gender_reliability"] = gender_reliability(ok)
    out["confusion"] = {}
    for what in ("gender", "age_group"):
        cm = confusion(ok, what)
        if cm is not None:
            out["confusion"][what] = cm.tolist()
    return out


def _intervals(pred: pd.DataFrame) -> dict[str, dict]:
    """:func:`~agegender.evaluate.intervals.photo_intervals` of a predictions frame, a row
    that failed (no readable image) counting as a photo without a face."""
    from agegender.evaluate.intervals import photo_intervals

    return photo_intervals(pred.assign(face_found=ok_rows(pred)))


def evaluate_model(
    model: Any,
    meta: dict,
    table: pd.DataFrame,
    *,
    tta: str = "none",
    detector: str = "none",
    batch_size: int = 64,
    cache_dir: str | None = None,
    workers: int | None = None,
    device: str | None = None,
    progress: bool = False,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Run ``model`` over ``table``; returns ``(results, predictions frame)``."""
    from agegender.evaluate.predict_batch import predict_table

    pred, info = predict_table(
        model,
        meta,
        table,
        tta=tta,
        detector=detector,
        batch_size=batch_size,
        cache_dir=cache_dir,
        workers=workers,
        device=device,
        progress=progress,
    )
    failed = pred[~ok_rows(pred)]
    results: dict[str, Any] = {
        "model": meta.get("arch"),
        "tasks": meta.get("tasks"),
        "preprocessing": {
            k: meta["preprocessing"][k] for k in ("resize", "input_size", "mean", "std")
        },
        "tta": tta,
        "detector": detector,
        **{k: info[k] for k in ("n_images", "n_evaluated", "n_failed", "no_face")},
        "failed": [f"{p}: {e}" for p, e in failed[["path", "error"]].head(20).to_numpy()],
        **summarise_predictions(pred),
        "intervals": _intervals(pred),
        "timing": {
            k: info[k]
            for k in (
                "device",
                "views",
                "load_seconds",
                "model_seconds",
                "seconds_per_image",
                "images_per_second",
            )
        },
    }
    return results, pred


def evaluate_checkpoint(
    ckpt: str | Path,
    data: str | Path,
    format: str = "auto",
    tta: str = "none",
    detector: str = "none",
    batch_size: int = 64,
    *,
    out: str | Path | None = None,
    limit: int | None = None,
    seed: int = 0,
    cache_dir: str | None = None,
    workers: int | None = None,
    device: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate a training checkpoint on a dataset read by ``read_dataset(data, format)``.

    Preprocessing follows the checkpoint's ``meta`` (resize, centre crop, mean/std);
    ``tta`` is none | flip | oversample, ``detector`` none | haar. ``limit`` evaluates a
    random sample of that many faces (``seed``). With ``out`` (a ``.json`` path) the
    results and the per-image predictions CSV (:func:`predictions_path`) are written.
    Returns the results dict (``metrics``, ``fairness``, ``gender_reliability``,
    ``confusion``, ``timing``, counts, ``row_counts``: the dataset's rows read, kept =
    evaluated, and rejected by reason, ``predictions_csv``).
    Raises ``ValueError``/``FileNotFoundError`` (one line, naming the file) on bad input.
    """
    from agegender.artifact import load_model
    from agegender.data.prepare import read_rows, require_images
    from agegender.evaluate.tta import check_mode
    from agegender.infer.detector import check_detector

    check_mode(tta)
    check_detector(detector)
    model, meta = load_model(ckpt)
    rows = read_rows(data, format, audit=False, limit=limit, seed=seed)
    result = rows.result
    started = time.perf_counter()
    results, pred = evaluate_model(
        model,
        meta,
        rows.table,
        tta=tta,
        detector=detector,
        batch_size=batch_size,
        cache_dir=cache_dir,
        workers=workers,
        device=device,
        progress=progress,
    )
    rows.counts.reject("unreadable", results["n_failed"])
    require_images(rows, rows.table, pred["error"].to_numpy())
    results = {
        "checkpoint": str(Path(ckpt).resolve()),
        "data": str(data),
        "format": result.format,
        "label_problems": len(result.problems),
        "row_counts": rows.counts.to_dict(),
        **results,
        "seconds": round(time.perf_counter() - started, 3),
        "predictions_csv": None,
    }
    if out is not None:
        write_results(results, pred, out)
    return results


def write_results(results: dict, predictions: pd.DataFrame, out: str | Path) -> Path:
    """Write ``results`` to ``out`` (JSON) and the per-image ``predictions`` beside it
    (:func:`predictions_path`); ``results["predictions_csv"]`` names the CSV."""
    out = Path(out)
    csv_path = predictions_path(out)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    predictions.to_csv(csv_path, index=False)
    results["predictions_csv"] = str(csv_path)
    return write_json(results, out)


__all__ = [
    "evaluate_checkpoint",
    "evaluate_model",
    "ok_rows",
    "predictions_path",
    "run_dir_of",
    "summarise_predictions",
    "to_jsonable",
    "write_json",
    "write_results",
]
