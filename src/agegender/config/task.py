"""What a run learns: the ``task`` section (gender and/or age, :class:`TaskConfig`), the
per-epoch metric names training logs for it (:func:`logged_metrics`, from the vocabulary
in :mod:`agegender.metric_names`), and the ``distill`` section (a teacher's outputs as
soft targets, :class:`DistillConfig`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from agegender.config.base import _resolve_weights, _Section, _within
from agegender.metric_names import logged_metrics as vocabulary_names

AgeMode = Literal["none", "groups", "regression", "dex"]


class TaskConfig(_Section):
    """What to predict: gender and/or age (8 groups, years by L1 regression, or DEX)."""

    gender: bool = True
    age: AgeMode = "groups"
    gamma: float = Field(0.5, description="L = gamma*L_gender + (1-gamma)*L_age")
    age_sigma: float = Field(
        0.0,
        ge=0,
        description="dex only: a Gaussian target over the years with this sigma (label "
        "distribution learning) instead of the one year; 0 = DEX's one-hot",
    )
    age_l1: float = Field(
        0.0,
        ge=0,
        description="dex only: add this weight x the expected age's L1 error in years "
        "(DLDL-v2's expectation loss)",
    )

    _gamma = field_validator("gamma")(_within(0, 1))

    @model_validator(mode="after")
    def _some(self) -> TaskConfig:
        if not self.gender and self.age == "none":
            raise ValueError("task: nothing to learn (task.gender is false and task.age is none)")
        for key in ("age_sigma", "age_l1"):
            if getattr(self, key) > 0 and self.age != "dex":
                raise ValueError(f"task.{key}: only for task.age: dex (got {self.age!r})")
        return self


class DistillConfig(_Section):
    """Knowledge distillation: a trained teacher's outputs on every training face are soft
    targets for this model (the student), beside the faces' own labels.

    ``L = (1 - weight) * L_labels + weight * L_teacher``, where ``L_teacher`` is the
    task-weighted KL divergence from the teacher's softened distributions (``temperature``;
    times ``temperature**2``, Hinton et al. 2015) for gender and DEX / group age. Faces with
    no label for a task (CelebA has no ages) still learn that task from the teacher.
    ``teacher``: a ``.ckpt`` or ``.pt`` with the same tasks, or a bundled model's name;
    ``{fold}`` in the path is the cross-validation fold (``agegender cv``) or ``data.fold``.
    """

    teacher: str
    weight: float = Field(0.5, description="share of the loss from the teacher's outputs")
    temperature: float = Field(1.0, gt=0, description="softens teacher and student alike")

    _paths = field_validator("teacher")(_resolve_weights)
    _weight = field_validator("weight")(_within(0, 1))


def logged_metrics(task: TaskConfig) -> list[str]:
    """Per-epoch metric names the training module logs for ``task`` (from the metric
    vocabulary in :mod:`agegender.metric_names`)."""
    return vocabulary_names(task.gender, task.age)
