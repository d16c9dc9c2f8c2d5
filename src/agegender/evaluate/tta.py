"""Test-time augmentation: the views a batch is classified in, and their average.

- ``none``: the centre ``input_size`` crop of the ``resize`` image (as in training's
  evaluation, :meth:`agegender.data.augment.Preprocess.eval`);
- ``flip``: the centre crop and its horizontal mirror (2 views);
- ``oversample``: Levi & Hassner's (2015) over-sampling, from Caffe's ``oversample``:
  the four corner crops and the centre crop of ``input_size`` from the ``resize`` image,
  and their mirrors (10 views).

Class probabilities (softmax) are averaged over the views, as are predicted years for
an age regression model (:func:`average_views`). When the image is smaller than
``input_size`` it is first resized up to it, so every crop is then the whole image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where the views are made: check_mode stays cheap
    import torch

TTA_MODES: tuple[str, ...] = ("none", "flip", "oversample")
VIEWS = {"none": 1, "flip": 2, "oversample": 10}


def check_mode(mode: str, modes: Sequence[str] = TTA_MODES) -> str:
    """``mode`` if it is one of ``modes`` (the predictor offers fewer), else ValueError."""
    if mode not in modes:
        raise ValueError(f"unknown tta {mode!r}; choose one of {', '.join(modes)}")
    return mode


def crop_offsets(size: int, input_size: int) -> list[tuple[int, int]]:
    """``(top, left)`` of the 4 corner crops then the centre crop (Caffe's order)."""
    far = size - input_size
    c = far // 2
    return [(0, 0), (0, far), (far, 0), (far, far), (c, c)]


def tta_views(images: torch.Tensor, input_size: int, mode: str = "none") -> torch.Tensor:
    """The views of a ``(B, C, H, W)`` batch as one ``(V, B, C, input_size, input_size)``
    tensor (V = 1, 2 or 10 for none, flip, oversample); the dtype is kept unless the batch
    had to be resized up to ``input_size`` (then float, as Preprocess.eval does)."""
    import torch
    import torch.nn.functional as F

    check_mode(mode)
    if images.dim() != 4:
        raise ValueError(f"expected a (B, C, H, W) batch, got {tuple(images.shape)}")
    s = int(input_size)
    h, w = images.shape[-2:]
    if h < s or w < s:
        # as Preprocess.eval: resize up (float, not rounded back to uint8)
        images = F.interpolate(images.float(), size=(s, s), mode="bilinear", align_corners=False)
        images = images.clamp(0, 255)
        h = w = s
    if h != w:  # centre-crop to a square first
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        images = images[:, :, top : top + side, left : left + side]
        h = w = side
    offsets = crop_offsets(h, s)
    if mode == "oversample":
        crops = [images[:, :, t : t + s, x : x + s] for t, x in offsets]
        crops += [c.flip(-1) for c in crops]
    else:
        t, x = offsets[-1]
        crops = [images[:, :, t : t + s, x : x + s]]
        if mode == "flip":
            crops.append(crops[0].flip(-1))
    return torch.stack(crops)


def average_views(outputs: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Mean over views of each output (probabilities, or years for regression)."""
    if not outputs:
        raise ValueError("no views to average")
    import torch

    return {k: torch.stack([o[k] for o in outputs]).mean(0) for k in outputs[0]}


__all__ = ["TTA_MODES", "VIEWS", "average_views", "check_mode", "crop_offsets", "tta_views"]
