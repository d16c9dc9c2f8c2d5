"""Build everything from a config and fit: ``train(config, out_dir, resume=False)``.

Order of work (each step fails with a one-line error naming the key or file, before any
training starts): validate the config and check its files -> read the dataset (and the
folds file / audit) -> check the task has labels -> split -> decode-once image cache ->
model -> Lightning Trainer -> fit -> test (when there is a test split) -> summary.

The run directory::

    config.yaml               the resolved config (absolute paths, sizes filled in)
    metrics.csv               one row per epoch: train/* and val/* metrics, lr, images/s
                              (the row is on disk before the last.ckpt of its epoch end)
    summary.json              best/last epoch's metrics, "test" (the test split's metrics:
                              never a metrics.csv row), epochs, params, size, speed, data sizes
    teacher.npz               with distill: the teacher's outputs on the training faces
    checkpoints/best.ckpt     best epoch by train.early_stopping.monitor
    checkpoints/last.ckpt     every train.checkpoint_every_n_steps steps and epoch end
    logs/tensorboard/, logs/csv/ (Lightning's raw step log), mlflow/wandb when enabled
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from agegender import __version__
from agegender.config import Config, ConfigError, check_files, load_config
from agegender.data.datamodule import Splits, split_by_fold, split_by_fractions
from agegender.data.prepare import RowCounts, read_rows, reject_failed_images
from agegender.data.records import DatasetError
from agegender.fileio import read_epoch_metrics


@dataclass
class RunResult:
    """What :func:`train` returns (on every rank; files are written by rank 0)."""

    out_dir: Path
    summary: dict
    best_checkpoint: Path | None
    last_checkpoint: Path
    metrics: pd.DataFrame = field(default_factory=pd.DataFrame)


@dataclass
class PreparedData:
    """The table rows a run uses, their cached images and the splits."""

    table: pd.DataFrame
    images: np.ndarray
    cache_rows: np.ndarray
    splits: Splits
    info: dict
    #: rows read, kept and rejected: the main dataset, then each ``data.extra`` dataset
    row_counts: list[RowCounts] = field(default_factory=list)


# --------------------------------------------------------------------------- helpers
def is_rank_zero() -> bool:
    """True in the launching process (DDP children have LOCAL_RANK/NODE_RANK/RANK set)."""
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def code_version() -> str:
    """Package version, plus the git commit when run from a checkout."""
    root = Path(__file__).resolve().parents[3]
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        if out.returncode == 0 and out.stdout.strip():
            return f"{__version__}+g{out.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    return __version__


def resolve_sizes(config: Config) -> tuple[int, int]:
    """``(cache size, input size)``: as configured, else from the model's default_cfg
    (``resize`` and ``input_size``, keeping their ratio when only one is given)."""
    from agegender.models.registry import get_model_entry

    cfg = get_model_entry(config.model.name).cfg
    d_in, d_resize = int(cfg["input_size"]), int(cfg["resize"])
    size, inp = config.data.size, config.data.input_size
    if size is None and inp is None:
        size, inp = d_resize, d_in
    elif size is None:
        size = round(inp * d_resize / d_in)
    elif inp is None:
        inp = round(size * d_in / d_resize)
    if inp < cfg["min_input_size"]:
        raise ConfigError(
            f"data.input_size: model {config.model.name!r} needs >= {cfg['min_input_size']} "
            f"(got {inp})"
        )
    return int(size), int(inp)


def check_environment(config: Config) -> None:
    """Optional loggers must be installed."""
    import importlib.util

    for key, module in (("mlflow", "mlflow"), ("wandb", "wandb")):
        if getattr(config.logger, key) and importlib.util.find_spec(module) is None:
            raise ConfigError(f"logger.{key}: {module} is not installed (pip install {module})")


def resolve_precision(config: Config) -> str:
    import torch

    p = config.train.precision
    if p == "32":
        return "32-true"
    if p != "auto":
        return p
    gpu = config.trainer.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    if gpu:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


# --------------------------------------------------------------------------- data
def _label_masks(config: Config, table: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """``(has_gender, has_age)`` per row, age meaning what ``task.age`` trains on."""
    exact = config.task.age in ("regression", "dex")
    return table["gender"].notna(), table["age" if exact else "age_group"].notna()


def _useful(config: Config, table: pd.DataFrame) -> pd.Series:
    """Rows with at least one label the task uses."""
    t = config.task
    has_gender, has_age = _label_masks(config, table)
    return (has_gender if t.gender else False) | (has_age if t.age != "none" else False)


def _check_labels(config: Config, table: pd.DataFrame) -> pd.DataFrame:
    """Task vs labels, then keep rows with at least one label the task uses."""
    t = config.task
    has_gender, has_age = _label_masks(config, table)
    if t.gender and not has_gender.any():
        raise ConfigError("task.gender: dataset has no gender labels")
    if t.age != "none" and not has_age.any():
        what = "exact ages" if t.age in ("regression", "dex") else "age labels"
        raise ConfigError(f"task.age: dataset has no age labels ({what} needed for {t.age!r})")
    return table[_useful(config, table)]


def _merge_folds(config: Config, table: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    from agegender.data.folds import read_folds

    folds = read_folds(config.data.folds_file)
    cols = ["path", "fold"] + (["split_group"] if "split_group" in folds.columns else [])
    folds = folds[cols].drop_duplicates("path")
    base = table.drop(columns=[c for c in ("fold", "split_group") if c in table.columns])
    merged = base.reset_index().merge(folds, on="path", how="inner").set_index("index")
    if merged.empty:
        raise ConfigError(
            f"data.folds_file: none of its {len(folds)} paths are images of data.path "
            f"({config.data.path})"
        )
    return merged.sort_index(), len(table) - len(merged)


def _load_images(
    table: pd.DataFrame,
    size: int,
    cache_dir: str | None,
    progress: bool,
    crop: Sequence[float] | None = None,
    align: bool = False,
    template: Sequence[Sequence[float]] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """``(images, cache_rows, ok, failures)`` for the rows of ``table`` through the image
    cache (``align``: photos through the predictor's face path with the default detector,
    aligned to ``template``); ``failures``: the reason of each row that is not ``ok``."""
    from agegender.data.cache import build_cache
    from agegender.infer.detector import DEFAULT_DETECTOR

    box = None if crop is None else tuple(float(c) for c in crop)
    cache = build_cache(
        table,
        size,
        cache_dir=cache_dir,
        progress=progress,
        crop=box,
        align=DEFAULT_DETECTOR if align else None,
        template=template if align else None,
    )
    ok = np.asarray(cache.ok, dtype=bool)
    rows = np.arange(len(table), dtype=np.int64)
    if len(ok) != len(table):
        rows = np.asarray(cache.rows_for(table["path"].tolist()), dtype=np.int64)
        ok = ok[rows]
    why = {p.path: p.reason for p in cache.problems}
    paths = table["path"].astype(str).to_numpy()
    failures = [why.get(p, "unreadable") for p in paths[~ok]]
    return cache.images, rows, ok, failures


def baselines(table: pd.DataFrame, splits: Splits) -> dict[str, float]:
    """What a model that ignores the image scores on the validation split: the training
    split's majority gender / age group, and its median age (for MAE)."""
    train, val = table.iloc[splits.train], table.iloc[splits.val]
    out: dict[str, float] = {}
    for key, col in (("val/gender_acc", "gender"), ("val/age_acc", "age_group")):
        known, target = train[col].dropna(), val[col].dropna()
        if len(known) and len(target):
            out[key] = float((target == known.mode().iloc[0]).mean())
    ages, target = train["age"].dropna(), val["age"].dropna()
    if len(ages) and len(target):
        out["val/age_mae"] = float((target - ages.median()).abs().mean())
    return out


def prepare_data(config: Config, *, progress: bool = False) -> PreparedData:
    """Read, filter, split and cache the dataset described by ``config.data``; every row
    left out is counted in ``info["row_counts"]`` (:class:`RowCounts`)."""
    from agegender.data.readers import default_crop, sample_rows

    d = config.data
    rows = read_rows(
        d.path, d.format, audit=d.audit, drop_conflicts=d.drop_conflicts, progress=progress
    )
    result, table, info, counts = rows.result, rows.table, rows.info, rows.counts
    if d.audit:
        table = table.assign(group=rows.dup_group)
        info.setdefault("conflicts_dropped", 0)
    if d.folds_file is not None:
        table, missing = _merge_folds(config, table)
        info["not_in_folds_file"] = missing
        counts.reject("not_in_folds_file", missing)
    elif d.fold is not None and table["fold"].isna().any():
        raise ConfigError(
            f"data.fold: the {result.format} dataset has no folds of its own for every face; "
            "make a folds file (agegender data folds) and set data.folds_file"
        )
    labelled = _check_labels(config, table)
    counts.reject("no_task_labels", len(table) - len(labelled))
    table = labelled
    if d.limit is not None and d.limit < len(table):
        info["limit"] = d.limit
        counts.reject("limit", len(table) - d.limit)
    table = sample_rows(table, d.limit, d.seed)
    size, _ = resolve_sizes(config)
    crop = d.crop if d.crop is not None else default_crop(result.format)
    model_template = model_face_template(config)
    _check_model_framing(config, "data.align", d.align)
    info["face_template"] = _framing(d.crop, result.format, d.align, model_template)
    images, cache_rows, ok, failures = _load_images(
        table, size, d.cache_dir, progress, crop, d.align, model_template
    )
    if not ok.all():
        info["undecodable"] = int((~ok).sum())
        reject_failed_images(counts, failures)
        table, cache_rows = table[ok].reset_index(drop=True), cache_rows[ok]
    info["row_counts"] = counts.to_dict()
    row_counts = [counts]
    if d.fold is not None:
        splits = split_by_fold(table, d.fold, d.val_fold)
    else:
        splits = split_by_fractions(table, d.split, d.seed)
    for name, idx in splits.as_dict().items():
        if len(idx) == 0:
            raise ConfigError(f"data: the {name} split is empty ({splits.how})")
    if d.extra:
        info["sources"] = {_source_name(d.path): dict(splits.sizes())}
        table, images, cache_rows, splits = _add_extra(
            config, table, images, cache_rows, splits, info, size, progress, row_counts
        )
    info["used"] = len(table)
    info["splits"] = splits.sizes()
    info["split"] = splits.how
    info["baselines"] = baselines(table, splits)
    return PreparedData(table, images, cache_rows, splits, info, row_counts)


def model_face_template(config: Config) -> tuple:
    """The landmark template the model's input expects (its registered ``face_template``:
    UTKFace's crops for most models, dlib's face chip for ``dlib_resnet29``)."""
    from agegender.infer.align import named_template
    from agegender.models import get_model_entry

    return named_template(get_model_entry(config.model.name).cfg["face_template"])


def _check_model_framing(config: Config, key: str, align: bool) -> None:
    """A model that expects another framing than UTKFace's needs its faces cut through the
    face path (``align``): a reader's box gives UTKFace's framing."""
    from agegender.models import get_model_entry

    name = get_model_entry(config.model.name).cfg["face_template"]
    if name != "utkface" and not align:
        raise ConfigError(
            f"{key}: model {config.model.name!r} expects faces framed as {name!r} "
            "(agegender.infer.align.FACE_TEMPLATES); set it to true so every face is cut "
            "through the face path to that framing"
        )


def _framing(
    crop: Sequence[float] | None, format: str, align: bool, template: Sequence | None = None
) -> tuple:
    """The landmark template of a dataset's cached faces: ``template`` (default UTKFace's)
    when aligned by the face path, UTKFace's when cut with its reader's own box, else
    scaled by ``crop``."""
    from agegender.data.readers import default_crop
    from agegender.infer.align import UTKFACE_TEMPLATE, framing_template

    if align:
        return UTKFACE_TEMPLATE if template is None else tuple(map(tuple, template))
    return framing_template(crop, default_crop(format))


def _source_name(path: str) -> str:
    return Path(path).name or str(path)


def _add_extra(
    config: Config,
    table: pd.DataFrame,
    images: np.ndarray,
    cache_rows: np.ndarray,
    splits: Splits,
    info: dict,
    size: int,
    progress: bool,
    row_counts: list[RowCounts],
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, Splits]:
    """Append ``data.extra`` datasets: each is read, cached at ``size`` through its own
    face box and split by its own groups into training (drawn ``weight`` times per epoch)
    and validation rows; the test split stays the main dataset's. Rows get a ``source``;
    each dataset's :class:`RowCounts` is appended to ``row_counts``."""
    from agegender.data.readers import default_crop, sample_rows
    from agegender.infer.align import FRAMING_TOLERANCE, template_gap

    d = config.data
    tables = [table.assign(source=_source_name(d.path))]
    arrays = [np.asarray(images[cache_rows])]
    train, val = [splits.train], [splits.val]
    offset = len(table)
    rng = np.random.default_rng(d.seed)
    for k, extra in enumerate(d.extra):
        key = f"data.extra[{k}]"
        name = extra.name or _source_name(extra.path)
        try:
            x = read_rows(extra.path, extra.format, audit=False)
        except DatasetError as exc:
            raise ConfigError(f"{key}.path: {exc}") from None
        result, xt, counts = x.result, x.table, x.counts
        labelled = xt[_useful(config, xt)]
        counts.reject("no_task_labels", len(xt) - len(labelled))
        if extra.limit is not None and extra.limit < len(labelled):
            counts.reject("limit", len(labelled) - extra.limit)
        xt = sample_rows(labelled, extra.limit, d.seed)
        if xt.empty:
            raise ConfigError(f"{key}.path: no faces with labels for this task in {extra.path}")
        crop = extra.crop if extra.crop is not None else default_crop(result.format)
        _check_model_framing(config, f"{key}.align", extra.align)
        framing = _framing(extra.crop, result.format, extra.align, info["face_template"])
        gap = template_gap(framing, info["face_template"])
        if gap > FRAMING_TOLERANCE:
            raise ConfigError(
                f"{key}.crop: its faces would be framed unlike data.path's (landmarks up to "
                f"{100 * gap:.0f} % of the side apart); one model needs one framing: set the "
                "same kind of box for both"
            )
        x_images, x_rows, ok, failures = _load_images(
            xt, size, d.cache_dir, progress, crop, extra.align, model_face_template(config)
        )
        reject_failed_images(counts, failures)
        row_counts.append(counts)
        xt, x_rows = xt[ok].reset_index(drop=True), x_rows[ok]
        if extra.val_fraction > 0:
            xs = split_by_fractions(xt, [1 - extra.val_fraction, extra.val_fraction], d.seed)
            x_train, x_val = xs.train, xs.val
        else:
            x_train, x_val = np.arange(len(xt)), np.array([], dtype=np.int64)
        whole, part = divmod(extra.weight, 1.0)
        drawn = [x_train] * int(whole)
        if part > 0:
            drawn.append(rng.choice(x_train, round(part * len(x_train)), replace=False))
        x_train = np.sort(np.concatenate(drawn)) if drawn else x_train[:0]
        tables.append(xt.assign(source=name))
        arrays.append(np.asarray(x_images[x_rows]))
        train.append(x_train + offset)
        val.append(x_val + offset)
        info["sources"][name] = {
            "read": int(len(result.table)),
            "used": int(len(xt)),
            "train": int(len(x_train)),
            "val": int(len(x_val)),
            "undecodable": int((~ok).sum()),
            "crop": None if crop is None else [float(c) for c in crop],
            "row_counts": counts.to_dict(),
        }
        offset += len(xt)
    merged = pd.concat(tables, ignore_index=True)
    all_images = np.concatenate(arrays)
    new_splits = Splits(
        train=np.concatenate(train),
        val=np.concatenate(val),
        test=splits.test,
        how=splits.how + f" + {len(d.extra)} extra dataset(s) in train/val",
        groups=splits.groups,
        notes=list(splits.notes),
    )
    return merged, all_images, np.arange(len(merged), dtype=np.int64), new_splits


def _stored_features(
    config: Config,
    module: Any,
    data: PreparedData,
    resume_from: Path | None,
    printer: Callable[[str], Any] | None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``model.precompute_blocks``: the stored output of the frozen first blocks for every
    table row (``train/features.py``), with its row map and what was done."""
    from agegender.models import load_weights, read_state_dict
    from agegender.train.features import precompute_features

    m = config.model
    if resume_from is not None:  # the frozen blocks' weights as the run had them
        load_weights(module.model, read_state_dict(resume_from), source=str(resume_from))
    try:
        feats, info = precompute_features(
            module.model,
            data.images,
            data.cache_rows,
            data.table["path"].astype(str).tolist(),
            int(m.precompute_blocks),
            module.preprocess,
            flip=config.augment.get("hflip") is not None,
            cache_dir=config.data.cache_dir,
            unfrozen_last_n=m.unfreeze_last_n if m.unfreeze_at_epoch is not None else None,
            printer=printer or (lambda _: None),
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if printer is not None:
        how = "reused" if info["reused"] else f"computed in {info['seconds']:.0f} s"
        printer(
            f"features of the first {info['blocks']} blocks, {len(feats):,} faces x "
            f"{info['shape']}: {how} ({info['file']})"
        )
    return feats, np.arange(len(feats), dtype=np.int64), info


def _resume_summary(out: Path, resume: bool) -> dict[str, Any]:
    """The summary.json of a finished run being resumed (more epochs), else {}."""
    if not resume or not (out / "summary.json").is_file():
        return {}
    try:
        return json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def _total_train_time(throughput: Any, this_run: float, previous: dict[str, Any]) -> float:
    """Training wall time over every session of the run: the time before a resume comes
    from the checkpoint (older checkpoints without it: from the previous summary.json)."""
    if throughput.prior_seconds > 0:
        return max(this_run, throughput.total_seconds())
    return this_run + float(previous.get("train_time_total_s", 0.0))


# --------------------------------------------------------------------------- trainer
def _loggers(config: Config, out: Path) -> list:
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


def _callbacks(config: Config, out: Path, progress: bool, printer: Callable) -> dict[str, Any]:
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
    if es.patience is not None:
        cbs["early_stopping"] = EarlyStopping(
            monitor=es.monitor, mode=es.resolved_mode, patience=es.patience, min_delta=es.min_delta
        )
    m = config.model
    if m.freeze_backbone:
        cbs["freeze"] = BackboneFreeze(m.unfreeze_at_epoch, m.unfreeze_last_n, m.backbone_lr_factor)
    if progress:
        from lightning.pytorch.callbacks import RichProgressBar

        cbs["progress"] = RichProgressBar(leave=True)
    else:
        cbs["printer"] = EpochPrinter(printer)
    return cbs


def best_row(rows: pd.DataFrame | None, metric: str, mode: str) -> dict | None:
    """The ``metrics.csv`` row (empty cells left out) of the epoch where ``metric`` is best:
    ``mode`` is ``max``/``maximize`` or ``min``/``minimize``; None when it was never logged.
    ``summary.json``'s "best" and a sweep trial's value both come from here."""
    if rows is None or metric not in rows.columns or rows[metric].notna().sum() == 0:
        return None
    values = rows[metric].astype(float)
    idx = values.idxmax() if mode in ("max", "maximize") else values.idxmin()
    return {k: v for k, v in rows.loc[idx].to_dict().items() if pd.notna(v)}


def _epochs_run(rows: pd.DataFrame, fallback: int) -> int:
    """Epochs with training or validation metrics in ``metrics.csv``."""
    cols = [c for c in rows.columns if c.startswith(("train/", "val/"))]
    if "epoch" not in rows or not cols:
        return int(fallback)
    fit_rows = rows.dropna(subset=cols, how="all")
    return int(fit_rows["epoch"].max()) + 1 if len(fit_rows) else int(fallback)


def _model_stats(model: Any) -> dict:
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return {
        "params": int(params),
        "trainable_params": int(trainable),
        "model_size_mb": round(nbytes / 2**20, 3),
    }


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating | float):
        return None if np.isnan(obj) else float(obj)
    return obj


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


# --------------------------------------------------------------------------- train
def train(
    config: Config | str | Path,
    out_dir: str | Path,
    resume: bool = False,
    *,
    overrides: Sequence[str] = (),
    callbacks: Sequence[Any] = (),
    progress: bool | None = None,
    printer: Callable[[str], Any] = print,
    data_printer: Callable[[str], Any] | None = None,
) -> RunResult:
    """Train the model described by ``config`` into ``out_dir`` (see the module docstring).

    ``config``: a :class:`Config` or a YAML path (``overrides`` apply to a path).
    ``resume``: continue from ``out_dir/checkpoints/last.ckpt`` (epochs/metrics continue).
    ``callbacks``: extra Lightning callbacks. ``progress``: rich progress bar (default:
    when stderr is a terminal and ``train.progress_bar``), else one line per epoch.
    ``data_printer`` (default ``printer``) gets one line per dataset read: the rows read,
    kept and rejected (also in ``summary.json`` under ``dataset.row_counts``).
    Raises :class:`ConfigError` / ``DatasetError`` (one line) for bad input.
    """
    import lightning as L
    import torch

    from agegender.artifact import make_meta
    from agegender.data.datamodule import FaceDataModule, source_names
    from agegender.models import load_weights, read_state_dict
    from agegender.train.distill import teacher_outputs, with_fold
    from agegender.train.module import FaceModule

    quiet_lightning()
    if not isinstance(config, Config):
        config = load_config(config, list(overrides))
    out = Path(out_dir).resolve()
    last = out / "checkpoints" / "last.ckpt"
    rank0 = is_rank_zero()
    if resume and not last.is_file():
        raise ConfigError(f"--resume: no checkpoint to resume from at {last}")
    if not resume and last.is_file() and rank0:
        raise ConfigError(
            f"--out: {out} already holds a run; pass --resume to continue it or choose another"
            " --out"
        )
    config = with_fold(config, config.data.fold)
    check_files(config)
    check_environment(config)
    size, input_size = resolve_sizes(config)
    config = config.model_copy(
        update={"data": config.data.model_copy(update={"size": size, "input_size": input_size})}
    )
    if progress is None:
        progress = bool(config.train.progress_bar and sys.stderr.isatty())

    data = prepare_data(config, progress=progress and rank0)
    if rank0:
        for counts in data.row_counts:
            (data_printer or printer)(counts.line())

    if config.trainer.threads:
        torch.set_num_threads(config.trainer.threads)
    teacher: dict[str, np.ndarray] = {}
    distill_info = None
    if config.distill is not None:
        teacher, distill_info = teacher_outputs(
            config, data, out, printer=printer if rank0 else (lambda _: None), progress=progress
        )
    L.seed_everything(config.train.seed, workers=True, verbose=False)
    precision = resolve_precision(config)
    meta = make_meta(
        config,
        size=size,
        input_size=input_size,
        code_version=code_version(),
        template=data.info.get("face_template"),
    )
    config_dict = config.model_dump(mode="json")
    module = FaceModule(
        config_dict,
        meta,
        pretrained_file=None if resume else config.model.pretrained_file,
        pretrained=None if resume else config.model.pretrained,
        sources=source_names(data.table),
    )
    init_report = None
    if config.model.init_from and not resume:
        try:
            state = read_state_dict(config.model.init_from)
            init_report = load_weights(module.model, state, source=config.model.init_from)
        except (ValueError, FileNotFoundError) as exc:
            raise ConfigError(f"model.init_from: {exc}") from None

    images, cache_rows, features_info = data.images, data.cache_rows, None
    if config.model.precompute_blocks is not None:
        images, cache_rows, features_info = _stored_features(
            config, module, data, last if resume else None, printer if rank0 else None
        )

    if rank0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(config.to_yaml(), encoding="utf-8")

    use_gpu = config.trainer.accelerator in ("gpu", "cuda") or (
        config.trainer.accelerator == "auto" and torch.cuda.is_available()
    )
    dm = FaceDataModule(
        images,
        data.table,
        data.splits,
        cache_rows=cache_rows,
        batch_size=config.train.batch_size,
        eval_batch_size=config.train.eval_batch_size or 2 * config.train.batch_size,
        num_workers=config.train.num_workers,
        seed=config.train.seed,
        pin_memory=use_gpu,
        extra_labels=teacher,
    )
    cbs = _callbacks(config, out, progress, printer)
    t = config.trainer
    trainer = L.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=precision,
        max_epochs=config.train.epochs,
        deterministic=config.train.deterministic,
        callbacks=[*cbs.values(), *callbacks],
        logger=_loggers(config, out),
        default_root_dir=str(out),
        log_every_n_steps=config.train.log_every_n_steps,
        gradient_clip_val=config.train.gradient_clip_val,
        accumulate_grad_batches=config.train.accumulate_grad_batches,
        limit_train_batches=config.train.limit_train_batches,
        limit_val_batches=config.train.limit_val_batches,
        use_distributed_sampler=False,  # the batch sampler shards by rank itself
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
        warnings.filterwarnings("ignore", message=".*Checkpoint directory.*")
        warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer`.*")
        warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")  # frozen BN
        started = time.perf_counter()
        trainer.fit(
            module, datamodule=dm, ckpt_path=str(last) if resume else None, weights_only=True
        )
        train_time = time.perf_counter() - started
        # read before trainer.test, which restores the callbacks' states from best.ckpt
        train_total = _total_train_time(cbs["throughput"], train_time, _resume_summary(out, resume))
        throughput = list(cbs["throughput"].history)
        best_path = cbs["best"].best_model_path or None
        test_metrics: dict[str, float] = {}
        if data.splits.test is not None:
            results = trainer.test(
                module, datamodule=dm, ckpt_path=best_path, verbose=False, weights_only=True
            )
            test_metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}

    rows = read_epoch_metrics(out / "metrics.csv")
    es = config.train.early_stopping
    steady = throughput[1:] if len(throughput) > 1 else throughput
    es_cb = cbs.get("early_stopping")
    summary = {
        "name": config.name,
        "model": config.model.name,
        "tasks": meta["tasks"],
        "size": size,
        "input_size": input_size,
        "epochs_run": _epochs_run(rows, trainer.current_epoch),
        "max_epochs": config.train.epochs,
        "stopped_early": bool(es_cb is not None and es_cb.stopped_epoch > 0),
        "monitor": es.monitor,
        "mode": es.resolved_mode,
        "best": best_row(rows, es.monitor, es.resolved_mode),
        "last": rows.iloc[-1].dropna().to_dict() if len(rows) else None,
        "test": test_metrics or None,
        **_model_stats(module.model),
        "train_time_s": round(train_time, 2),
        "train_time_total_s": round(train_total, 2),
        "train_images_per_sec": round(float(np.median(steady)), 1) if steady else None,
        "images_per_sec_by_epoch": [round(x, 1) for x in throughput],
        "dataset": data.info,
        "weights": meta["weights"],
        "init_from": config.model.init_from,
        "init_report": {k: len(v) for k, v in init_report.items()} if init_report else None,
        "distill": distill_info,
        "precomputed_features": features_info,
        "precision": precision,
        "accelerator": str(trainer.accelerator.__class__.__name__),
        "world_size": trainer.world_size,
        "checkpoints": {"best": best_path, "last": str(last)},
        "code_version": meta["code_version"],
        "resumed": resume,
    }
    summary = _clean(summary)
    if trainer.is_global_zero:
        (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return RunResult(out, summary, Path(best_path) if best_path else None, last, rows)


__all__ = [
    "PreparedData",
    "RunResult",
    "prepare_data",
    "resolve_sizes",
    "train",
    "DatasetError",
]
