"""The Lightning pieces a run is assembled from: loggers, callbacks, and quieter logs.

:func:`agegender.train.run.train` builds its ``Trainer`` from these; sweeps reuse
:func:`quiet_lightning`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from agegender.config import Config

__all__ = ["make_callbacks", "make_loggers", "quiet_lightning"]


# --------------------------------------------------------------------------- trainer
def make_loggers(config: Config, out: Path) -> list:
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from agegender.train.callbacks import EpochCSVLogger

    lg = config.logger
    loggers: list = [EpochCSVLogger(out / "metrics.csv")]
    if lg.csv:
        loggers.append(CSVLogger(out / "logs", name="csv"))
    if lg.tensorboard:
        loggers.append(TensorBoardLogger(out / "logs", name="tensorboard", default_hp_metric=False))
    if lg.mlflow:
        from lightning.pytorch.loggers import MLFlowLogger

        uri = lg.mlflow_tracking_uri or (out / "mlruns").resolve().as_uri()
        loggers.append(MLFlowLogger(experiment_name=config.name or "agegender", tracking_uri=uri))
    if lg.wandb:
        from lightning.pytorch.loggers import WandbLogger

        loggers.append(
            WandbLogger(
                project=lg.wandb_project,
                save_dir=str(out / "logs"),
                offline=lg.wandb_offline,
                name=config.name,
            )
        )
    return loggers


def make_callbacks(config: Config, out: Path, progress: bool, printer: Callable) -> dict[str, Any]:
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint

    from agegender.train.callbacks import (
        BackboneFreeze,
        EpochPrinter,
        LastCheckpoint,
        Throughput,
    )

    es = config.train.early_stopping
    ckpt_dir = out / "checkpoints"
    cbs: dict[str, Any] = {
        "best": ModelCheckpoint(
            dirpath=ckpt_dir,
            filename="best",
            monitor=es.monitor,
            mode=es.resolved_mode,
            save_top_k=1,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        ),
        "last": LastCheckpoint(ckpt_dir / "last.ckpt", config.train.checkpoint_every_n_steps),
        "throughput": Throughput(),
        "lr": LearningRateMonitor(logging_interval="step"),
    }
    if config.train.keep_epoch_checkpoints:
        # every epoch's weights (e.g. the heads-only epoch before the unfreeze, one end of
        # `agegender export --interpolate`)
        cbs["epochs"] = ModelCheckpoint(
            dirpath=ckpt_dir,
            filename="epoch_{epoch}",
            save_top_k=-1,
            every_n_epochs=1,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        )
    if es.patience is not None:
        cbs["early_stopping"] = EarlyStopping(
            monitor=es.monitor, mode=es.resolved_mode, patience=es.patience, min_delta=es.min_delta
        )
    m = config.model
    if m.freeze_backbone:
        cbs["freeze"] = BackboneFreeze(
            m.unfreeze_at_epoch, m.unfreeze_last_n, m.backbone_lr_factor, m.unfreeze_warmup_epochs
        )
    if progress:
        from lightning.pytorch.callbacks import RichProgressBar

        cbs["progress"] = RichProgressBar(leave=True)
    else:
        cbs["printer"] = EpochPrinter(printer)
    return cbs


class _QuietLightning(logging.Filter):
    """Drop Lightning's start-up chatter (hardware lines, tips)."""

    NOISE = ("GPU available", "TPU available", "HPU available", "💡", "`weights_only`")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.NOISE)


_LIGHTNING_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning.pytorch.trainer.connectors.checkpoint_connector",
)


def quiet_lightning(*, info: bool = False) -> contextlib.AbstractContextManager:
    """Drop Lightning's start-up chatter (:class:`_QuietLightning`) from now on.

    Returns a context manager: with ``info=True`` it also hides Lightning's info lines
    (``Trainer.fit stopped``...) inside its block, as a sweep does to print one line per
    trial; else it does nothing (:func:`train` calls ``quiet_lightning()`` and drops it).
    """
    for name in _LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _QuietLightning) for f in logger.filters):
            logger.addFilter(_QuietLightning())
    if not info:
        return contextlib.nullcontext()
    return _warnings_only(logging.getLogger(_LIGHTNING_LOGGERS[0]))


@contextlib.contextmanager
def _warnings_only(logger: logging.Logger) -> Iterator[None]:
    """``logger`` passes warnings and errors only inside the block."""
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
