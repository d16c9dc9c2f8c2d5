"""The search space: SPACE.yaml parsed into a :class:`Space` of :class:`Param` s, checked
against the config, and turned into Optuna's sampler and pruner. SPACE.yaml::

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
"""

from __future__ import annotations

import copy
import difflib
import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

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


class SpaceError(ConfigError):
    """An invalid search space or sweep request; ``str()`` is one line naming the key."""


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

    from agegender.artifact import model_options
    from agegender.models import TaskSpec, create_model
    from agegender.train.data import resolve_sizes

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
