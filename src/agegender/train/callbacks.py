"""Callbacks and the per-epoch CSV logger that Lightning lacks.

- :class:`BackboneFreeze` — a ``BaseFinetuning``: backbone frozen (BatchNorm statistics
  too) until ``unfreeze_at_epoch``, then the whole backbone or its last N blocks join the
  optimiser at ``backbone_lr_factor`` x the head's learning rate, following the schedule
  (ramped up from 0 over ``unfreeze_warmup_epochs`` when set).
- :class:`Throughput` — training images per second (training batches only, all ranks).
- :class:`LastCheckpoint` — ``last.ckpt`` every N optimiser steps and at each epoch end,
  written atomically (temp file + rename), so a killed run loses at most N steps; the
  epoch's row is in ``metrics.csv`` before the epoch-end save.
- :class:`EpochCSVLogger` — ``metrics.csv`` with ONE row per epoch (train and val metrics
  side by side), kept across ``--resume``; test metrics never go there (``summary.json``).
- :class:`EpochPrinter` — one summary line per epoch when there is no progress bar.
- :class:`PruningCallback` — a sweep trial's metric to Optuna after every validation epoch,
  and ``optuna.TrialPruned`` when the study's pruner says so (Optuna imported only there).
"""

from __future__ import annotations

import csv
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BaseFinetuning, Callback, Checkpoint
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from torch.optim import Optimizer

from agegender.fileio import atomic_path


class BackboneFreeze(BaseFinetuning):
    """Freeze ``pl_module.model.backbone``; at ``unfreeze_at_epoch`` (None: never) unfreeze
    it (or its last ``last_n`` :meth:`backbone_blocks`) with lr = ``lr_factor`` x head lr,
    ramped linearly from 0 over the first ``warmup_epochs`` epochs after unfreezing (a
    fresh Adam state moves every newly trained weight by about the full rate at once)."""

    def __init__(
        self,
        unfreeze_at_epoch: int | None,
        last_n: int | None = None,
        lr_factor: float = 1.0,
        warmup_epochs: float = 0.0,
    ) -> None:
        super().__init__()
        self.unfreeze_at_epoch = unfreeze_at_epoch
        self.last_n = last_n
        self.lr_factor = lr_factor
        self.warmup_epochs = warmup_epochs
        self.unfrozen = False

    def _modules(self, pl_module: L.LightningModule) -> list[torch.nn.Module]:
        model = pl_module.model
        if self.last_n:
            return list(model.backbone_blocks()[-self.last_n :])
        return [model.backbone]

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "unfrozen": self.unfrozen}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.unfrozen = bool(state_dict.get("unfrozen", False))
        super().load_state_dict(state_dict)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)  # restores the param groups on resume
        if self.unfrozen:
            self.make_trainable(self._modules(pl_module))
            pl_module.model.train(pl_module.model.training)

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        self.freeze(pl_module.model.backbone, train_bn=False)
        pl_module.model.train(pl_module.model.training)

    def finetune_function(
        self, pl_module: L.LightningModule, epoch: int, optimizer: Optimizer
    ) -> None:
        if self.unfreeze_at_epoch is None or epoch != self.unfreeze_at_epoch or self.unfrozen:
            return
        n_groups = len(optimizer.param_groups)
        self.unfreeze_and_add_param_group(
            self._modules(pl_module),
            optimizer,
            lr=None,
            initial_denom_lr=1.0 / self.lr_factor,
            train_bn=True,
        )
        self.unfrozen = True
        pl_module.model.train(pl_module.model.training)
        if len(optimizer.param_groups) > n_groups:
            # the new group follows the lr schedule from lr_factor x the head's base lr
            for config in pl_module.trainer.lr_scheduler_configs:
                sched = config.scheduler
                if getattr(sched, "optimizer", None) is optimizer and hasattr(sched, "base_lrs"):
                    while len(sched.base_lrs) < len(optimizer.param_groups):
                        sched.base_lrs.append(sched.base_lrs[0] * self.lr_factor)
                        optimizer.param_groups[-1].setdefault("initial_lr", sched.base_lrs[-1])
                    if self.warmup_epochs > 0 and hasattr(sched, "add_ramp"):
                        steps = round(self.warmup_epochs * pl_module._steps_per_epoch())
                        sched.add_ramp(len(optimizer.param_groups) - 1, max(1, steps))


class Throughput(Callback):
    """Training images per second over the training batches of each epoch (validation and
    checkpointing excluded), summed over ranks; logged as ``train/images_per_sec``.

    Also keeps the run's wall time across interruptions: ``total_seconds()`` is the time
    of every ``fit`` of this run up to now, the part before a resume coming from the
    checkpoint. A run resumed mid-epoch counts that epoch's rate over the batches trained
    after the resume."""

    def __init__(self) -> None:
        self.history: list[float] = []
        self.prior_seconds = 0.0  # fit time before the last resume (from the checkpoint)
        self._fit_start: float | None = None
        self._fit_end: float | None = None
        self._start: float | None = None
        self._last = 0.0
        self._images = 0

    def total_seconds(self) -> float:
        """Wall time of this run's fits so far, including those before a resume."""
        if self._fit_start is None:
            return self.prior_seconds
        end = self._fit_end if self._fit_end is not None else time.perf_counter()
        return self.prior_seconds + end - self._fit_start

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_start, self._fit_end = time.perf_counter(), None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_end = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = self._last = time.perf_counter()
        self._images = 0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int
    ) -> None:
        if self._start is None:  # restored mid-epoch without an epoch start
            self._start = self._last = time.perf_counter()
            self._images = 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self._images += int(batch["image"].shape[0])
        self._last = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        elapsed = self._last - (self._start or self._last)
        if self._images and elapsed > 0:
            rate = self._images * trainer.world_size / elapsed
            self.history.append(rate)
            pl_module.log("train/images_per_sec", rate, on_epoch=True, sync_dist=True)
        self._start = None

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history), "train_seconds": self.total_seconds()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self.prior_seconds = float(state_dict.get("train_seconds", 0.0))


def _epoch_loggers(trainer: L.Trainer) -> list[EpochCSVLogger]:
    return [lg for lg in trainer.loggers if isinstance(lg, EpochCSVLogger)]


class LastCheckpoint(Checkpoint):
    """Save ``last.ckpt`` every ``every_n_steps`` optimiser steps and at every epoch end,
    atomically.

    The epoch-end save is the one a resume skips the epoch for, so the epoch's row goes to
    ``metrics.csv`` first: Lightning hands an epoch's train metrics to the loggers only
    after every ``on_train_epoch_end`` hook, and a kill between this save and that write
    lost them for good. Being a :class:`~lightning.pytorch.callbacks.Checkpoint`, this
    callback's ``on_train_epoch_end`` runs after the module's and the other callbacks'
    (whose metrics, ``train/lr``, ``train/images_per_sec``, are then in the row). There
    is no step save on an epoch's last batch: a resume from it would skip the epoch's
    validation and row. When training starts the :class:`EpochCSVLogger` rows of the
    epochs it will (re)train are dropped, so a resumed epoch is never in the file twice."""

    def __init__(self, path: str | Path, every_n_steps: int = 100) -> None:
        self.path = Path(path)
        self.every_n_steps = every_n_steps
        self._saved_step = -1

    def _save(self, trainer: L.Trainer) -> None:
        if trainer.global_step == self._saved_step and self._saved_step >= 0:
            return
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        trainer.save_checkpoint(tmp, weights_only=False)  # collective; rank 0 writes
        if trainer.is_global_zero:
            os.replace(tmp, self.path)
        trainer.strategy.barrier("last_checkpoint")
        self._saved_step = trainer.global_step

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # current_epoch is the first epoch this fit trains (restored from the checkpoint)
        for logger in _epoch_loggers(trainer):
            logger.forget_from(trainer.current_epoch)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        n = self.every_n_steps
        last_batch = (
            idx + 1 >= trainer.num_training_batches
            or trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        )
        if n and trainer.global_step > 0 and trainer.global_step % n == 0 and not last_batch:
            self._save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the epoch's train metrics (its val metrics were logged at validation end)
        train = {
            k: v
            for k, v in trainer.callback_metrics.items()
            if k.startswith("train/") and not k.endswith("_step")
        }
        for logger in _epoch_loggers(trainer):
            logger.log_metrics(
                {**train, "epoch": trainer.current_epoch}, step=max(trainer.global_step - 1, 0)
            )
        self._saved_step = -1
        self._save(trainer)


class EpochCSVLogger(Logger):
    """``metrics.csv``: one row per epoch with every epoch-level training and validation
    metric (``*_step`` metrics, ``test/*`` metrics and rows without an ``epoch`` are left to
    the other loggers: the test metrics are in ``summary.json``). On resume, rows already in
    the file are kept; :meth:`forget_from` drops the epochs trained again. Every write
    replaces the file atomically after an fsync."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        self.rows: dict[int, dict[str, Any]] = {}
        if self.path.is_file():
            with self.path.open(newline="") as f:
                for row in csv.DictReader(f):
                    try:
                        epoch = int(row["epoch"])
                    except (KeyError, ValueError):
                        continue
                    values = {
                        k: v
                        for k, v in row.items()
                        if k not in ("epoch", None) and not k.startswith("test/") and v
                    }
                    if set(values) - {"step"}:  # an old file's test-only row is no epoch
                        self.rows[epoch] = values

    @property
    def name(self) -> str:
        return "epochs"

    @property
    def version(self) -> str:
        return ""

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        return None

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if "epoch" not in metrics:
            return
        epoch = int(metrics["epoch"])
        values = {
            k: (v.item() if isinstance(v, torch.Tensor) else v)
            for k, v in metrics.items()
            if not k.endswith("_step") and k != "epoch" and not k.startswith("test/")
        }
        if not values:
            return
        row = self.rows.setdefault(epoch, {})
        row.update(values)
        if step is not None:
            row["step"] = step
        self._write()

    @rank_zero_only
    def forget_from(self, epoch: int) -> None:
        """Drop the rows of ``epoch`` and later (a resumed run trains them again)."""
        later = [e for e in self.rows if e >= epoch]
        for e in later:
            del self.rows[e]
        if later:
            self._write()

    def _write(self) -> None:
        keys = sorted({k for row in self.rows.values() for k in row} - {"step", "epoch"})
        fields = ["epoch", "step", *keys]
        with atomic_path(self.path) as tmp, tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            for epoch in sorted(self.rows):
                writer.writerow({"epoch": epoch, **self.rows[epoch]})
            f.flush()
            os.fsync(f.fileno())  # on disk before the checkpoint that relies on it

    @rank_zero_only
    def save(self) -> None:
        return None

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self.rows:
            self._write()


def _fmt(v: Any) -> str:
    if isinstance(v, torch.Tensor):
        v = v.item()
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


class EpochPrinter(Callback):
    """Print ``epoch 3/10  train/loss 0.52  val/gender_acc 0.81 ...`` once per epoch
    (train metrics are aggregated after ``on_train_epoch_end``, so an epoch is printed
    when the next one starts, or when training ends)."""

    def __init__(self, printer: Any = print) -> None:
        self.printer = printer
        self._pending: int | None = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pending = trainer.current_epoch

    @rank_zero_only
    def _flush(self, trainer: L.Trainer) -> None:
        if self._pending is None:
            return
        metrics = trainer.callback_metrics
        keys = sorted(
            k for k in metrics if not k.endswith("_step") and k.startswith(("train/", "val/"))
        )
        parts = [f"{k} {_fmt(metrics[k])}" for k in keys]
        self.printer(f"epoch {self._pending + 1}/{trainer.max_epochs}  " + "  ".join(parts))
        self._pending = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush(trainer)


class PruningCallback(Callback):
    """Report ``metric`` to an Optuna trial after every validation epoch (step = epoch) and
    raise ``optuna.TrialPruned`` when the study's pruner says so."""

    def __init__(self, trial: Any, metric: str) -> None:
        self.trial = trial
        self.metric = metric
        self.values: dict[int, float] = {}

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        import optuna

        if getattr(trainer, "sanity_checking", False):
            return
        value = trainer.callback_metrics.get(self.metric)
        if value is None:
            return
        epoch, v = int(trainer.current_epoch), float(value)
        self.values[epoch] = v
        with warnings.catch_warnings():
            # a resumed trial may have reported this epoch already: Optuna keeps the first value
            warnings.filterwarnings("ignore", message="The reported value is ignored because")
            self.trial.report(v, step=epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch + 1}: {self.metric} {v:.4g}")
