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

import json
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from agegender import __version__
from agegender.config import Config, ConfigError, check_files, load_config
from agegender.data.records import DatasetError
from agegender.fileio import read_epoch_metrics
from agegender.train.data import PreparedData, prepare_data, resolve_sizes
from agegender.train.trainer_kit import make_callbacks, make_loggers, quiet_lightning


@dataclass
class RunResult:
    """What :func:`train` returns (on every rank; files are written by rank 0)."""

    out_dir: Path
    summary: dict
    best_checkpoint: Path | None
    last_checkpoint: Path
    metrics: pd.DataFrame = field(default_factory=pd.DataFrame)


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


def _balance_info(balance: str, weights: np.ndarray | None, power: float = 0.0) -> dict[str, Any]:
    """``data.balance`` and how far its draws move from plain sampling: the fewest and
    most draws of one face an epoch, expected (1 for every face without balancing)."""
    if weights is None:
        return {"mode": balance}
    per_face = weights * len(weights)
    return {
        "mode": balance,
        "power": power,
        "draws_per_face_min": round(float(per_face.min()), 3),
        "draws_per_face_max": round(float(per_face.max()), 3),
    }


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
            draws=m.precompute_augmented,
            seed=config.train.seed,
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
        balance=config.data.balance,
        balance_power=config.data.balance_power,
    )
    cbs = make_callbacks(config, out, progress, printer)
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
        logger=make_loggers(config, out),
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
        "balance": _balance_info(config.data.balance, dm.train_weights, config.data.balance_power),
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
