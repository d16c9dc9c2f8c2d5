"""The ``augment`` section: the ops of a training recipe (one pydantic model per op, told
apart by ``op``: :data:`AugmentOp`, all of them in :data:`AUGMENT_OPS`), their
``- name: value`` shorthand, and :class:`AugmentConfig`."""

from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator

from agegender.config.base import _pair_within, _Section, _within


class _Op(_Section):
    p: float = 1.0

    _p = field_validator("p")(_within(0, 1))


class RandomCropOp(_Op):
    """A random ``input_size`` window of the ``size`` image (Levi & Hassner: 227 of 256)."""

    op: Literal["random_crop"] = "random_crop"
    padding: int = Field(0, ge=0, description="pixels the window may move past the border")


class ResizedCropOp(_Op):
    """Random area fraction ``scale`` and aspect ``ratio``, resized to ``input_size``."""

    op: Literal["resized_crop"] = "resized_crop"
    scale: tuple[float, float] = (0.8, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    _scale = field_validator("scale")(_pair_within(0.01, 1))
    _ratio = field_validator("ratio")(_pair_within(0.1, 10))


class HFlipOp(_Op):
    op: Literal["hflip"] = "hflip"
    p: float = 0.5


class RotationOp(_Op):
    op: Literal["rotation"] = "rotation"
    degrees: float = 10.0

    _deg = field_validator("degrees")(_within(0, 180))


class ColorJitterOp(_Op):
    op: Literal["color_jitter"] = "color_jitter"
    brightness: float = Field(0.2, ge=0, le=1)
    contrast: float = Field(0.2, ge=0, le=1)
    saturation: float = Field(0.2, ge=0, le=1)


class GrayscaleOp(_Op):
    op: Literal["grayscale"] = "grayscale"
    p: float = 0.1


class GaussianNoiseOp(_Op):
    op: Literal["gaussian_noise"] = "gaussian_noise"
    std: float = Field(0.02, ge=0, le=1, description="in [0, 1] pixel units")


class DownscaleOp(_Op):
    """Shrink to a random fraction ``scale`` of the side (area average) and back (bilinear):
    the soft detail of a face photographed small, as in photos from the wild."""

    op: Literal["downscale"] = "downscale"
    p: float = 0.5
    scale: tuple[float, float] = (0.25, 1.0)

    _scale = field_validator("scale")(_pair_within(0.05, 1))


class RandomErasingOp(_Op):
    op: Literal["random_erasing"] = "random_erasing"
    p: float = 0.25
    scale: tuple[float, float] = (0.02, 0.2)
    ratio: tuple[float, float] = (0.3, 3.3)

    _scale = field_validator("scale")(_pair_within(0.001, 1))
    _ratio = field_validator("ratio")(_pair_within(0.05, 20))


AUGMENT_OPS: dict[str, type[_Op]] = {
    cls.model_fields["op"].default: cls
    for cls in (
        RandomCropOp,
        ResizedCropOp,
        HFlipOp,
        RotationOp,
        ColorJitterOp,
        GrayscaleOp,
        GaussianNoiseOp,
        DownscaleOp,
        RandomErasingOp,
    )
}
#: The parameter a bare scalar sets in the shorthand ``- rotation: 15``.
_PRIMARY = {
    "random_crop": "padding",
    "resized_crop": "scale",
    "hflip": "p",
    "rotation": "degrees",
    "grayscale": "p",
    "gaussian_noise": "std",
    "downscale": "scale",
    "random_erasing": "p",
}


def _op_tag(v: Any) -> str | None:
    return v.get("op") if isinstance(v, dict) else getattr(v, "op", None)


AugmentOp = Annotated[
    Annotated[RandomCropOp, Tag("random_crop")]
    | Annotated[ResizedCropOp, Tag("resized_crop")]
    | Annotated[HFlipOp, Tag("hflip")]
    | Annotated[RotationOp, Tag("rotation")]
    | Annotated[ColorJitterOp, Tag("color_jitter")]
    | Annotated[GrayscaleOp, Tag("grayscale")]
    | Annotated[GaussianNoiseOp, Tag("gaussian_noise")]
    | Annotated[DownscaleOp, Tag("downscale")]
    | Annotated[RandomErasingOp, Tag("random_erasing")],
    Discriminator(_op_tag),
]


def _normalise_op(item: Any) -> Any:
    """``"hflip"`` / ``{hflip: 0.3}`` / ``{hflip: {p: 0.3}}`` / ``{op: hflip, p: 0.3}``."""
    if isinstance(item, str):
        return {"op": item}
    if isinstance(item, dict) and "op" not in item:
        names = [k for k in item if k in AUGMENT_OPS]
        if len(item) == 1 or len(names) == 1:
            name = names[0] if names else next(iter(item))
            params = item[name]
            extra = {k: v for k, v in item.items() if k != name}  # e.g. from --set recipe.0.p
            if params is None:
                return {"op": name, **extra}
            if isinstance(params, dict):
                return {"op": name, **params, **extra}
            if name == "color_jitter" and isinstance(params, int | float):
                amount = {"brightness": params, "contrast": params, "saturation": params}
                return {"op": name, **amount, **extra}
            return {"op": name, _PRIMARY.get(name, "p"): params, **extra}
    return item


class AugmentConfig(_Section):
    """Training augmentation, run on whole batches on the model's device (see data.augment).

    ``recipe`` is a list of ops, each written ``- name``, ``- name: value`` (its main
    parameter) or ``- name: {param: value}``; ops: random_crop, resized_crop, hflip,
    rotation, color_jitter, grayscale, gaussian_noise, downscale, random_erasing.
    """

    recipe: list[AugmentOp] = Field(
        default_factory=lambda: [ResizedCropOp(), HFlipOp()],
    )
    padding_mode: Literal["reflection", "zeros", "border"] = "reflection"

    @field_validator("recipe", mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        if v is None:
            return []
        if not isinstance(v, list):
            raise ValueError("must be a list of augmentation ops")
        out = [_normalise_op(x) for x in v]
        for x in out:
            name = _op_tag(x)
            if name is not None and name not in AUGMENT_OPS:
                close = difflib.get_close_matches(str(name), list(AUGMENT_OPS), n=1)
                hint = f"did you mean {close[0]}?" if close else f"choose {', '.join(AUGMENT_OPS)}"
                raise ValueError(f"unknown augmentation op {name!r}; {hint}")
        return out

    @field_validator("recipe")
    @classmethod
    def _unique(cls, v: list[_Op]) -> list[_Op]:
        names = [op.op for op in v]
        for name in set(names):
            if names.count(name) > 1:
                raise ValueError(f"op {name!r} appears more than once")
        if "random_crop" in names and "resized_crop" in names:
            raise ValueError("use random_crop or resized_crop, not both")
        return v

    def get(self, name: str) -> _Op | None:
        return next((op for op in self.recipe if op.op == name), None)
