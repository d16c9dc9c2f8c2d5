"""Hyperparameter sweeps on Optuna: any config key, any validation metric, many workers.

``agegender sweep CONFIG.yaml --space SPACE.yaml`` runs trials of :func:`agegender.train.train`
with the config's keys overridden per trial, and records them in an Optuna study. SPACE.yaml::

    metric: val/gender_acc     # any val/* metric the config's task logs
    direction: maximize        # optional: inferred (acc/auc -> maximize, loss/mae -> minimize)
    trials: 20                 # optional: default for --trials (grid: the grid size, TPE: 20)
    seed: 0                    # optional: sampler seed (grid order, TPE)
    startup_trials: 10         # optional: TPE's random trials before it models the space
    pruner: {name: median, warmup_epochs: 1, startup_trials: 2}   # or none / hyperband
    params:                    # config keys as for --set, list items as key.N
      optim.lr: {log_range: [1.0e-4, 1.0e-2]}          # float, log-uniform
      train.batch_size: {choice: [32, 64, 128]}        # categorical (TPE)
      model.dropout.0: {range: [0.0, 0.5]}             # float, uniform
      train.epochs: {range: [2, 8], step: 1}           # int when low, high and step are ints
      model.head_hidden.0: {grid: [256, 512, 1024]}    # every value (GridSampler)

Kinds: ``grid`` and ``choice`` take a list of values (scalars, or lists such as
``[512, 256]`` for a whole list-valued key); ``range`` takes ``[low, high]`` and an optional
``step`` (int parameter when low, high and step are all integers, else float);
``log_range`` takes ``[low, high]`` with ``0 < low < high`` (``step: 1`` for integers).
If every parameter is a ``grid`` the study uses Optuna's GridSampler (every combination
once); otherwise TPE. ``grid`` cannot be mixed with the other kinds (use ``choice``).
The pruner (default: ``median`` for TPE, ``none`` for a grid) stops poor trials from the
metric reported after every validation epoch: ``median`` (``warmup_epochs``: epochs never
pruned, ``startup_trials``: trials finished before pruning starts) or ``hyperband``
(``min_epochs``, ``reduction_factor``; ``train.epochs`` is the largest budget).

The space is checked against the config before any work: every value it can take for each
key (each grid/choice value, range ends) goes through ``--set`` and config validation, and
the model is built (on the meta device) with the lowest and the highest values; errors are
one line naming the key, e.g. ``params.optim.lr: log_range needs 0 < low``.

A trial's value is the best per-epoch value of the metric (max or min over epochs); the
pruner sees every epoch. Layout of a sweep directory (``runs/sweeps/STUDY`` by default)::

    study.db                    the Optuna study (default storage sqlite:///OUT/study.db)
    trial_<N>/                  a normal run directory per trial (config.yaml, metrics.csv,
                                checkpoints/, summary.json, train.log)
    summary.json, *.png         written by ``agegender sweep --summary``

Workers: any database URL Optuna supports (``--storage postgresql://...``) lets several
``agegender sweep`` processes on several machines share one study (same ``--study``); the
grid is split without repeats and ``--trials N`` is the total of finished (complete or
pruned) trials over all workers. Re-running the same command resumes: finished trials are
kept, a trial whose worker died (heartbeat older than the grace period, or a dead process on
this host) is marked FAIL and queued again, continuing from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import itertools
import json
import logging
import math
import os
import re
import socket
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch.callbacks import Callback

from agegender.config import (
    Config,
    ConfigError,
    apply_overrides,
    logged_metrics,
    parse_override,
    read_yaml,
    validate_config,
)

KINDS = ("grid", "choice", "range", "log_range")
PRUNERS = ("none", "median", "hyperband")
TOP_KEYS = ("description", "metric", "direction", "trials", "seed", "startup_trials", "pruner")
DEFAULT_TPE_TRIALS = 20
#: Seconds between a running trial's heartbeats, and without one before it counts as dead.
HEARTBEAT_S = 30
GRACE_S = 120
#: Consecutive failed trials after which a worker gives up.
MAX_CONSECUTIVE_FAILURES = 3


class SpaceError(ConfigError):
    """An invalid search space or sweep request; ``str()`` is one line naming the key."""


# --------------------------------------------------------------------------- space
def format_value(value: Any) -> str:
    """A value as YAML text that ``--set`` parses back to the same value."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 20)
    if text.endswith("\n...\n"):
        text = text[:-5]
    return text.strip()


_EXP_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _number(value: Any) -> Any:
    """YAML 1.1 reads ``1e-4`` as a string: treat such strings as floats."""
    if isinstance(value, str) and _EXP_FLOAT.match(value.strip()):
        return float(value)
    return value


@dataclass(frozen=True)
class Param:
    """One swept config key."""

    key: str
    kind: str
    values: tuple = ()  # grid / choice: the config values
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    is_int: bool = False

    @property
    def log(self) -> bool:
        return self.kind == "log_range"

    @property
    def choices(self) -> list:
        """grid/choice values as Optuna stores them (lists become their YAML text)."""
        return [format_value(v) if isinstance(v, list | dict) else v for v in self.values]

    def decode(self, stored: Any) -> Any:
        """The config value for a value Optuna stored."""
        if self.values:
            for raw, enc in zip(self.values, self.choices, strict=True):
                if enc == stored:
                    return raw
        return stored

    def distribution(self) -> Any:
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.values:
            return CategoricalDistribution(self.choices)
        if self.is_int:
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=self.step or 1)
        return FloatDistribution(
            float(self.low), float(self.high), log=self.log, step=None if self.log else self.step
        )

    def suggest(self, trial: Any) -> Any:
        """Ask ``trial`` for this parameter; returns the config value."""
        if self.values:
            return self.decode(trial.suggest_categorical(self.key, self.choices))
        if self.is_int:
            return trial.suggest_int(
                self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        step = None if self.log else self.step
        return trial.suggest_float(
            self.key, float(self.low), float(self.high), step=step, log=self.log
        )

    def check_values(self) -> list:
        """Values to validate against the config: all grid/choice values, else the range
        ends and (float ranges) a non-round value inside."""
        if self.values:
            return list(self.values)
        if self.is_int:
            return [int(self.low), int(self.high)]
        lo, hi = float(self.low), float(self.high)
        inner = math.exp(math.log(lo) + 0.37 * (math.log(hi) - math.log(lo))) if self.log else None
        if inner is None:
            inner = lo + 0.37 * (hi - lo)
            if self.step:
                inner = lo + round((inner - lo) / self.step) * self.step
        return [lo, hi, inner]

    def lowest(self) -> Any:
        return self.values[0] if self.values else (int(self.low) if self.is_int else self.low)

    def highest(self) -> Any:
        return self.values[-1] if self.values else (int(self.high) if self.is_int else self.high)

    def describe(self) -> str:
        if self.values:
            return f"{self.kind} {list(self.values)}"
        step = f" step {self.step}" if self.step else ""
        kind = "int " if self.is_int else ""
        return f"{kind}{self.kind} [{self.low}, {self.high}]{step}"


@dataclass
class Space:
    """A parsed SPACE.yaml (see the module docstring)."""

    metric: str
    direction: str
    params: dict[str, Param]
    trials: int | None = None
    seed: int = 0
    startup_trials: int = 10
    pruner: dict = field(default_factory=dict)
    description: str = ""
    source: str = "SPACE"

    @property
    def is_grid(self) -> bool:
        return all(p.kind == "grid" for p in self.params.values())

    @property
    def grid_size(self) -> int:
        return math.prod(len(p.values) for p in self.params.values()) if self.is_grid else 0

    def grid_search_space(self) -> dict[str, list]:
        return {k: p.choices for k, p in self.params.items()}

    def default_trials(self) -> int:
        if self.is_grid:
            return min(self.trials or self.grid_size, self.grid_size)
        return self.trials or DEFAULT_TPE_TRIALS

    def fingerprint(self) -> dict:
        """What must match for a worker to join an existing study."""
        return {
            "metric": self.metric,
            "direction": self.direction,
            "params": {k: p.describe() for k, p in sorted(self.params.items())},
        }

    def sampler(self, n_existing: int = 0) -> Any:
        """GridSampler for an all-grid space (same seed in every worker: the grid order must
        agree), else TPE seeded with ``seed + n_existing`` (reproducible with one worker,
        different draws for workers that start at different points of the study)."""
        import optuna

        if self.is_grid:
            return optuna.samplers.GridSampler(self.grid_search_space(), seed=self.seed)
        return optuna.samplers.TPESampler(
            seed=self.seed + n_existing, n_startup_trials=self.startup_trials, constant_liar=True
        )

    def make_pruner(self, epochs: int) -> Any:
        import optuna

        p = self.pruner
        name = p.get("name", "none" if self.is_grid else "median")
        if name == "median":
            return optuna.pruners.MedianPruner(
                n_startup_trials=int(p.get("startup_trials", 2)),
                n_warmup_steps=int(p.get("warmup_epochs", 1)),
            )
        if name == "hyperband":
            return optuna.pruners.HyperbandPruner(
                min_resource=int(p.get("min_epochs", 1)),
                max_resource=max(int(epochs), int(p.get("min_epochs", 1)) + 1),
                reduction_factor=int(p.get("reduction_factor", 3)),
            )
        return optuna.pruners.NopPruner()

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"metric": self.metric, "direction": self.direction}
        for key in ("trials", "seed", "startup_trials", "pruner", "description"):
            value = getattr(self, key)
            if value not in (None, "", {}):
                out[key] = value
        params = {}
        for k, p in self.params.items():
            if p.values:
                params[k] = {p.kind: list(p.values)}
            else:
                params[k] = {p.kind: [p.low, p.high], **({"step": p.step} if p.step else {})}
        out["params"] = params
        return out


def infer_direction(metric: str) -> str | None:
    """``maximize`` for accuracies / AUC, ``minimize`` for losses / MAE, else None."""
    name = metric.rsplit("/", 1)[-1].lower()
    if any(t in name for t in ("acc", "auc", "cs5", "f1")):
        return "maximize"
    if any(t in name for t in ("loss", "mae", "err", "ece")):
        return "minimize"
    return None


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _parse_param(key: str, spec: Any) -> Param:
    where = f"params.{key}"
    try:
        parse_override(f"{key}=0")
    except ConfigError:
        raise SpaceError(
            f"{where}: not a config key (write it as for --set, e.g. optim.lr)"
        ) from None
    if not isinstance(spec, dict):
        raise SpaceError(
            f"{where}: expected a mapping with one of {', '.join(KINDS)} "
            f"(e.g. {{grid: [1, 2]}}), got {spec!r}"
        )
    kinds = [k for k in spec if k in KINDS]
    extra = [k for k in spec if k not in KINDS and k != "step"]
    if extra:
        close = difflib.get_close_matches(str(extra[0]), [*KINDS, "step"], n=1)
        hint = f"; did you mean {close[0]}?" if close else f"; use one of {', '.join(KINDS)}"
        raise SpaceError(f"{where}.{extra[0]}: unknown kind{hint}")
    if len(kinds) != 1:
        raise SpaceError(
            f"{where}: give exactly one of {', '.join(KINDS)}"
            + (f" (got {', '.join(kinds)})" if kinds else "")
        )
    kind = kinds[0]
    value = spec[kind]
    step = _number(spec.get("step"))
    if kind in ("grid", "choice"):
        if "step" in spec:
            raise SpaceError(f"{where}.step: only for range and log_range")
        if not isinstance(value, list) or not value:
            raise SpaceError(f"{where}: {kind} needs a non-empty list of values")
        values = [_number(v) for v in value]
        for v in values:
            if not (v is None or isinstance(v, str | int | float | bool | list)):
                raise SpaceError(f"{where}: {kind} values must be scalars or lists (got {v!r})")
        texts = [format_value(v) for v in values]
        dup = next((t for t in texts if texts.count(t) > 1), None)
        if dup is not None:
            raise SpaceError(f"{where}: {kind} value {dup} appears more than once")
        return Param(key, kind, values=tuple(values))
    if not isinstance(value, list) or len(value) != 2:
        raise SpaceError(f"{where}: {kind} needs [low, high]")
    lo, hi = (_number(v) for v in value)
    if not (_is_num(lo) and _is_num(hi)):
        raise SpaceError(f"{where}: {kind} bounds must be numbers (got {value!r})")
    if not lo < hi:
        raise SpaceError(f"{where}: {kind} needs low < high (got [{lo}, {hi}])")
    if kind == "log_range" and lo <= 0:
        raise SpaceError(f"{where}: log_range needs 0 < low (got {lo})")
    if step is not None:
        if not _is_num(step) or step <= 0:
            raise SpaceError(f"{where}.step: must be a number > 0 (got {step!r})")
        if kind == "log_range" and step != 1:
            raise SpaceError(f"{where}.step: log_range takes only step: 1 (an int parameter)")
    is_int = step is not None and all(isinstance(v, int) for v in (lo, hi, step))
    if kind == "log_range" and step is not None and not is_int:
        raise SpaceError(f"{where}.step: step 1 on a log_range needs integer bounds")
    if step is not None and step > hi - lo:
        raise SpaceError(f"{where}.step: {step} is larger than high - low")
    return Param(key, kind, low=lo, high=hi, step=step, is_int=is_int)


def _check_pruner(raw: Any) -> dict:
    if raw is None:
        return {}
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict):
        raise SpaceError(f"pruner: expected none, median, hyperband or a mapping (got {raw!r})")
    name = raw.get("name", "median")
    if name not in PRUNERS:
        raise SpaceError(f"pruner.name: unknown pruner {name!r}; choose {', '.join(PRUNERS)}")
    allowed = {
        "none": (),
        "median": ("warmup_epochs", "startup_trials"),
        "hyperband": ("min_epochs", "reduction_factor"),
    }[name]
    for key, value in raw.items():
        if key == "name":
            continue
        if key not in allowed:
            takes = ", ".join(allowed) or "no options"
            raise SpaceError(f"pruner.{key}: unknown for the {name} pruner (it takes {takes})")
        low = 2 if key == "reduction_factor" else 1 if key == "min_epochs" else 0
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise SpaceError(f"pruner.{key}: must be an integer >= {low} (got {value!r})")
    return {**raw, "name": name}


def parse_space(raw: Any, source: str = "SPACE") -> Space:
    """Check the structure of a space mapping (not against a config) and build a Space."""
    if not isinstance(raw, dict):
        raise SpaceError("space must be a mapping with metric: and params:")
    for key in raw:
        if key not in (*TOP_KEYS, "params"):
            close = difflib.get_close_matches(str(key), [*TOP_KEYS, "params"], n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise SpaceError(f"{key}: unknown key{hint}")
    metric = raw.get("metric")
    if not isinstance(metric, str) or not metric:
        raise SpaceError("metric: required, e.g. metric: val/gender_acc")
    if not metric.startswith("val/"):
        raise SpaceError(f"metric: must be a validation metric val/... (got {metric!r})")
    direction = raw.get("direction")
    if direction is None:
        direction = infer_direction(metric)
        if direction is None:
            raise SpaceError(
                f"direction: cannot infer it for {metric!r}; give direction: maximize or minimize"
            )
    direction = {"max": "maximize", "min": "minimize"}.get(direction, direction)
    if direction not in ("maximize", "minimize"):
        raise SpaceError(f"direction: must be maximize or minimize (got {raw['direction']!r})")
    for key, low in (("trials", 1), ("seed", 0), ("startup_trials", 0)):
        v = raw.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < low):
            raise SpaceError(f"{key}: must be an integer >= {low} (got {v!r})")
    params_raw = raw.get("params")
    if not isinstance(params_raw, dict) or not params_raw:
        raise SpaceError("params: required, a mapping of config keys to search ranges")
    params = {str(k): _parse_param(str(k), v) for k, v in params_raw.items()}
    grids = [k for k, p in params.items() if p.kind == "grid"]
    others = [k for k, p in params.items() if p.kind != "grid"]
    if grids and others:
        raise SpaceError(
            f"params.{grids[0]}: grid cannot be mixed with choice/range/log_range "
            f"(params.{others[0]}): an all-grid space runs every combination (GridSampler), "
            "any other runs TPE; write choice instead of grid"
        )
    keys = list(params)
    for a, b in itertools.combinations(keys, 2):
        if b.startswith(a + ".") or a.startswith(b + "."):
            raise SpaceError(f"params.{b}: overlaps params.{a}")
    return Space(
        metric=metric,
        direction=direction,
        params=params,
        trials=raw.get("trials"),
        seed=int(raw.get("seed") or 0),
        startup_trials=int(raw.get("startup_trials", 10)),
        pruner=_check_pruner(raw.get("pruner")),
        description=str(raw.get("description") or ""),
        source=source,
    )


def read_space(path: str | Path) -> Space:
    """Read and parse SPACE.yaml; errors start with the file name."""
    try:
        raw = read_yaml(path)
        return parse_space(raw, str(path))
    except SpaceError as exc:
        raise SpaceError(f"{path}: {exc}") from None
    except ConfigError as exc:
        raise SpaceError(str(exc).replace("config must be", "space must be")) from None


def trial_overrides(space: Space, values: dict[str, Any]) -> list[str]:
    """``--set`` texts for one trial's config values."""
    return [f"{key}={format_value(values[key])}" for key in space.params]


def _validated(raw: dict, overrides: list[str], base_dir: Path) -> Config:
    return validate_config(apply_overrides(copy.deepcopy(raw), overrides), base_dir=base_dir)


def _check_model(config: Config) -> None:
    """Build the model on the meta device (catches e.g. a dropout list of the wrong length)."""
    import torch

    from agegender.models import TaskSpec, create_model
    from agegender.train.module import model_options
    from agegender.train.run import resolve_sizes

    resolve_sizes(config)
    with torch.device("meta"):
        create_model(
            config.model.name,
            TaskSpec(gender=config.task.gender, age=config.task.age),
            **model_options(config),
        )


def check_space(
    space: Space,
    config_path: str | Path,
    overrides: Sequence[str] = (),
    *,
    build_model: bool = True,
) -> Config:
    """Check ``space`` against the config (see the module docstring); returns the base config.

    Raises :class:`SpaceError` (one line naming the space key) or ``ConfigError`` for the
    config itself.
    """
    config_path = Path(config_path)
    raw = read_yaml(config_path)
    base_dir = config_path.resolve().parent
    overrides = list(overrides)
    for text in overrides:
        path, _ = parse_override(text)
        dotted = ".".join(map(str, path))
        for key in space.params:
            if dotted == key or dotted.startswith(key + ".") or key.startswith(dotted + "."):
                raise SpaceError(f"--set {dotted}: also a sweep parameter (params.{key})")
    try:
        base = _validated(raw, overrides, base_dir)
    except ConfigError as exc:
        raise ConfigError(f"{config_path}: {exc}") from None

    def metric_ok(cfg: Config, where: str) -> None:
        allowed = [m for m in logged_metrics(cfg.task) if m.startswith("val/")]
        if space.metric not in allowed:
            raise SpaceError(
                f"metric: {space.metric!r} is not logged with task.gender={cfg.task.gender}, "
                f"task.age={cfg.task.age}{where}; choose one of {', '.join(allowed)}"
            )

    metric_ok(base, "")
    for key, param in space.params.items():
        for value in param.check_values():
            text = f"{key}={format_value(value)}"
            try:
                cfg = _validated(raw, [*overrides, text], base_dir)
            except ConfigError as exc:
                msg = str(exc).removeprefix(f"--set {key}: ")
                if "unknown key" in msg or "not an item" in msg or "no list item" in msg:
                    raise SpaceError(f"params.{key}: not a key of the config: {msg}") from None
                if "integer" in msg and param.step is None and not param.values:
                    msg += " (write step: 1 for an integer range)"
                raise SpaceError(
                    f"params.{key}: {format_value(value)} is not a valid value for the config: "
                    f"{msg}"
                ) from None
            metric_ok(cfg, f" (with {text})")
    for pick in ("lowest", "highest"):
        values = {k: getattr(p, pick)() for k, p in space.params.items()}
        texts = trial_overrides(space, values)
        try:
            cfg = _validated(raw, [*overrides, *texts], base_dir)
            if build_model:
                _check_model(cfg)
        except (ConfigError, ValueError, TypeError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            keys = ", ".join(f"params.{k}" for k in space.params)
            raise SpaceError(
                f"{keys}: the {pick} values together ({' '.join(texts)}) do not make a valid "
                f"run: {first}"
            ) from None
    return base


# --------------------------------------------------------------------------- pruning
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
        reported = self.trial.storage.get_trial(self.trial._trial_id).intermediate_values
        if epoch not in reported:  # a resumed trial may have reported this epoch already
            self.trial.report(v, step=epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch + 1}: {self.metric} {v:.4g}")


# --------------------------------------------------------------------------- storage
def default_study_name(config_path: str | Path, space_path: str | Path) -> str:
    """``<config name or stem>-<space file stem>``."""
    try:
        name = read_yaml(config_path).get("name")
    except ConfigError:
        name = None
    return f"{name or Path(config_path).stem}-{Path(space_path).stem}"


def default_storage(out: str | Path) -> str:
    return f"sqlite:///{(Path(out) / 'study.db').resolve()}"


def masked(url: str) -> str:
    """The storage URL without its password."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def _sqlite_file(url: str) -> Path | None:
    if not url.startswith("sqlite:///"):
        return None
    name = url[len("sqlite:///") :].split("?", 1)[0]
    return Path(name) if name and name != ":memory:" else None


def make_storage(
    url: str,
    *,
    heartbeat_interval: int | None = HEARTBEAT_S,
    grace_period: int | None = GRACE_S,
    create: bool = True,
) -> Any:
    """An RDBStorage for ``url`` with heartbeats and a retry of trials whose worker died."""
    import inspect

    import optuna
    from optuna.storages import RDBStorage

    file = _sqlite_file(url)
    if file is not None:
        if create:
            file.parent.mkdir(parents=True, exist_ok=True)
        elif not file.is_file():
            raise SpaceError(f"--storage: no study database at {file}")
    kwargs: dict[str, Any] = {}
    if heartbeat_interval:
        retry = _retry_callback()
        params = inspect.signature(RDBStorage.__init__).parameters
        cb = (
            "heartbeat_stale_trial_callback"
            if "heartbeat_stale_trial_callback" in params
            else "failed_trial_callback"
        )
        kwargs = {"heartbeat_interval": heartbeat_interval, "grace_period": grace_period, cb: retry}
    engine = {"connect_args": {"timeout": 120}} if file is not None else None
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, engine_kwargs=engine, **kwargs)
        except Exception as exc:  # sqlalchemy / driver errors: one line
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            # workers starting together race to create a new database's tables
            racing = type(exc).__name__ == "IntegrityError" or any(
                w in first for w in ("locked", "already exists")
            )
            if not racing or attempt == 4:
                raise SpaceError(f"--storage {masked(url)}: cannot open: {first}") from None
            time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")


def load_study(storage: str, study_name: str | None = None) -> Any:
    """Open an existing study (the only one in ``storage`` when no name is given)."""
    import optuna

    st = make_storage(storage, heartbeat_interval=None, create=False)
    names = [s.study_name for s in optuna.get_all_study_summaries(st, include_best_trial=False)]
    if study_name is None:
        if len(names) != 1:
            have = ", ".join(names) if names else "none"
            raise SpaceError(f"--study: {masked(storage)} holds studies {have}; name one")
        study_name = names[0]
    if study_name not in names:
        have = ", ".join(names) if names else "none"
        raise SpaceError(f"--study: no study {study_name!r} in {masked(storage)} (it has {have})")
    return optuna.load_study(study_name=study_name, storage=st)


# --------------------------------------------------------------------------- running
@dataclass
class SweepResult:
    """What :func:`run_sweep` returns."""

    study_name: str
    storage: str
    out_dir: Path
    n_trials: int  # the requested total of finished trials
    finished: int  # COMPLETE + PRUNED trials in the study now
    ran: list[int]  # trial numbers this worker ran (any final state)
    best: dict | None  # {"number", "value", "params"} of the best complete trial
    study: Any = None


class _Skipped(Exception):
    """A claimed trial this worker does not run (a duplicate grid point or over --trials)."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _finished_states() -> tuple:
    from optuna.trial import TrialState

    return (TrialState.COMPLETE, TrialState.PRUNED)


def _params_key(params: dict) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def _retry_callback() -> Any:
    """Optuna's callback that queues a dead worker's trial again (same params, user attrs
    and epoch values); ``RetryHeartbeatStaleTrialCallback`` from Optuna 4.9 on."""
    import optuna
    from optuna import storages

    cls = getattr(storages, "RetryHeartbeatStaleTrialCallback", None)
    cls = cls or storages.RetryFailedTrialCallback  # Optuna < 4.9
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return cls(max_retry=3, inherit_intermediate_values=True)


def _retry(study: Any, frozen: Any) -> None:
    """Queue a failed trial again."""
    _retry_callback()(study, frozen)


def recover_dead_trials(study: Any, printer: Callable[[str], Any] = print) -> list[int]:
    """FAIL (and queue again) RUNNING trials whose worker process on this host is gone,
    and those whose heartbeat is older than the grace period. Returns the failed numbers."""
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = study._storage
    host = socket.gethostname()
    failed: list[int] = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker") or {}
        if worker.get("host") != host or _pid_alive(int(worker.get("pid", -1))):
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, "error", "worker process died")
            if not storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue  # another worker got there first
        _retry(study, storage.get_trial(t._trial_id))
        failed.append(t.number)
        printer(f"trial {t.number}: its worker (pid {worker.get('pid')}) is gone; queued again")
    before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if t.number not in before:
            failed.append(t.number)
            printer(f"trial {t.number}: no heartbeat from its worker; queued again")
    return failed


def _requeue_failed_grid_points(study: Any, printer: Callable[[str], Any]) -> int:
    """GridSampler counts a failed grid point as visited: queue such points once more
    (on every start of a worker), unless a live or finished trial has the same params."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    alive = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    live = {_params_key(t.params) for t in trials if t.state in alive}
    queued = 0
    for t in trials:
        if t.state != TrialState.FAIL or not t.params:
            continue
        key = _params_key(t.params)
        if key in live:
            continue
        live.add(key)
        study.enqueue_trial(t.params, user_attrs={"requeued_from": t.number})
        queued += 1
    if queued:
        printer(f"queued {queued} failed grid point(s) again")
    return queued


def _check_claim(study: Any, trial: Any, n_trials: int, space: Space) -> None:
    """Resolve races between workers: the lower trial number wins."""
    from optuna.trial import TrialState

    live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    others = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number]
    ahead = sum(t.state in live for t in others)
    if ahead >= n_trials:
        raise _Skipped(f"over --trials {n_trials}: another worker took the last trial")
    if space.is_grid:
        mine = _params_key(trial.params)
        for t in others:
            if (t.state in live or t.state == TrialState.WAITING) and _params_key(t.params) == mine:
                raise _Skipped(f"duplicate of trial {t.number}")


def _trial_dir(trial: Any, out: Path) -> tuple[Path, bool]:
    """``(run dir, resume)``: a retried trial continues in its first run's dir."""
    prev = trial.user_attrs.get("run_dir")
    if prev and Path(prev).is_dir():
        return Path(prev), (Path(prev) / "checkpoints" / "last.ckpt").is_file()
    d = out / f"trial_{trial.number}"
    k = 1
    while (d / "checkpoints" / "last.ckpt").exists():  # left over from an older study
        d, k = out / f"trial_{trial.number}.{k}", k + 1
    return d, False


def _best_epoch(rows: Any, metric: str, direction: str) -> dict | None:
    if rows is None or len(rows) == 0 or metric not in rows.columns:
        return None
    values = rows[metric].astype(float)
    if values.notna().sum() == 0:
        return None
    idx = values.idxmax() if direction == "maximize" else values.idxmin()
    row = rows.loc[idx]
    out = {k: float(v) for k, v in row.items() if str(k).startswith("val/") and v == v}
    out["epoch"] = int(row["epoch"]) if "epoch" in row and row["epoch"] == row["epoch"] else None
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def trial_line(trial: Any, metric: str) -> str:
    """One progress line for a finished trial."""
    from optuna.trial import TrialState

    params = " ".join(f"{k}={_fmt(v)}" for k, v in trial.params.items())
    secs = ""
    if trial.datetime_start and trial.datetime_complete:
        secs = f" [{(trial.datetime_complete - trial.datetime_start).total_seconds():.0f} s]"
    if trial.state == TrialState.COMPLETE:
        what = f"{metric} {trial.value:.4f}"
    elif trial.state == TrialState.PRUNED and trial.intermediate_values:
        last = max(trial.intermediate_values)
        what = f"after epoch {last + 1} ({metric} {trial.intermediate_values[last]:.4f})"
    else:
        what = str(trial.user_attrs.get("skipped") or trial.user_attrs.get("error") or "")
    return f"trial {trial.number} {trial.state.name}: {what}  {params}{secs}".rstrip()


def _create_study(storage: Any, name: str, space: Space, epochs: int) -> Any:
    """Create or load the study; workers starting together may race on a new database."""
    import optuna

    for attempt in range(5):
        try:
            return optuna.create_study(
                storage=storage,
                study_name=name,
                direction=space.direction,
                sampler=space.sampler(),
                pruner=space.make_pruner(epochs),
                load_if_exists=True,
            )
        except Exception as exc:  # e.g. sqlite "database is locked", a duplicate insert
            if attempt == 4:
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise SpaceError(f"--study {name}: cannot create or load it: {first}") from None
            time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")


def run_sweep(
    config_path: str | Path,
    space_path: str | Path,
    *,
    trials: int | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    out: str | Path | None = None,
    overrides: Sequence[str] = (),
    printer: Callable[[str], Any] = print,
    heartbeat_interval: int = HEARTBEAT_S,
    grace_period: int = GRACE_S,
) -> SweepResult:
    """Run (or join, or resume) a sweep until the study holds ``trials`` finished trials.

    Everything is checked before any work (:class:`SpaceError` / ``ConfigError``).
    """
    import optuna
    from optuna.trial import TrialState

    from agegender.config import check_files, load_config

    config_path, space_path = Path(config_path), Path(space_path)
    space = read_space(space_path)
    base = check_space(space, config_path, overrides)
    check_files(base)
    devices = base.trainer.devices
    many = isinstance(devices, list) and len(devices) > 1 or devices == -1
    many = many or (isinstance(devices, int) and devices > 1) or base.trainer.num_nodes > 1
    one_id = isinstance(devices, str) and devices.endswith(",") and devices.count(",") == 1
    if many or (isinstance(devices, str) and devices not in ("auto", "1") and not one_id):
        raise SpaceError(
            "trainer.devices: a sweep trains each trial in one process; set trainer.devices=1 "
            "and run one worker per device instead"
        )
    n_trials = trials if trials is not None else space.default_trials()
    if n_trials < 1:
        raise SpaceError(f"--trials: must be >= 1 (got {n_trials})")
    if space.is_grid and n_trials > space.grid_size:
        printer(f"the grid has {space.grid_size} points: running {space.grid_size} trials")
        n_trials = space.grid_size
    study_name = study_name or default_study_name(config_path, space_path)
    out_dir = Path(out or Path("runs") / "sweeps" / study_name).resolve()
    url = storage or default_storage(out_dir)
    st = make_storage(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period)

    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        study = _create_study(st, study_name, space, base.train.epochs)
        stored = study.user_attrs.get("space_fingerprint")
        if stored is None:
            study.set_user_attr("space_fingerprint", space.fingerprint())
            study.set_user_attr("space", space.to_dict())
            study.set_user_attr("metric", space.metric)
            study.set_user_attr("config", str(config_path.resolve()))
            study.set_user_attr("overrides", list(overrides))
            study.set_user_attr("out", str(out_dir))
        elif stored != space.fingerprint():
            raise SpaceError(
                f"--study {study_name}: the study in {masked(url)} was made with another search "
                f"space or metric ({json.dumps(stored)}); use its space or another --study"
            )
        elif study.direction.name.lower() != space.direction:
            raise SpaceError(f"--study {study_name}: the study has direction {study.direction}")

        out_dir.mkdir(parents=True, exist_ok=True)
        recover_dead_trials(study, printer)
        if space.is_grid:
            _requeue_failed_grid_points(study, printer)
        done = len(study.get_trials(deepcopy=False, states=_finished_states()))
        sampler = f"grid of {space.grid_size}" if space.is_grid else "TPE"
        printer(
            f"study {study_name} ({masked(url)}): {space.direction} {space.metric}, {sampler}, "
            f"{done} of {n_trials} trials finished; trial runs in {out_dir}"
        )
        ran = _loop(study, space, config_path, overrides, out_dir, n_trials, printer, load_config)
    finally:
        optuna.logging.set_verbosity(previous)
    finished = len(study.get_trials(deepcopy=False, states=_finished_states()))
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = None
    if complete:
        b = study.best_trial
        best = {"number": b.number, "value": b.value, "params": b.params}
    return SweepResult(study_name, url, out_dir, n_trials, finished, ran, best, study)


@contextlib.contextmanager
def _quiet_lightning_info() -> Any:
    """Hide Lightning's info lines (``Trainer.fit stopped``...): one line per trial only."""
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


def _interrupted(study: Any, trial_id: int) -> None:
    """Mark an interrupted trial FAIL and queue it again (it resumes from its checkpoint)."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = study._storage
    frozen = storage.get_trial(trial_id)
    if frozen.state == TrialState.RUNNING:
        try:
            storage.set_trial_user_attr(trial_id, "error", "interrupted")
            storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
        except UpdateFinishedTrialError:
            return
    elif frozen.state != TrialState.FAIL or frozen.user_attrs.get("skipped"):
        return
    _retry(study, storage.get_trial(trial_id))


def _loop(
    study: Any,
    space: Space,
    config_path: Path,
    overrides: Sequence[str],
    out_dir: Path,
    n_trials: int,
    printer: Callable[[str], Any],
    load_config: Callable,
) -> list[int]:
    import gc

    import optuna
    from optuna.trial import TrialState

    from agegender.train import train

    worker = {"host": socket.gethostname(), "pid": os.getpid()}
    current: dict[str, Any] = {}
    data_lines: set[str] = set()

    def data_line(line: str, log: Any) -> None:
        """A trial's rows read/kept/rejected line: to its train.log, and once to the
        console (trials that read the same data print the same line)."""
        print(line, file=log, flush=True)
        if line not in data_lines:
            data_lines.add(line)
            printer(line)

    def objective(trial: Any) -> float:
        current["number"], current["id"] = trial.number, trial._trial_id
        try:
            return run_trial(trial)
        except (optuna.TrialPruned, _Skipped):
            raise
        except (KeyboardInterrupt, SystemExit):
            trial.set_user_attr("error", "interrupted")
            raise
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            trial.set_user_attr("error", f"{type(exc).__name__}: {first}"[:500])
            raise

    def run_trial(trial: Any) -> float:
        trial.set_user_attr("worker", worker)
        for key in ("error", "skipped"):  # copied from the trial a retry repeats
            if trial.user_attrs.get(key):
                trial.set_user_attr(key, None)
        values = {key: p.suggest(trial) for key, p in space.params.items()}
        try:
            _check_claim(study, trial, n_trials, space)
        except _Skipped as exc:
            trial.set_user_attr("skipped", str(exc))
            raise
        run_dir, resume = _trial_dir(trial, out_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("overrides", trial_overrides(space, values))
        cfg = load_config(config_path, [*overrides, *trial_overrides(space, values)])
        callback = PruningCallback(trial, space.metric)
        log = (run_dir / "train.log").open("a", encoding="utf-8")
        try:
            result = train(
                cfg,
                run_dir,
                resume=resume,
                callbacks=[callback],
                progress=False,
                printer=lambda s: print(s, file=log, flush=True),
                data_printer=lambda s: data_line(s, log),
            )
        except optuna.TrialPruned:
            seen = list(callback.values.values())
            if seen:
                pick = max if space.direction == "maximize" else min
                trial.set_user_attr("best_value_before_pruning", pick(seen))
            trial.set_user_attr(
                "epochs_run", len(trial.storage.get_trial(trial._trial_id).intermediate_values)
            )
            raise
        finally:
            log.close()
        best = _best_epoch(result.metrics, space.metric, space.direction)
        trial.set_user_attr("summary", str(result.out_dir / "summary.json"))
        trial.set_user_attr("row_counts", (result.summary.get("dataset") or {}).get("row_counts"))
        trial.set_user_attr("epochs_run", result.summary.get("epochs_run"))
        if best is None:
            raise RuntimeError(f"{space.metric} was never logged")
        trial.set_user_attr("best_epoch", best.pop("epoch"))
        trial.set_user_attr("best", best)
        return best[space.metric]

    ran: list[int] = []
    failures = 0
    while True:
        recover_dead_trials(study, printer)
        trials = study.get_trials(deepcopy=False)
        finished = sum(t.state in _finished_states() for t in trials)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        waiting = sum(t.state == TrialState.WAITING for t in trials)
        if finished + running >= n_trials:
            break
        if space.is_grid and not waiting:
            claimed = {
                t.system_attrs.get("grid_id")
                for t in trials
                if t.state != TrialState.WAITING and "grid_id" in t.system_attrs
            }
            if len(claimed) >= space.grid_size:
                printer("every grid point has been tried (failed ones are queued on restart)")
                break
        if not space.is_grid:
            study.sampler = space.sampler(len(trials))
        current.clear()
        try:
            with _quiet_lightning_info():
                study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True)
        except (KeyboardInterrupt, SystemExit):  # Lightning exits after a Ctrl-C in fit
            if "id" in current:
                _interrupted(study, current["id"])
            raise KeyboardInterrupt from None
        if "id" not in current:
            continue
        t = study._storage.get_trial(current["id"])
        if t.state == TrialState.FAIL and not t.user_attrs.get("skipped"):
            failures += 1
        elif t.state in _finished_states():
            failures = 0
        ran.append(t.number)
        printer(trial_line(t, space.metric))
        gc.collect()
        if failures >= MAX_CONSECUTIVE_FAILURES:
            raise SpaceError(
                f"{failures} trials failed in a row; last: {t.user_attrs.get('error', '?')} "
                f"(see {t.user_attrs.get('run_dir', out_dir)}/train.log)"
            )
    return ran


# --------------------------------------------------------------------------- summary
def _trial_row(t: Any) -> dict:
    dur = None
    if t.datetime_start and t.datetime_complete:
        dur = round((t.datetime_complete - t.datetime_start).total_seconds(), 1)
    return {
        "number": t.number,
        "state": t.state.name,
        "value": t.value,
        "params": t.params,
        "epochs": t.user_attrs.get("epochs_run") or len(t.intermediate_values) or None,
        "best_epoch": t.user_attrs.get("best_epoch"),
        "duration_s": dur,
        "run_dir": t.user_attrs.get("run_dir"),
        "best_metrics": t.user_attrs.get("best"),
        **({"error": t.user_attrs["error"]} if t.user_attrs.get("error") else {}),
        **({"skipped": t.user_attrs["skipped"]} if t.user_attrs.get("skipped") else {}),
    }


def _ranked(study: Any) -> list:
    """Complete trials best first, then pruned ones by their best reported value."""
    from optuna.trial import TrialState

    sign = -1 if study.direction.name.lower() == "maximize" else 1
    complete = sorted(
        study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
        key=lambda t: sign * t.value,
    )

    def pruned_key(t: Any) -> float:
        vals = list(t.intermediate_values.values())
        return sign * (max(vals) if sign < 0 else min(vals)) if vals else math.inf

    pruned = sorted(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)), key=pruned_key)
    return complete + pruned


def _save(ax: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
    fig.set_size_inches(max(fig.get_size_inches()[0], 8), max(fig.get_size_inches()[1], 5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summarize(
    study: Any,
    out_dir: str | Path,
    *,
    top: int = 10,
    console: Any = None,
    printer: Callable[[str], Any] | None = None,
) -> dict:
    """Print the best trials as a table, write ``summary.json`` and PNG plots to ``out_dir``
    (optimisation history, parameter importances, per-epoch values); returns the summary."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import optuna
    from optuna.trial import TrialState
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    say = printer or (lambda s: console.print(s, highlight=False, soft_wrap=True))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metric = study.user_attrs.get("metric", "value")
    trials = study.get_trials(deepcopy=False)
    counts = {s.name: sum(t.state == s for t in trials) for s in TrialState}
    counts = {k: v for k, v in counts.items() if v}
    skipped = sum(bool(t.user_attrs.get("skipped")) for t in trials)
    ranked = _ranked(study)
    param_keys = list(dict.fromkeys(k for t in trials for k in t.params))

    table = Table(
        title=f"study {study.study_name}: best trials by {metric} ({study.direction.name.lower()})"
    )
    for col in ("#", "trial", "state", metric, "epochs", *param_keys, "time"):
        table.add_column(col, justify="right" if col not in ("state",) else "left")
    for rank, t in enumerate(ranked[:top], 1):
        if t.state == TrialState.COMPLETE:
            value = f"{t.value:.4f}"
        else:
            vals = list(t.intermediate_values.values())
            value = (
                f"({max(vals) if study.direction.name == 'MAXIMIZE' else min(vals):.4f})"
                if vals
                else "-"
            )
        row = _trial_row(t)
        table.add_row(
            str(rank),
            str(t.number),
            t.state.name.lower(),
            value,
            str(row["epochs"] or "-"),
            *(_fmt(t.params.get(k, "-")) for k in param_keys),
            f"{row['duration_s']:.0f} s" if row["duration_s"] is not None else "-",
        )
    console.print(table)
    state_text = ", ".join(f"{v} {k.lower()}" for k, v in counts.items())
    if skipped:
        state_text += f" ({skipped} of the failed were skipped duplicates/extras, never run)"
    say(f"{len(trials)} trials: {state_text or 'none yet'}")

    plots: dict[str, str] = {}
    notes: dict[str, str] = {}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", UserWarning)
        import optuna.visualization.matplotlib as vm

        if complete:
            _save(
                vm.plot_optimization_history(study, target_name=metric),
                out / "optimization_history.png",
            )
            plots["optimization_history"] = str(out / "optimization_history.png")
        else:
            notes["optimization_history"] = "no complete trials yet"
        varying = [
            k
            for k in param_keys
            if len({json.dumps(t.params.get(k), default=str) for t in complete}) > 1
        ]
        if len(complete) >= 2 and varying:
            try:
                _save(
                    vm.plot_param_importances(study, target_name=metric),
                    out / "param_importances.png",
                )
                plots["param_importances"] = str(out / "param_importances.png")
            except (ValueError, RuntimeError, ZeroDivisionError) as exc:
                notes["param_importances"] = f"not computed: {str(exc).splitlines()[0]}"
        else:
            notes["param_importances"] = "needs >= 2 complete trials whose parameters differ"
        if any(t.intermediate_values for t in trials):
            _save(vm.plot_intermediate_values(study), out / "intermediate_values.png")
            plots["intermediate_values"] = str(out / "intermediate_values.png")
    for name, why in notes.items():
        say(f"{name} plot skipped: {why}")

    best = None
    if complete:
        b = study.best_trial
        best = {
            "number": b.number,
            "value": b.value,
            "params": b.params,
            "run_dir": b.user_attrs.get("run_dir"),
            "best_metrics": b.user_attrs.get("best"),
            "row_counts": b.user_attrs.get("row_counts"),
        }
    summary = {
        "study": study.study_name,
        "metric": metric,
        "direction": study.direction.name.lower(),
        "space": study.user_attrs.get("space"),
        "config": study.user_attrs.get("config"),
        "n_trials": counts,
        "skipped": skipped,
        "best": best,
        "trials": [_trial_row(t) for t in ranked]
        + [_trial_row(t) for t in trials if t.state not in _finished_states()],
        "plots": plots,
        "plots_skipped": notes,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    say(f"wrote {out / 'summary.json'} and {len(plots)} plot(s) in {out}")
    return summary


__all__ = [
    "Param",
    "PruningCallback",
    "Space",
    "SpaceError",
    "SweepResult",
    "check_space",
    "default_study_name",
    "default_storage",
    "infer_direction",
    "load_study",
    "make_storage",
    "parse_space",
    "read_space",
    "recover_dead_trials",
    "run_sweep",
    "summarize",
    "trial_overrides",
]
