"""Evaluation: metrics, test-time augmentation, checkpoint evaluation, k-fold CV, reports.

>>> from agegender.evaluate import evaluate_checkpoint, run_cv, make_report
>>> res = evaluate_checkpoint("runs/x/checkpoints/best.ckpt", "../shared/data/utkface")
>>> cv = run_cv("configs/default.yaml", folds=5, out_dir="runs/default-cv")
>>> make_report(["runs/default-cv"], "reports/default")

Modules: :mod:`~agegender.evaluate.metrics` (metrics from labels and probabilities, the
fairness table, calibration), :mod:`~agegender.evaluate.tta` (flip / over-sampling),
:mod:`~agegender.evaluate.predict_batch` (a model over a table in batches),
:mod:`~agegender.evaluate.evaluation` (a checkpoint on a dataset),
:mod:`~agegender.evaluate.cv` (k-fold cross-validation, mean ± std) and
:mod:`~agegender.evaluate.report` (figures and a Markdown report).
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "evaluate_checkpoint": "agegender.evaluate.evaluation",
    "evaluate_model": "agegender.evaluate.evaluation",
    "predict_table": "agegender.evaluate.predict_batch",
    "prediction_metrics": "agegender.evaluate.metrics",
    "fairness_table": "agegender.evaluate.metrics",
    "run_cv": "agegender.evaluate.cv",
    "make_report": "agegender.evaluate.report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:  # lazy: importing the package stays cheap
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(name)
