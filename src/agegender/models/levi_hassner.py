"""Levi & Hassner, "Age and Gender Classification using CNNs" (CVPR-W 2015), and a 1/4 variant.

The network (Caffe, so pooling rounds up, ``ceil_mode=True``)::

    conv1  96 x 7x7 stride 4 -> ReLU -> maxpool 3/2 -> LRN(5, 1e-4, 0.75)
    conv2 256 x 5x5 pad 2    -> ReLU -> maxpool 3/2 -> LRN(5, 1e-4, 0.75)
    conv3 384 x 3x3 pad 1    -> ReLU -> maxpool 3/2
    fc6 512 -> ReLU -> dropout 0.5 -> fc7 512 -> ReLU -> dropout 0.5 -> output heads

At the paper's 227 px crop (of a 256 px image) conv3's pooled map is 7x7 (384 x 7 x 7 =
18816 features into fc6). An adaptive average pool to 7x7 sits before fc6, so the same
weights run at any input >= 51 px (e.g. 64-112 px for CPU training); at 227 it is a no-op.

Both builders take layout options for the reports' Keras versions (defaults: the Caffe
network): ``conv1_stride``, ``padding`` (``same``/``valid``), ``ceil_pool``, ``lrn_blocks``
(see :func:`lh_features`), ``grid`` (the map size fed to fc6; the map is resampled to it,
so the parameter count does not depend on the input size) and ``branches`` (fc6/fc7 once
per task, report 004's multi-task model, instead of shared).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from agegender.models.heads import MLP, GridPool, TaskSpec, flatten_neck, make_task_heads
from agegender.models.registry import FaceModel, register_model

LH_GRID = 7  # conv3's pooled map at 227 px, the size fc6 expects


def _lrn() -> nn.LocalResponseNorm:
    return nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=1.0)


def lh_features(
    filters: Sequence[int] = (96, 256, 384),
    lrn: bool = True,
    *,
    conv1_stride: int = 4,
    padding: str = "same",
    ceil_pool: bool = True,
    lrn_blocks: int = 2,
) -> nn.Sequential:
    """The three conv blocks of Levi-Hassner as a Sequential of three blocks.

    The defaults are the paper's Caffe network. The reports' Keras versions differ in
    ways their parameter counts and output sizes pin down: ``conv1_stride=1``,
    ``padding="valid"`` (no padding in conv2/conv3), ``ceil_pool=False`` (Keras pools
    round down) and, for report 004, LRN after all three blocks (``lrn_blocks=3``).
    """
    if padding not in ("same", "valid"):
        raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
    if not 0 <= lrn_blocks <= 3:
        raise ValueError(f"lrn_blocks must be 0..3, got {lrn_blocks}")
    f1, f2, f3 = (int(f) for f in filters)
    pad2, pad3 = (2, 1) if padding == "same" else (0, 0)

    def block(conv: nn.Conv2d, index: int) -> nn.Sequential:
        layers: list[nn.Module] = [
            conv,
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, ceil_mode=ceil_pool),
        ]
        if lrn and index < lrn_blocks:
            layers.append(_lrn())
        return nn.Sequential(*layers)

    return nn.Sequential(
        block(nn.Conv2d(3, f1, 7, stride=conv1_stride), 0),
        block(nn.Conv2d(f1, f2, 5, padding=pad2), 1),
        block(nn.Conv2d(f2, f3, 3, padding=pad3), 2),
    )


def lh_fc_neck(
    channels: int,
    hidden: Sequence[int] = (512, 512),
    dropout: float | Sequence[float] = 0.5,
    grid: int = LH_GRID,
) -> tuple[nn.Module, int]:
    """Adaptive pool to ``grid x grid``, flatten, then fc6/fc7; returns ``(neck, width)``."""
    mlp = MLP(channels * grid * grid, hidden, dropout)
    return nn.Sequential(GridPool(grid), nn.Flatten(1), mlp), mlp.out_features


def lh_conv_neck(
    in_channels: int,
    filters: Sequence[int] = (256, 384),
    hidden: Sequence[int] = (512, 512),
    dropout: float | Sequence[float] = 0.5,
) -> tuple[nn.Module, int]:
    """Levi-Hassner's conv2/conv3 + fc6/fc7 as a head on a deep (e.g. ResNet 7x7) map.

    ``conv 5x5 (pad 2) -> ReLU -> LRN -> conv 3x3 (pad 1) -> ReLU -> maxpool 3/2 (pad 1)``:
    no pooling between the convs (a 7x7 map has no room for it); the pool takes 7x7 to
    4x4, then an adaptive average pool to 2x2 feeds fc6 (384 x 2 x 2 = 1536 features).
    """
    f2, f3 = (int(f) for f in filters)
    mlp = MLP(f3 * 4, hidden, dropout)
    neck = nn.Sequential(
        nn.Conv2d(in_channels, f2, 5, padding=2),
        nn.ReLU(inplace=True),
        _lrn(),
        nn.Conv2d(f2, f3, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, padding=1),
        GridPool(2),
        nn.Flatten(1),
        mlp,
    )
    return neck, mlp.out_features


def _build(
    tasks: TaskSpec,
    filters: Sequence[int],
    head_hidden: Sequence[int],
    dropout: float | Sequence[float],
    lrn: bool,
    grid: int,
    branches: bool,
    **layout: Any,
) -> FaceModel:
    backbone = lh_features(filters, lrn=lrn, **layout)
    if branches:  # report 004's multi-task model: fc6/fc7 once per task
        neck, width = flatten_neck(int(filters[-1]), grid)
        return FaceModel(backbone, neck, make_task_heads(width, tasks, head_hidden, dropout), tasks)
    neck, width = lh_fc_neck(int(filters[-1]), head_hidden, dropout, grid)
    return FaceModel(backbone, neck, make_task_heads(width, tasks), tasks)


@register_model(
    "levi_hassner",
    input_size=227,
    resize=256,
    min_input_size=51,
    description="Levi & Hassner 2015 CNN: 3 conv + LRN, FC 512-512 (227 crop of 256; "
    "runs at 64-112 px on CPU)",
)
def levi_hassner(
    tasks: TaskSpec,
    *,
    filters: Sequence[int] = (96, 256, 384),
    head_hidden: Sequence[int] = (512, 512),
    dropout: float | Sequence[float] = 0.5,
    lrn: bool = True,
    conv1_stride: int = 4,
    padding: str = "same",
    ceil_pool: bool = True,
    lrn_blocks: int = 2,
    grid: int = LH_GRID,
    branches: bool = False,
) -> FaceModel:
    """The paper's network: 11.42M parameters with gender + 8 age-group heads."""
    return _build(**locals())  # every argument above, by name


@register_model(
    "levi_hassner_reduced",
    input_size=227,
    resize=256,
    min_input_size=51,
    description="Levi-Hassner with 1/4 of the filters and hidden units (24-64-96, FC 128)",
)
def levi_hassner_reduced(
    tasks: TaskSpec,
    *,
    filters: Sequence[int] = (24, 64, 96),
    head_hidden: Sequence[int] = (128, 128),
    dropout: float | Sequence[float] = 0.5,
    lrn: bool = True,
    conv1_stride: int = 4,
    padding: str = "same",
    ceil_pool: bool = True,
    lrn_blocks: int = 2,
    grid: int = LH_GRID,
    branches: bool = False,
) -> FaceModel:
    """A quarter of the filters (24, 64, 96) and hidden units (FC 128-128).

    Parameter count with gender + 8 age-group heads: 717,450 (~0.72M), independent of the
    input size (adaptive pooling to 7x7 before fc6; 602K of it is fc6). Report 004's
    reduced network (7,192,065 parameters, Keras count) is this one in its Keras layout:
    ``conv1_stride=1``, ``padding="valid"``, ``ceil_pool=False``, ``lrn_blocks=3``,
    ``grid=24`` (a 24 x 24 x 96 map into fc6, ten times the weights).
    """
    return _build(**locals())  # every argument above, by name
