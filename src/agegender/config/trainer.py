"""The ``trainer`` section (hardware: Lightning accelerator, devices, nodes, strategy and
CPU knobs, :class:`TrainerConfig`) and the ``logger`` section (:class:`LoggerConfig`)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from agegender.config.base import _one_of, _Section

STRATEGIES = (
    "auto",
    "ddp",
    "ddp_spawn",
    "ddp_fork",
    "ddp_notebook",
    "ddp_find_unused_parameters_true",
    "fsdp",
    "deepspeed",
    "single_device",
)


class TrainerConfig(_Section):
    """Hardware: Lightning accelerator / devices / nodes / strategy, and CPU speed knobs."""

    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: int | str | list[int] = Field(1, description="per node; more than 1 -> DDP")
    num_nodes: int = Field(1, ge=1)
    strategy: str = "auto"
    channels_last: bool = Field(True, description="NHWC tensors: faster convs on CPU and GPU")
    compile: bool = False
    threads: int | None = Field(None, ge=1, description="torch.set_num_threads")

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, v: str) -> str:
        return _one_of("strategy", v, list(STRATEGIES))

    @field_validator("devices")
    @classmethod
    def _devices(cls, v: int | str | list[int]) -> int | str | list[int]:
        if isinstance(v, str) and v != "auto" and not re.fullmatch(r"-1|\d+(,\d+)*,?", v):
            raise ValueError("must be 'auto', a count, or a list of device ids")
        if isinstance(v, int) and v == 0 or isinstance(v, int) and v < -1:
            raise ValueError("must be >= 1 (or -1 for all)")
        return v


class LoggerConfig(_Section):
    """Loggers; none uses the network unless asked (mlflow to a URI, wandb online)."""

    csv: bool = True
    tensorboard: bool = True
    mlflow: bool = False
    mlflow_tracking_uri: str | None = Field(None, description="default: file:<run>/mlruns")
    wandb: bool = False
    wandb_project: str = "agegender"
    wandb_offline: bool = True
