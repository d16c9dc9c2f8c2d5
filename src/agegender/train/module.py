"""The LightningModule: model, batched augmentation, multi-task loss, metrics, optimiser.

Loss ``L = gamma * L_gender + (1 - gamma) * L_age`` (just the one term with a single task);
every term is masked per sample, so faces with an unknown gender or age add nothing to
that term (but still count for the other one):

- gender: cross-entropy over (male, female), ignoring -1;
- age ``groups``: cross-entropy over the 8 Adience groups, ignoring -1;
- age ``regression``: L1 in years, ignoring NaN;
- age ``dex``: cross-entropy over ages 0..100 (DEX); the prediction is the softmax's
  expected value. ``task.age_sigma > 0`` makes the target a Gaussian over the years
  centred on the label (label distribution learning, DLDL: Gao et al. 2017) instead of one
  year, and ``task.age_l1 > 0`` adds that weight times the L1 error of the expected age
  (DLDL-v2's expectation loss, Gao et al. 2018), see :func:`dex_loss`. A face labelled
  with an Adience age group but no exact age (Adience itself) learns from its group's
  share of the distribution: minus the log of the probability summed over the group's
  years (:func:`dex_group_nll`), so exact ages and groups train one head together.

With ``distill`` (:mod:`agegender.train.distill`) the training loss becomes
``(1 - w) * L + w * L_teacher`` (``train/loss_distill`` is logged); validation and test
losses stay the labels' own, so runs with and without a teacher compare.

Metrics (torchmetrics, synchronised across DDP ranks) per epoch for ``train/`` and
``val/`` (and ``test/``): ``loss``, ``gender_acc``, ``age_acc`` (8 groups; predicted ages
are mapped to groups for regression/DEX), ``age_acc_1off`` (within one group, as Levi &
Hassner report), ``age_mae`` (years; regression and DEX only).

Checkpoints are self-describing: ``hyper_parameters`` hold the resolved config and a
``meta`` dict (architecture, create_model options, tasks, preprocessing, label
conventions, code version) and ``checkpoint["agegender"]`` repeats ``meta`` with the
metrics at save time, so :func:`agegender.artifact.load_model` rebuilds the network without
the config file.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import LRScheduler
from torchmetrics import MeanAbsoluteError, MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from agegender.artifact import build_model
from agegender.config import Config
from agegender.data.augment import Preprocess
from agegender.data.records import AGE_GROUP_CUTS, ages_to_groups
from agegender.metric_names import logged_metrics
from agegender.models import dex_expected_age
from agegender.models.heads import DEX_MAX_AGE
from agegender.train.distill import distill_loss

# The model artifact (meta, rebuilding, checkpoint files) lives in agegender.artifact.


# --------------------------------------------------------------------------- losses
def masked_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over samples with ``target >= 0`` (0 with none, graph kept)."""
    valid = target >= 0
    per = F.cross_entropy(logits.float(), target.clamp(min=0), reduction="none")
    return (per * valid).sum() / valid.sum().clamp(min=1)


def masked_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over samples whose target is not NaN."""
    valid = ~torch.isnan(target)
    per = (pred.float() - torch.nan_to_num(target)).abs()
    return (per * valid).sum() / valid.sum().clamp(min=1)


def dex_targets(age: torch.Tensor) -> torch.Tensor:
    """Years -> DEX class 0..100 (rounded, clipped), -1 where NaN."""
    cls = torch.nan_to_num(age, nan=-1.0).round().clamp(max=DEX_MAX_AGE).long()
    return torch.where(torch.isnan(age), -1, cls)


def dex_group_nll(logits: torch.Tensor, age_group: torch.Tensor) -> torch.Tensor:
    """Per face, minus the log of the DEX probability summed over the years of its Adience
    group (``age_group`` 0..7; -1: no group, 0 returned), from ``(B, n_ages)`` logits: the
    loss of a face whose group is known but not its age in years."""
    n = logits.shape[-1]
    group_of_year = torch.as_tensor(ages_to_groups(np.arange(n, dtype=float)), device=logits.device)
    logp = logits.float().log_softmax(-1)
    in_group = group_of_year[None, :] == age_group.clamp(min=0)[:, None]
    per = -torch.logsumexp(logp.masked_fill(~in_group, float("-inf")), dim=-1)
    return torch.where(age_group >= 0, per, torch.zeros_like(per))


def dex_loss(
    logits: torch.Tensor,
    age: torch.Tensor,
    sigma: float = 0.0,
    l1: float = 0.0,
    age_group: torch.Tensor | None = None,
) -> torch.Tensor:
    """DEX age loss over ``(B, 101)`` logits, averaged over the faces with an age.

    ``sigma == 0``: cross-entropy to the rounded year (DEX). ``sigma > 0``: cross-entropy to
    a Gaussian over the years 0..100 centred on the (unrounded) label with ``sigma`` years,
    renormalised over the range (label distribution learning). ``l1 > 0`` adds ``l1`` times
    the mean absolute error in years of the softmax's expected age (DLDL-v2), over the
    faces with an exact age. ``age_group``: a face whose age is NaN but whose group is known
    (>= 0) adds :func:`dex_group_nll` instead; faces with neither add nothing."""
    exact = ~torch.isnan(age)
    logp = logits.float().log_softmax(-1)
    if sigma <= 0:
        per = -logp.gather(1, dex_targets(age).clamp(min=0)[:, None]).squeeze(1)
    else:
        years = torch.arange(logits.shape[-1], dtype=torch.float32, device=logits.device)
        centre = torch.nan_to_num(age.float()).clamp(0, DEX_MAX_AGE)
        target = torch.softmax(-((years - centre[:, None]) ** 2) / (2 * sigma**2), dim=-1)
        per = -(target * logp).sum(-1)
    per = torch.where(exact, per, torch.zeros_like(per))
    counted = exact
    if age_group is not None:
        grouped = ~exact & (age_group >= 0)
        per = per + torch.where(grouped, dex_group_nll(logits, age_group), torch.zeros_like(per))
        counted = exact | grouped
    loss = per.sum() / counted.sum().clamp(min=1)
    if l1 > 0:
        loss = loss + l1 * masked_l1(dex_expected_age(logits.float()), age)
    return loss


def predicted_years(age_out: torch.Tensor, mode: str) -> torch.Tensor:
    return dex_expected_age(age_out.float()) if mode == "dex" else age_out.float()


# --------------------------------------------------------------------------- schedule
class ScheduleFn:
    """Learning-rate factor per optimiser step: linear warm-up, then cosine/step/none."""

    def __init__(
        self,
        name: str,
        total_steps: int,
        warmup_steps: int = 0,
        step_size: int = 1,
        gamma: float = 0.1,
        min_factor: float = 0.0,
    ) -> None:
        self.name = name
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = max(0, int(warmup_steps))
        self.step_size = max(1, int(step_size))
        self.gamma = gamma
        self.min_factor = min_factor

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.name == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            t = min(1.0, (step - self.warmup_steps) / span)
            return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * t))
        if self.name == "step":
            return self.gamma ** (step // self.step_size)
        return 1.0


class FactorScheduler(LRScheduler):
    """``lr_i = base_lr_i * fn(step)`` for every param group, including groups added later
    (the freeze/unfreeze callback appends their base lr), times a linear ramp from 0 for
    groups given one (:meth:`add_ramp`). ``fn`` is not saved in state; the ramps are."""

    def __init__(self, optimizer: torch.optim.Optimizer, fn: ScheduleFn) -> None:
        self.fn = fn
        self.ramps: dict[int, tuple[int, int]] = {}  # group -> (first step, ramp steps)
        super().__init__(optimizer)

    def _ramp(self, group: int, step: int) -> float:
        start, steps = self.ramps.get(group, (0, 0))
        return 1.0 if steps <= 0 else min(1.0, max(0, step - start + 1) / steps)

    def get_lr(self) -> list[float]:
        f = self.fn(self.last_epoch)
        return [base * f * self._ramp(i, self.last_epoch) for i, base in enumerate(self.base_lrs)]

    def add_ramp(self, group: int, steps: int) -> None:
        """Ramp ``group``'s rate linearly from 0 to its schedule over the next ``steps``
        optimiser steps, starting with the next one."""
        self.ramps[group] = (self.last_epoch, int(steps))
        self.optimizer.param_groups[group]["lr"] = self.get_lr()[group]

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "fn")}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.__dict__.update({k: v for k, v in state_dict.items() if k != "fn"})


# --------------------------------------------------------------------------- module
def _age_group_of(years: torch.Tensor) -> torch.Tensor:
    cuts = torch.tensor(AGE_GROUP_CUTS, dtype=years.dtype, device=years.device)
    return torch.bucketize(years, cuts, right=True)


class FaceModule(L.LightningModule):
    """Trains a :class:`~agegender.models.FaceModel` from a validated :class:`Config`.

    ``config``: the resolved config as a dict; ``meta``: the dict
    :func:`agegender.artifact.make_meta` writes.
    ``pretrained_file`` / ``pretrained``: backbone weights to start from (fresh runs only).
    """

    def __init__(
        self,
        config: dict,
        meta: dict,
        pretrained_file: str | None = None,
        pretrained: str | None = None,
        sources: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters({"config": config, "meta": meta})
        # datasets mixed in validation / test (data.extra): their metrics are also logged
        # one by one, as ``val/<source>/<metric>``
        self.sources = list(sources or [])
        self.cfg = Config.model_validate(config)
        self.meta = meta
        self.model = build_model(meta, pretrained_file, pretrained)
        pre = meta["preprocessing"]
        self.preprocess = Preprocess(
            size=pre["resize"],
            input_size=pre["input_size"],
            mean=pre["mean"],
            std=pre["std"],
            recipe=self.cfg.augment,
            channels_last=self.cfg.trainer.channels_last,
        )
        if self.cfg.trainer.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.task = self.cfg.task
        self.metrics = torch.nn.ModuleDict(
            {f"{stage}_": self._make_metrics() for stage in ("train", "val", "test")}
        )
        self.source_metrics = torch.nn.ModuleDict(
            {
                f"{stage}_{i}": self._make_metrics()
                for stage in ("val", "test")
                for i in range(len(self.sources))
            }
        )
        self._forward = self.model
        # model.precompute_blocks: batches hold the stored output of the first N blocks
        self.precomputed = self.cfg.model.precompute_blocks
        self.last_metrics: dict[str, float] = {}

    def _make_metrics(self) -> MetricCollection:
        """The torchmetrics behind the vocabulary's logged names for this model's tasks."""
        make = {
            "gender_acc": lambda: MulticlassAccuracy(2, average="micro", ignore_index=-1),
            "age_acc": lambda: MulticlassAccuracy(8, average="micro", ignore_index=-1),
            "age_acc_1off": MeanMetric,
            "age_mae": MeanAbsoluteError,
        }
        names = [
            n.split("/", 1)[1] for n in logged_metrics(self.task.gender, self.task.age, ["val"])
        ]
        return MetricCollection({n: make[n]() for n in names if n != "loss"})

    # ---------------------------------------------------------------- steps
    def setup(self, stage: str) -> None:
        if self.cfg.trainer.compile:
            self._forward = torch.compile(self.model)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.precomputed:
            return self.model.forward_from(self.precomputed, x)
        return self._forward(x)

    def _stored_view(self, feats: torch.Tensor, rng: np.random.Generator | None) -> torch.Tensor:
        """One view per sample of stored features ``(B, views, C, h, w)``. Outside training
        the face as it is (view 0); in training the mirror image with ``hflip``'s
        probability, or, with augmented draws stored (``model.precompute_augmented``), any
        stored view, each equally often."""
        hflip = self.preprocess.recipe.get("hflip")
        n, views = len(feats), feats.shape[1]
        view = torch.zeros(n, dtype=torch.long, device=feats.device)
        if rng is not None and views > 1:
            if self.cfg.model.precompute_augmented:
                view = torch.from_numpy(rng.integers(0, views, n)).to(feats.device)
            elif hflip is not None:
                view = torch.from_numpy(rng.random(n) < hflip.p).long().to(feats.device)
        x = feats[torch.arange(len(feats), device=feats.device), view].float()
        if self.cfg.trainer.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _batch_rng(self) -> np.random.Generator | None:
        """The training batch's random numbers (None outside training): a pure function of
        (seed, rank, epoch, batch), so a resumed run draws the same augmentation."""
        trainer = self._trainer
        if trainer is None or not trainer.training:
            return None
        return np.random.default_rng(
            [
                self.cfg.train.seed,
                trainer.global_rank,
                trainer.current_epoch,
                trainer.fit_loop.epoch_loop.batch_progress.current.ready,
            ]
        )

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        images, rng = batch["image"], self._batch_rng()
        if self.precomputed:
            batch["image"] = self._stored_view(images, rng)
        elif rng is not None:
            batch["image"] = self.preprocess.train(images, rng)
        else:
            batch["image"] = self.preprocess.eval(images)
        return batch

    def _update(self, metrics: MetricCollection, out: dict, batch: dict, keep: Any) -> None:
        """Update ``metrics`` with the samples ``keep`` selects (a mask, or ``slice(None)``)."""
        if self.task.gender:
            metrics["gender_acc"].update(out["gender"].detach()[keep], batch["gender"][keep])
        mode = self.task.age
        if mode == "none":
            return
        age_out = out["age"].detach()[keep]
        target_group, age = batch["age_group"][keep], batch["age"][keep]
        if mode == "groups":
            pred_group = age_out.argmax(-1)
        else:
            years = predicted_years(age_out, mode)
            pred_group = _age_group_of(years)
            known = ~torch.isnan(age)
            if known.any():
                metrics["age_mae"].update(years[known], age[known])
        valid = target_group >= 0
        if valid.any():
            metrics["age_acc"].update(F.one_hot(pred_group, 8).float(), target_group)
            off = ((pred_group - target_group).abs() <= 1).float()
            metrics["age_acc_1off"].update(off[valid])

    def _step(self, batch: dict, stage: str) -> torch.Tensor:
        out = self(batch["image"])
        n = batch["image"].shape[0]
        losses: dict[str, torch.Tensor] = {}
        if self.task.gender:
            losses["gender"] = masked_ce(out["gender"], batch["gender"])
        mode = self.task.age
        if mode == "groups":
            losses["age"] = masked_ce(out["age"], batch["age_group"])
        elif mode == "regression":
            losses["age"] = masked_l1(out["age"], batch["age"])
        elif mode == "dex":
            losses["age"] = dex_loss(
                out["age"],
                batch["age"],
                self.task.age_sigma,
                self.task.age_l1,
                age_group=batch["age_group"],
            )
        self._update(self.metrics[f"{stage}_"], out, batch, slice(None))
        if stage != "train" and self.sources and "source" in batch:
            for i in range(len(self.sources)):
                mask = batch["source"] == i
                if mask.any():
                    self._update(self.source_metrics[f"{stage}_{i}"], out, batch, mask)
        if len(losses) == 2:
            g = self.task.gamma
            loss = g * losses["gender"] + (1 - g) * losses["age"]
        else:
            loss = next(iter(losses.values()))
        kd = self.cfg.distill
        if kd is not None and stage == "train" and any(k.startswith("teacher_") for k in batch):
            losses["distill"] = distill_loss(out, batch, self.task.gamma, kd.temperature)
            loss = (1 - kd.weight) * loss + kd.weight * losses["distill"]
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        for name, value in losses.items():
            self.log(
                f"{stage}/loss_{name}",
                value,
                on_step=False,
                on_epoch=True,
                batch_size=n,
                sync_dist=True,
            )
        if on_step:
            self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def _log_metrics(self, stage: str) -> None:
        collections = [(f"{stage}/", self.metrics[f"{stage}_"])]
        if stage != "train":
            collections += [
                (f"{stage}/{source}/", self.source_metrics[f"{stage}_{i}"])
                for i, source in enumerate(self.sources)
            ]
        for prefix, metrics in collections:
            for name, metric in metrics.items():
                if metric.update_count:
                    value = metric.compute()
                    # computed (and synced) by torchmetrics; sync_dist averages equal values
                    self.log(
                        prefix + name,
                        value,
                        sync_dist=True,
                        prog_bar=prefix == "val/",
                    )
                metric.reset()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "test")

    def on_train_epoch_end(self) -> None:
        self._log_metrics("train")
        opt = self.optimizers(use_pl_optimizer=False)
        self.log("train/lr", float(opt.param_groups[0]["lr"]), sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    # ---------------------------------------------------------------- optimiser
    def configure_optimizers(self) -> dict:
        o, s = self.cfg.optim, self.cfg.schedule
        backbone_ids = {id(p) for p in self.model.backbone.parameters()}
        head = [p for p in self.model.parameters() if p.requires_grad and id(p) not in backbone_ids]
        body = [p for p in self.model.backbone.parameters() if p.requires_grad]
        factor = self.cfg.model.backbone_lr_factor
        groups = [{"params": head, "lr": o.lr}]
        if body:
            if factor == 1.0:
                groups[0]["params"] = body + head
            else:
                groups.append({"params": body, "lr": o.lr * factor})
        if o.name == "sgd":
            opt = torch.optim.SGD(
                groups,
                lr=o.lr,
                momentum=o.momentum,
                nesterov=o.nesterov,
                weight_decay=o.weight_decay,
            )
        elif o.name == "adam":
            opt = torch.optim.Adam(groups, lr=o.lr, weight_decay=o.weight_decay)
        else:
            opt = torch.optim.AdamW(groups, lr=o.lr, weight_decay=o.weight_decay)
        per_epoch = self._steps_per_epoch()
        total = per_epoch * max(1, self.trainer.max_epochs)
        fn = ScheduleFn(
            s.name,
            total_steps=total,
            warmup_steps=round(s.warmup_epochs * per_epoch),
            step_size=s.step_size * per_epoch,
            gamma=s.gamma,
            min_factor=s.min_lr_factor,
        )
        sched = FactorScheduler(opt, fn)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _steps_per_epoch(self) -> int:
        """Optimiser steps per epoch, from the datamodule's batch sampler.

        (``trainer.estimated_stepping_batches`` would set up the train loader before a
        checkpoint is restored, which loses the loader's mid-epoch position.)
        """
        trainer = self.trainer
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "train_batches"):
            return max(1, int(trainer.estimated_stepping_batches) // max(1, trainer.max_epochs))
        n = dm.train_batches(trainer.global_rank, trainer.world_size)
        limit = trainer.limit_train_batches
        if isinstance(limit, int):
            n = min(n, limit)
        elif limit is not None and limit < 1.0:
            n = int(n * limit)
        return max(1, math.ceil(n / trainer.accumulate_grad_batches))

    # ---------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        metrics = {}
        if self._trainer is not None:
            for k, v in self.trainer.callback_metrics.items():
                if not k.endswith("_step"):
                    metrics[k] = float(v)
        checkpoint["agegender"] = {**self.meta, "metrics": metrics}


# --------------------------------------------------------------------------- loading
