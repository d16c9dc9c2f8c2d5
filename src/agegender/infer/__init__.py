"""Ready-to-use prediction: face detector + batched classifier, ONNX export, benchmarks.

>>> from agegender.infer import Predictor
>>> p = Predictor.load("model.onnx", detector="haar")
>>> p.predict("photo.jpg").faces[0].gender

The names below are loaded on first use, so importing a submodule (``agegender.infer.align``
from :mod:`agegender.artifact`, say) does not pull in the predictor.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "AGE_GROUP_MIDPOINTS": "agegender.readout",
    "ModelSpec": "agegender.artifact",
    "load_model": "agegender.artifact",
    "parse_meta": "agegender.artifact",
    "save_torch_model": "agegender.artifact",
    "Box": "agegender.infer.detector",
    "HaarDetector": "agegender.infer.detector",
    "NoneDetector": "agegender.infer.detector",
    "crop_face": "agegender.infer.detector",
    "make_detector": "agegender.infer.detector",
    "FaceResult": "agegender.infer.results",
    "ImageResult": "agegender.infer.results",
    "NoModelError": "agegender.infer.predictor",
    "Predictor": "agegender.infer.predictor",
    "predict_video": "agegender.infer.video",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'agegender.infer' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
