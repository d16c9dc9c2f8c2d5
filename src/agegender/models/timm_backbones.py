"""Thin adapters over timm backbones (never re-implemented here).

Each backbone is ``timm.create_model(timm_name, pretrained=False, num_classes=0)`` and the
model runs its ``forward_features`` (the last spatial map), then one of two heads:

- ``head="mlp"`` (default): global average pool -> MLP ``head_hidden`` (default [512])
  with ``dropout`` (float or one per layer) -> task outputs;
- ``head="conv5"``: the reports' 5 extra conv layers (512, 128, 384, 384, 500) on the map
  -> global average pool -> 2x dense 2048 (``head_hidden`` overrides the dense part);
- ``head="conv5_bn"``: report 001's head as its four parameter counts imply (each conv
  followed by BatchNorm, a 2x2 max-pool, 3x dense 2048; :func:`~.heads.conv5_bn_neck`);
- ``head="branches"``: the map resampled to ``grid x grid`` and flattened (Keras
  ``Flatten``), then one MLP ``head_hidden`` *per task* (report 004's transfer model).

``pretrained_file`` loads local weights through timm
(``pretrained_cfg_overlay=dict(file=...)``); ``pretrained="imagenet"`` loads ImageNet weights
from an installed package (:mod:`agegender.models.pretrained`); nothing is downloaded unless
``pretrained="hub"`` asks timm for its hub weights.
VGG keeps only its conv ``features`` (like Keras ``include_top=False``): timm's 4096-d
fc6/fc7 ``pre_logits`` (~120M parameters) are dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models._manipulate import group_modules
from torch import nn

from agegender.models.heads import (
    TaskSpec,
    conv5_bn_neck,
    conv5_neck,
    flatten_neck,
    make_task_heads,
    mlp_neck,
)
from agegender.models.levi_hassner import lh_conv_neck
from agegender.models.pretrained import load_pretrained, packaged_for
from agegender.models.registry import FaceModel, read_state_dict, register_model

HEADS = ("mlp", "conv5", "conv5_bn", "branches")
#: model.pretrained values a timm backbone takes (agegender.models.pretrained)
TIMM_PRETRAINED = ("imagenet", "hub")
_logger = logging.getLogger(__name__)


class TimmFaceModel(FaceModel):
    """A FaceModel whose backbone is a timm model (``forward_features`` gives the map)."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """timm's ``forward_features``: the last spatial map ``(B, C, h, w)``."""
        return self.backbone.forward_features(x)

    def backbone_blocks(self) -> list[nn.Module]:
        """timm's fine-grained parameter groups (stem, each block, ...), input -> output."""
        groups = group_modules(self.backbone, self.backbone.group_matcher(coarse=False))
        blocks = []
        for _, names in sorted(groups.items()):
            mods = [self.backbone.get_submodule(n) for n in names]
            blocks.append(nn.ModuleList(mods))
        return blocks


def _resolve_timm_name(*candidates: str) -> str:
    available = set(timm.list_models())
    for name in candidates:
        if name in available:
            return name
    raise RuntimeError(f"none of {candidates} exists in timm {timm.__version__}")


def create_backbone(
    timm_name: str,
    pretrained_file: str | Path | None = None,
    pretrained: str | None = None,
    **timm_kwargs: Any,
) -> tuple[nn.Module, dict[str, Any] | None]:
    """``timm.create_model(timm_name, num_classes=0)``, weights from a local file if given,
    else from ``pretrained`` (``imagenet``: an installed package; ``hub``: timm's download).

    VGG's unused fc6/fc7 ``pre_logits`` are replaced by an identity.

    Returns ``(backbone, report)``; ``report`` lists missing/unexpected keys of the file
    or what ``pretrained`` loaded (None without either). Raises ``ValueError`` if nothing in
    the file matches or the pretrained weights are not installed / do not fit.
    """
    kwargs: dict[str, Any] = {"num_classes": 0, **timm_kwargs}
    if pretrained_file is None:
        backbone = timm.create_model(timm_name, pretrained=False, **kwargs)
        _strip_pre_logits(backbone)
        if pretrained is None:
            return backbone, None
        return backbone, {"weights": load_pretrained(backbone, timm_name, pretrained)}
    file_state = read_state_dict(pretrained_file)
    backbone = timm.create_model(
        timm_name,
        pretrained=True,
        pretrained_cfg_overlay={"file": str(pretrained_file)},
        **kwargs,
    )
    _strip_pre_logits(backbone)
    own = backbone.state_dict()
    report = {
        "missing": [k for k in own if k not in file_state],
        "unexpected": [k for k in file_state if k not in own],
        "mismatched": [k for k in file_state if k in own and own[k].shape != file_state[k].shape],
    }
    if len(report["missing"]) == len(own):  # timm loads with strict=False: catch a wrong file
        raise ValueError(
            f"no weights in {pretrained_file} match timm model {timm_name!r} "
            f"(file keys e.g. {list(file_state)[:3]}, model keys e.g. {list(own)[:3]})"
        )
    if any(report.values()):
        _logger.warning(
            "%s: loaded %d/%d tensors from %s; missing %s, unexpected %s (classifier keys are "
            "expected to be unexpected)",
            timm_name,
            len(own) - len(report["missing"]),
            len(own),
            pretrained_file,
            report["missing"][:5],
            report["unexpected"][:5],
        )
    return backbone, report


def _strip_pre_logits(backbone: nn.Module) -> None:
    """Drop timm VGG's fc6/fc7 ``pre_logits`` (unused: we run ``forward_features``)."""
    if hasattr(backbone, "pre_logits") and backbone.pre_logits.__class__.__name__ == "ConvMlp":
        backbone.pre_logits = nn.Identity()


def _timm_face_model(
    timm_name: str,
    tasks: TaskSpec,
    *,
    pretrained_file: str | None,
    pretrained: str | None,
    head: str,
    head_hidden: Sequence[int] | None,
    dropout: float | Sequence[float] | None,
    freeze_backbone: bool,
    drop_path_rate: float | None,
    grid: int = 7,
) -> FaceModel:
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")
    timm_kwargs = {} if drop_path_rate is None else {"drop_path_rate": drop_path_rate}
    if timm_name.startswith("vgg") and pretrained_file is None and pretrained is None:
        # pre_logits is dropped below: build it 1 unit wide instead of 4096 (saves ~3 s)
        timm_kwargs["mlp_ratio"] = 1 / 4096
    backbone, report = create_backbone(timm_name, pretrained_file, pretrained, **timm_kwargs)
    channels = backbone.num_features
    branch_hidden: Sequence[int] = ()
    branch_dropout: float | Sequence[float] = 0.0
    if head == "mlp":
        hidden = [512] if head_hidden is None else head_hidden
        neck, width = mlp_neck(channels, hidden, 0.3 if dropout is None else dropout)
    elif head == "conv5":
        neck, width = conv5_neck(
            channels,
            hidden=[2048, 2048] if head_hidden is None else head_hidden,
            dropout=0.5 if dropout is None else dropout,
        )
    elif head == "conv5_bn":
        neck, width = conv5_bn_neck(
            channels,
            hidden=[2048, 2048, 2048] if head_hidden is None else head_hidden,
            dropout=0.0 if dropout is None else dropout,
        )
    else:  # branches
        neck, width = flatten_neck(channels, grid)
        branch_hidden = [128, 128] if head_hidden is None else head_hidden
        branch_dropout = 0.5 if dropout is None else dropout
    heads = make_task_heads(width, tasks, branch_hidden, branch_dropout)
    model = TimmFaceModel(backbone, neck, heads, tasks)
    model.load_report = report
    if freeze_backbone:
        model.freeze_backbone()
    return model


# our name, timm candidates (first that exists wins), CPU-friendly size note
_TIMM_MODELS: dict[str, tuple[tuple[str, ...], str]] = {
    "resnet18": (("resnet18",), "ResNet-18; CPU-friendly at 96-128 px"),
    "resnet50": (("resnet50",), "ResNet-50; CPU-friendly at 112-160 px"),
    "mobilenetv2_100": (("mobilenetv2_100",), "MobileNetV2 1.0; CPU-friendly at 96-128 px"),
    "vgg16": (("vgg16",), "VGG-16 conv features (no fc6/fc7); CPU-friendly at 96-112 px"),
    "vgg19": (("vgg19",), "VGG-19 conv features (no fc6/fc7); CPU-friendly at 96-112 px"),
    "efficientnetv2_rw_s": (
        ("efficientnetv2_rw_s",),
        "EfficientNetV2-S (timm variant); CPU-friendly at 112-160 px",
    ),
    "tf_efficientnetv2_s": (
        ("tf_efficientnetv2_s",),
        "EfficientNetV2-S (TF port); CPU-friendly at 112-160 px",
    ),
    "tf_efficientnetv2_m": (
        ("tf_efficientnetv2_m",),
        "EfficientNetV2-M (TF port, Keras's EfficientNetV2M); CPU-friendly at 64-112 px",
    ),
    "legacy_xception": (
        ("legacy_xception", "xception"),
        "Xception (Keras original); min 71 px, CPU-friendly at 128-160 px",
    ),
    "inception_v3": (("inception_v3",), "Inception-v3; min 75 px, CPU-friendly at 128-160 px"),
    "efficientnet_lite0": (
        ("efficientnet_lite0",),
        "EfficientNet-Lite0 (ImageNet weights offline: pretrained=imagenet); CPU-friendly at "
        "80-112 px",
    ),
    "efficientnet_lite1": (
        ("efficientnet_lite1",),
        "EfficientNet-Lite1 (ImageNet weights offline: pretrained=imagenet); CPU-friendly at "
        "96-128 px",
    ),
    "efficientnet_lite2": (
        ("efficientnet_lite2",),
        "EfficientNet-Lite2 (ImageNet weights offline: pretrained=imagenet); CPU-friendly at "
        "112-144 px",
    ),
}
_MIN_SIZE = {"legacy_xception": 71, "inception_v3": 75}


def _register_timm(name: str, candidates: tuple[str, ...], note: str) -> None:
    timm_name = _resolve_timm_name(*candidates)
    pcfg = timm.get_pretrained_cfg(timm_name)
    size = int(pcfg.input_size[-1]) if pcfg is not None else 224
    mean = tuple(pcfg.mean) if pcfg is not None else (0.485, 0.456, 0.406)
    std = tuple(pcfg.std) if pcfg is not None else (0.229, 0.224, 0.225)
    packaged = packaged_for(timm_name)
    if packaged is not None:  # normalise as the offline ImageNet weights expect
        mean, std = packaged.mean, packaged.std

    def build(
        tasks: TaskSpec,
        *,
        pretrained_file: str | None = None,
        pretrained: str | None = None,
        head: str = "mlp",
        head_hidden: Sequence[int] | None = None,
        dropout: float | Sequence[float] | None = None,
        freeze_backbone: bool = False,
        drop_path_rate: float | None = None,
        grid: int = 7,
    ) -> FaceModel:
        return _timm_face_model(
            timm_name,
            tasks,
            pretrained_file=pretrained_file,
            pretrained=pretrained,
            head=head,
            head_hidden=head_hidden,
            dropout=dropout,
            freeze_backbone=freeze_backbone,
            drop_path_rate=drop_path_rate,
            grid=grid,
        )

    build.__name__ = build.__qualname__ = name
    build.timm_name = timm_name  # type: ignore[attr-defined]
    build.__doc__ = f"timm ``{timm_name}`` backbone + MLP, conv5 or branch head. {note}."
    register_model(
        name,
        input_size=size,
        min_input_size=_MIN_SIZE.get(name, 32),
        mean=mean,
        std=std,
        description=f"{note}; timm {timm_name} + MLP or conv5 head",
        family="timm",
        pretrained_choices=TIMM_PRETRAINED,
    )(build)


for _name, (_candidates, _note) in _TIMM_MODELS.items():
    _register_timm(_name, _candidates, _note)


@register_model(
    "resnet50_lh_head",
    input_size=224,
    min_input_size=32,
    description="frozen ResNet-50 7x7 map + Levi-Hassner conv 256/384 + FC 512-512 head; "
    "CPU-friendly at 112-160 px",
    family="timm",
    pretrained_choices=TIMM_PRETRAINED,
)
def resnet50_lh_head(
    tasks: TaskSpec,
    *,
    pretrained_file: str | None = None,
    pretrained: str | None = None,
    freeze_backbone: bool = True,
    head_hidden: Sequence[int] = (512, 512),
    dropout: float | Sequence[float] = 0.5,
) -> FaceModel:
    """timm ResNet-50 features (frozen by default) with Levi-Hassner's conv stack as head.

    See :func:`~agegender.models.levi_hassner.lh_conv_neck` for how the stack is adapted to
    the 2048 x 7 x 7 map.
    """
    backbone, report = create_backbone("resnet50", pretrained_file, pretrained)
    neck, width = lh_conv_neck(backbone.num_features, hidden=head_hidden, dropout=dropout)
    model = TimmFaceModel(backbone, neck, make_task_heads(width, tasks), tasks)
    model.load_report = report
    if freeze_backbone:
        model.freeze_backbone()
    return model
