"""The metric vocabulary: every metric the project names, named once.

Training logs (``val/<logged>``), early-stopping monitors and the config's check of them,
the CV summary, report columns and the fairness table all take their names from
:data:`METRICS`. This module sits below the config schema and the evaluation package, so
both import it (the values themselves are computed in :mod:`agegender.evaluate.metrics`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Metric:
    """One metric, named once: its evaluation key, the short name training logs it under
    (``val/<logged>``, ``train/<logged>``, ``test/<logged>``; None: evaluation only), the
    label of report columns, how to show it and which tasks have it."""

    key: str
    label: str
    logged: str | None = None
    percent: bool = True
    higher_is_better: bool = True
    task: str = "gender"  # gender | age_group (any age head) | age (years: dex, regression)
    headline: bool = False  # a column of the CV summary and the comparison report
    digits: int = 1

    def fmt(self, value: float | None) -> str:
        """``value`` as shown in tables: percent with one decimal, years with two, ..."""
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return "–"
        return f"{value * 100:.{self.digits}f}" if self.percent else f"{value:.{self.digits}f}"


#: The metrics every part of the project names: training logs, early-stopping monitors,
#: the CV summary, report columns and the fairness table all come from this table.
METRICS: tuple[Metric, ...] = (
    Metric("gender_accuracy", "gender acc (%)", "gender_acc", headline=True),
    Metric("gender_balanced_accuracy", "gender balanced acc (%)"),
    Metric("gender_roc_auc", "gender ROC-AUC", percent=False, headline=True, digits=3),
    Metric(
        "gender_ece", "gender ECE", percent=False, higher_is_better=False, headline=True, digits=3
    ),
    Metric("age_group_exact", "age acc (%)", "age_acc", task="age_group", headline=True),
    Metric("age_group_one_off", "age 1-off (%)", "age_acc_1off", task="age_group", headline=True),
    Metric(
        "age_mae",
        "age MAE",
        "age_mae",
        percent=False,
        higher_is_better=False,
        task="age",
        headline=True,
        digits=2,
    ),
    Metric("age_cs5", "CS@5 (%)", task="age", headline=True),
)
METRIC = {m.key: m for m in METRICS}
#: Training's short names -> evaluation keys (``gender_acc`` -> ``gender_accuracy``).
LOGGED = {m.logged: m for m in METRICS if m.logged}
HEADLINE = tuple(m.key for m in METRICS if m.headline)


def has_task(metric: Metric, gender: bool, age: str) -> bool:
    """Whether a model with these tasks (``age``: none | groups | dex | regression) has it."""
    if metric.task == "gender":
        return gender
    if metric.task == "age_group":
        return age != "none"
    return age in ("dex", "regression")


def logged_metrics(gender: bool, age: str, stages: Sequence[str] = ("val", "train")) -> list[str]:
    """Per-epoch names training logs for these tasks (the loss first), stage by stage."""
    names = ["loss"] + [m.logged for m in METRICS if m.logged and has_task(m, gender, age)]
    return [f"{stage}/{n}" for stage in stages for n in names]


def from_logged(row: dict[str, float], stage: str = "val") -> dict[str, float]:
    """A training log row (``val/gender_acc`` ...) in evaluation keys (``gender_accuracy``)."""
    return {m.key: row[f"{stage}/{n}"] for n, m in LOGGED.items() if f"{stage}/{n}" in row}
