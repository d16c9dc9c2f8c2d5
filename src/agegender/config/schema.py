"""The config schema: one pydantic model per YAML section, and the root :class:`Config`.

Every section forbids unknown keys and validates its defaults; path fields are expanded
against the config file's folder (:func:`agegender.config.paths.expand_path`). Each
section has its module, in file order: :mod:`.data`, :mod:`.model`, :mod:`.task` (task
and distill, and :func:`logged_metrics`), :mod:`.optim` (optim and schedule),
:mod:`.train`, :mod:`.augment` (the ops of a recipe and their ``- name: value``
shorthand), :mod:`.trainer` (trainer and logger), on what they share in :mod:`.base`.
This module holds the root :class:`Config` with its cross-section checks, and every
section's names are importable from it (and from :mod:`agegender.config`).
"""

from __future__ import annotations

import yaml
from pydantic import Field, model_validator

from agegender.config.augment import (
    AUGMENT_OPS,
    AugmentConfig,
    AugmentOp,
    ColorJitterOp,
    DownscaleOp,
    GaussianNoiseOp,
    GrayscaleOp,
    HFlipOp,
    RandomCropOp,
    RandomErasingOp,
    ResizedCropOp,
    RotationOp,
)
from agegender.config.base import _Section
from agegender.config.data import DataConfig, ExtraDataConfig
from agegender.config.model import ModelConfig
from agegender.config.optim import OptimConfig, ScheduleConfig
from agegender.config.task import AgeMode, DistillConfig, TaskConfig, logged_metrics
from agegender.config.train import EarlyStoppingConfig, TrainConfig
from agegender.config.trainer import STRATEGIES, LoggerConfig, TrainerConfig

__all__ = [
    "AUGMENT_OPS",
    "STRATEGIES",
    "AgeMode",
    "AugmentConfig",
    "AugmentOp",
    "ColorJitterOp",
    "Config",
    "DataConfig",
    "DistillConfig",
    "DownscaleOp",
    "EarlyStoppingConfig",
    "ExtraDataConfig",
    "GaussianNoiseOp",
    "GrayscaleOp",
    "HFlipOp",
    "LoggerConfig",
    "ModelConfig",
    "OptimConfig",
    "RandomCropOp",
    "RandomErasingOp",
    "ResizedCropOp",
    "RotationOp",
    "ScheduleConfig",
    "TaskConfig",
    "TrainConfig",
    "TrainerConfig",
    "logged_metrics",
]


class Config(_Section):
    """A whole training run."""

    name: str | None = None
    description: str = ""
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    logger: LoggerConfig = Field(default_factory=LoggerConfig)
    distill: DistillConfig | None = None

    @model_validator(mode="after")
    def _cross(self) -> Config:
        monitor = self.train.early_stopping.monitor
        allowed = logged_metrics(self.task)
        if monitor not in allowed:
            raise ValueError(
                f"train.early_stopping.monitor: {monitor!r} is not logged with "
                f"task.gender={self.task.gender}, task.age={self.task.age}; "
                f"choose one of {', '.join(allowed)}"
            )
        d = self.data
        if (
            self.augment.get("random_crop") is not None
            and d.size is not None
            and d.input_size is not None
            and d.input_size > d.size
        ):
            raise ValueError(
                f"augment.recipe: random_crop needs data.size ({d.size}) >= "
                f"data.input_size ({d.input_size})"
            )
        if self.model.precompute_blocks is not None:
            other = [op.op for op in self.augment.recipe if op.op != "hflip"]
            if other and not self.model.precompute_augmented:
                raise ValueError(
                    f"augment.recipe: {', '.join(other)} cannot run on stored features "
                    "(model.precompute_blocks): keep hflip only, or store augmented draws "
                    "with model.precompute_augmented: N"
                )
            if self.model.precompute_augmented and not other:
                raise ValueError(
                    "model.precompute_augmented: augment.recipe has nothing to draw beyond "
                    "hflip (the stored mirror view covers it)"
                )
            if self.distill is not None:
                raise ValueError("distill: not with model.precompute_blocks")
        if self.distill is not None and self.task.age == "regression":
            raise ValueError(
                "distill: a regression age has no distribution to distil; use task.age dex "
                "or groups"
            )
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
