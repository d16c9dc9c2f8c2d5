"""Ready-to-use prediction: face detector + batched classifier, ONNX export, benchmarks.

>>> from agegender.infer import Predictor
>>> p = Predictor.load("model.onnx", detector="haar")
>>> p.predict("photo.jpg").faces[0].gender
"""

from agegender.infer.detector import Box, HaarDetector, NoneDetector, crop_face, make_detector
from agegender.infer.predictor import (
    AGE_GROUP_MIDPOINTS,
    FaceResult,
    ImageResult,
    ModelSpec,
    NoModelError,
    Predictor,
    load_torch_model,
    parse_meta,
    save_torch_model,
)

__all__ = [
    "AGE_GROUP_MIDPOINTS",
    "Box",
    "FaceResult",
    "HaarDetector",
    "ImageResult",
    "ModelSpec",
    "NoModelError",
    "NoneDetector",
    "Predictor",
    "crop_face",
    "load_torch_model",
    "make_detector",
    "parse_meta",
    "save_torch_model",
]
