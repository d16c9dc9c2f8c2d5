"""Task specification and the heads every model shares.

A model is ``backbone -> neck -> heads``: the *neck* is a shared trunk (pooling, MLP or
conv stack) and ``heads`` holds one output module per task:

- ``gender``: ``(B, 2)`` logits, index 0 = male, 1 = female
- ``age``: ``(B, 8)`` logits over the Adience groups (``groups``), ``(B,)`` years
  (``regression``) or ``(B, 101)`` logits over ages 0..100 (``dex``, Rothe et al.; the
  expected value of the softmax is the predicted age, see :func:`dex_expected_age`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from agegender.readout import AGE_MODES, dex_years

NUM_GENDERS = 2
NUM_AGE_GROUPS = 8
DEX_MAX_AGE = 100  # DEX predicts a distribution over ages 0..DEX_MAX_AGE
#: Initial bias of the regression head: close to the mean age of UTKFace / Adience faces,
#: so the first steps start from a sensible guess instead of 0 years.
AGE_PRIOR_YEARS = 33.0


@dataclass
class TaskSpec:
    """Which outputs a model has: gender (bool) and age (``none|groups|regression|dex``)."""

    gender: bool = True
    age: str = "groups"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` for an unknown age mode or a spec with no task at all."""
        if self.age not in AGE_MODES:
            raise ValueError(f"unknown age mode {self.age!r}; choose one of {', '.join(AGE_MODES)}")
        if not self.gender and self.age == "none":
            raise ValueError("TaskSpec needs at least one task (gender=True or age != 'none')")

    def outputs(self) -> dict[str, tuple[int, ...]]:
        """Per-sample output shape of each head, e.g. ``{"gender": (2,), "age": (8,)}``."""
        out: dict[str, tuple[int, ...]] = {}
        if self.gender:
            out["gender"] = (NUM_GENDERS,)
        if self.age == "groups":
            out["age"] = (NUM_AGE_GROUPS,)
        elif self.age == "dex":
            out["age"] = (DEX_MAX_AGE + 1,)
        elif self.age == "regression":
            out["age"] = ()
        return out


def _per_layer(value: float | Sequence[float], n: int, what: str) -> list[float]:
    if isinstance(value, (int, float)):
        return [float(value)] * n
    values = [float(v) for v in value]
    if len(values) != n:
        raise ValueError(f"{what}: {len(values)} values given for {n} layers")
    return values


class MLP(nn.Sequential):
    """``Linear -> ReLU -> Dropout`` per hidden size; ``dropout`` is a float or one per layer.

    With no hidden layers it is just ``Dropout(dropout)`` (identity when 0).
    ``out_features`` is the width of the last layer (``in_features`` when there is none).
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] = (),
        dropout: float | Sequence[float] = 0.0,
    ) -> None:
        hidden = [int(h) for h in hidden]
        layers: list[nn.Module] = []
        if not hidden:
            p = float(dropout) if isinstance(dropout, (int, float)) else _single(dropout)
            if p > 0:
                layers.append(nn.Dropout(p))
        else:
            for h, p in zip(hidden, _per_layer(dropout, len(hidden), "dropout"), strict=True):
                layers += [nn.Linear(in_features, h), nn.ReLU(inplace=True)]
                if p > 0:
                    layers.append(nn.Dropout(p))
                in_features = h
        super().__init__(*layers)
        self.out_features = in_features


def _single(values: Sequence[float]) -> float:
    values = list(values)
    if len(values) > 1:
        raise ValueError(f"dropout: {len(values)} values given for 0 hidden layers")
    return float(values[0]) if values else 0.0


class RegressionOutput(nn.Module):
    """A ``Linear(in, 1)`` whose output is squeezed to ``(B,)`` years, bias starts at ~33."""

    def __init__(self, in_features: int, prior: float = AGE_PRIOR_YEARS) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, 1)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.constant_(self.fc.bias, prior)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x).squeeze(-1)


def task_output(in_features: int, task: str, age_mode: str = "groups") -> nn.Module:
    """The final layer of one task: gender logits or the age output for ``age_mode``."""
    if task == "gender":
        return nn.Linear(in_features, NUM_GENDERS)
    if age_mode == "groups":
        return nn.Linear(in_features, NUM_AGE_GROUPS)
    if age_mode == "dex":
        return nn.Linear(in_features, DEX_MAX_AGE + 1)
    if age_mode == "regression":
        return RegressionOutput(in_features)
    raise ValueError(f"no output layer for task {task!r} / age mode {age_mode!r}")


def make_task_heads(
    in_features: int,
    tasks: TaskSpec,
    hidden: Sequence[int] = (),
    dropout: float | Sequence[float] = 0.0,
) -> nn.ModuleDict:
    """One head per task in ``tasks``: an optional per-task :class:`MLP` then the output layer."""
    tasks.validate()
    heads = nn.ModuleDict()
    for task in tasks.outputs():
        mlp = MLP(in_features, hidden, dropout)
        out = task_output(mlp.out_features, task, tasks.age)
        heads[task] = nn.Sequential(mlp, out) if len(mlp) else out
    return heads


class PoolFlatten(nn.Module):
    """Global average pooling to ``(B, C)`` (exports to ONNX ``GlobalAveragePool``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


def _pool_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """``(n_out, n_in)`` averaging weights with ``adaptive_avg_pool`` bin edges."""
    m = torch.zeros(n_out, n_in)
    for i in range(n_out):
        start, end = (i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)
        m[i, start:end] = 1.0 / (end - start)
    return m


class GridPool(nn.Module):
    """``AdaptiveAvgPool2d(grid)`` that also exports to ONNX for any input size.

    Identical results: a no-op at ``grid x grid``, ``avg_pool2d`` when the map divides
    evenly, otherwise two small matmuls with adaptive-pooling weights (the ONNX exporter
    rejects non-divisible adaptive pooling). The branch depends on the map size, so an
    ONNX graph is specific to its export resolution (batch may stay dynamic).
    """

    def __init__(self, grid: int) -> None:
        super().__init__()
        self.grid = int(grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.grid
        h, w = int(x.shape[-2]), int(x.shape[-1])
        if h == g and w == g:
            return x
        if h % g == 0 and w % g == 0:
            return nn.functional.avg_pool2d(x, (h // g, w // g))
        ph = _pool_matrix(h, g).to(x)
        pw = _pool_matrix(w, g).to(x)
        return torch.matmul(torch.matmul(ph, x), pw.t())

    def extra_repr(self) -> str:
        return f"grid={self.grid}"


def mlp_neck(
    in_features: int, hidden: Sequence[int] = (512,), dropout: float | Sequence[float] = 0.3
) -> tuple[nn.Module, int]:
    """Global average pool then a shared :class:`MLP`; returns ``(neck, out_features)``."""
    mlp = MLP(in_features, hidden, dropout)
    return nn.Sequential(PoolFlatten(), mlp), mlp.out_features


CONV5_CHANNELS: tuple[int, ...] = (512, 128, 384, 384, 500)


def conv5_neck(
    in_channels: int,
    channels: Sequence[int] = CONV5_CHANNELS,
    hidden: Sequence[int] = (2048, 2048),
    dropout: float | Sequence[float] = 0.5,
) -> tuple[nn.Module, int]:
    """The reports' "5 extra conv layers + 2x dense 2048" head on a spatial feature map.

    Five ``conv3x3 (same padding) -> ReLU`` layers with 512, 128, 384, 384 and 500 filters,
    global average pooling, then ``Dense 2048 -> Dense 2048`` (ReLU + dropout each).
    Returns ``(neck, out_features)``.
    """
    layers: list[nn.Module] = []
    prev = in_channels
    for c in channels:
        layers += [nn.Conv2d(prev, c, 3, padding=1), nn.ReLU(inplace=True)]
        prev = c
    mlp = MLP(prev, hidden, dropout)
    return nn.Sequential(*layers, PoolFlatten(), mlp), mlp.out_features


def conv5_bn_neck(
    in_channels: int,
    channels: Sequence[int] = CONV5_CHANNELS,
    hidden: Sequence[int] = (2048, 2048, 2048),
    dropout: float | Sequence[float] = 0.0,
) -> tuple[nn.Module, int]:
    """Report 001's head as its parameter counts imply (Keras, reconstructed).

    Five ``conv3x3 (same) -> ReLU -> BatchNorm`` layers (512, 128, 384, 384, 500), a 2x2
    max-pool, then ``Dense 2048`` x 3 (the abstract's "4 dense layers" with the output).
    At 64 px a stride-32 backbone leaves a 2x2 map, which the pool takes to 1x1, exactly
    as in the report; at other sizes an average pool to 1x1 follows, so the parameter
    count never depends on the input size. Returns ``(neck, out_features)``.
    """
    layers: list[nn.Module] = []
    prev = in_channels
    for c in channels:
        layers += [nn.Conv2d(prev, c, 3, padding=1), nn.ReLU(inplace=True), nn.BatchNorm2d(c)]
        prev = c
    mlp = MLP(prev, hidden, dropout)
    pool = nn.MaxPool2d(2, ceil_mode=True)
    return nn.Sequential(*layers, pool, GridPool(1), nn.Flatten(1), mlp), mlp.out_features


def flatten_neck(in_channels: int, grid: int) -> tuple[nn.Module, int]:
    """Resample the map to ``grid x grid`` (:class:`GridPool`) and flatten it, Keras's
    ``Flatten`` at the size the report used, for any input size; ``(neck, width)``."""
    return nn.Sequential(GridPool(grid), nn.Flatten(1)), in_channels * grid * grid


def dex_expected_age(logits: torch.Tensor) -> torch.Tensor:
    """Expected age in years from ``(B, 101)`` DEX logits: ``sum_k softmax_k * k``
    (:func:`agegender.readout.dex_years` of the softmax)."""
    return dex_years(logits.softmax(-1))
