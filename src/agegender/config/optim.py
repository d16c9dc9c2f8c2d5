"""The ``optim`` section (the optimiser, :class:`OptimConfig`) and the ``schedule`` section
(the learning rate per step with a warm-up, :class:`ScheduleConfig`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from agegender.config.base import _Section, _within


class OptimConfig(_Section):
    name: Literal["adam", "adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False


class ScheduleConfig(_Section):
    """Learning-rate schedule per optimiser step, with a linear warm-up."""

    name: Literal["none", "cosine", "step"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    step_size: int = Field(10, ge=1, description="epochs between decays (step)")
    gamma: float = Field(0.1, gt=0, le=1, description="decay factor (step)")
    min_lr_factor: float = Field(0.0, description="cosine floor as a fraction of lr")

    _min = field_validator("min_lr_factor")(_within(0, 1))
