"""The HTTP service (FastAPI + uvicorn) over :class:`agegender.infer.Predictor`."""

from agegender.serve.app import ServeSettings, create_app, serve

__all__ = ["ServeSettings", "create_app", "serve"]
