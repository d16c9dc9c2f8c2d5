"""The ``train`` section: epochs, batches, precision, checkpoints and early stopping
(:class:`TrainConfig`, :class:`EarlyStoppingConfig`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from agegender.config.base import _Section


class EarlyStoppingConfig(_Section):
    monitor: str = "val/loss"
    mode: Literal["min", "max"] | None = Field(None, description="default: max for *acc*")
    patience: int | None = Field(5, ge=1, description="null disables early stopping")
    min_delta: float = Field(0.0, ge=0)

    @property
    def resolved_mode(self) -> str:
        return self.mode or ("max" if "acc" in self.monitor else "min")


class TrainConfig(_Section):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int | None = Field(None, ge=1)
    precision: Literal["auto", "32", "32-true", "bf16-mixed", "16-mixed", "bf16-true"] = "auto"
    seed: int = 0
    deterministic: bool | Literal["warn"] = "warn"
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    num_workers: int = Field(0, ge=0, le=8)
    checkpoint_every_n_steps: int = Field(100, ge=0, description="also save last.ckpt (0: off)")
    keep_epoch_checkpoints: bool = Field(
        False, description="also keep checkpoints/epoch_N.ckpt for every epoch (N from 0)"
    )
    limit_train_batches: int | float | None = Field(None, gt=0)
    limit_val_batches: int | float | None = Field(None, gt=0)
    gradient_clip_val: float | None = Field(None, gt=0)
    accumulate_grad_batches: int = Field(1, ge=1)
    log_every_n_steps: int = Field(20, ge=1)
    progress_bar: bool = True
