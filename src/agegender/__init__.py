"""agegender: train, evaluate and run face gender and age classifiers.

>>> from agegender import Predictor
>>> Predictor.load().predict("photo.jpg").faces      # the bundled model, offline
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from agegender.infer.predictor import Predictor
    from agegender.infer.results import FaceResult, ImageResult

__all__ = ["FaceResult", "ImageResult", "Predictor", "__version__"]


def __getattr__(name: str) -> Any:
    """Import the predictor lazily, so ``import agegender`` (and the CLI) stays light."""
    if name in ("Predictor", "FaceResult", "ImageResult"):
        import agegender.infer

        return getattr(agegender.infer, name)
    raise AttributeError(f"module 'agegender' has no attribute {name!r}")
