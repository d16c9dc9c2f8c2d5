"""int8 ONNX models: the calibration faces, the quantized file, how far it is from float.

One code path for ``agegender export --quantize int8`` and ``scripts/bundle_default.py
--int8-calibration``: :func:`export_int8` samples calibration photos, cuts their faces with
the float model's own face path (:meth:`Predictor.face_batch`), quantizes with
:func:`agegender.infer.onnx.quantize_onnx_bytes`, writes the file and compares it with the
float model on those faces.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from agegender.readout import GenderDecision

__all__ = ["export_int8", "int8_agreement"]


def int8_agreement(
    a: Mapping[str, np.ndarray],
    b: Mapping[str, np.ndarray],
    threshold: float | GenderDecision,
    age_mode: str = "none",
) -> dict[str, Any]:
    """How far outputs ``b`` (int8) are from ``a`` (float) on the same faces: the share of
    gender decisions that agree (at ``threshold``, or through a model's
    :class:`~agegender.readout.GenderDecision`, each side at the band of its own predicted
    age, from its outputs of ``age_mode``), the largest change of the network's P(female),
    the mean change of the DEX age in years; ``summary`` says it in one line."""
    out: dict[str, Any] = {}
    parts = []
    if "gender_probs" in a:
        pa, pb = a["gender_probs"][:, 1], b["gender_probs"][:, 1]
        from agegender.readout import gender_labels, output_years

        ya, yb = output_years(a, age_mode), output_years(b, age_mode)
        same = gender_labels(pa, threshold, ya) == gender_labels(pb, threshold, yb)
        out["gender_agreement"] = float(np.mean(same))
        out["max_abs_dp_female"] = float(np.abs(pa - pb).max())
        parts.append(f"gender decisions agree on {out['gender_agreement']:.1%}")
        parts.append(f"max |dP(female)| {out['max_abs_dp_female']:.3f}")
    if "age_probs" in a:
        from agegender.readout import dex_years

        out["mean_abs_d_age"] = float(
            np.abs(dex_years(a["age_probs"]) - dex_years(b["age_probs"])).mean()
        )
        parts.append(f"mean |d age| {out['mean_abs_d_age']:.2f} years")
    out["summary"] = ", ".join(parts)
    return out


def export_int8(
    module: Any,
    meta: Mapping[str, Any],
    out: str | os.PathLike,
    photos: Sequence[str],
    *,
    n: int = 512,
    detector: str = "blazeface",
    opset: int = 17,
) -> dict[str, Any]:
    """Write ``module`` (float, with ``meta``) to ``out`` as an int8 ONNX model calibrated
    on the faces of ``n`` photos sampled (seeded) from ``photos`` (files, folders, lists).
    Returns the quantization record plus :func:`int8_agreement` on those faces and
    ``faces`` (their count). ``ValueError`` (one line) when the photos give fewer than 8
    faces or none exists."""
    from agegender.infer.inputs import collect_image_paths
    from agegender.infer.onnx import (
        OnnxModel,
        export_onnx_bytes,
        quantize_onnx_bytes,
        with_meta,
    )
    from agegender.infer.predictor import Predictor

    paths = sorted(collect_image_paths(photos))
    if not paths:
        raise ValueError(f"{' '.join(map(str, photos))}: no images")
    random.Random(0).shuffle(paths)
    float_p = Predictor.from_module(module, meta, runtime="torch", detector=detector)
    faces, _ = float_p.face_batch(paths[:n])
    if len(faces) < 8:
        raise ValueError(f"{' '.join(map(str, photos))}: only {len(faces)} faces found (need 8)")
    data, record = quantize_onnx_bytes(
        export_onnx_bytes(module, meta, opset), faces, meta, source=[str(p) for p in photos]
    )
    q = OnnxModel(data)
    spec = float_p.spec
    agreement = int8_agreement(float_p.classify(faces), q(faces), spec.gender_decision, spec.age)
    # the file's record says how close it is to float, too
    record = {**record, **agreement, "faces": int(len(faces))}
    meta = dict(q.meta)
    meta["weights"] = {**dict(meta.get("weights") or {}), "quantized": record}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(with_meta(data, meta))
    return record
