"""The ``model`` section: architecture, starting weights and the freeze/unfreeze schedule
(:class:`ModelConfig`), checked against the model registry's options."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from agegender.config.base import _one_of, _resolve, _resolve_weights, _Section


class ModelConfig(_Section):
    """Architecture, weights and the freeze/unfreeze schedule."""

    name: str = "small_resnet"
    pretrained: Literal["imagenet", "face", "hub"] | None = Field(
        None,
        description="imagenet: ImageNet weights from an installed package (offline); face: "
        "dlib's face-recognition weights from an installed package (dlib_resnet29, offline); "
        "hub: timm's download (opt-in)",
    )
    pretrained_file: str | None = Field(None, description="local backbone weights")
    init_from: str | None = Field(
        None,
        description="weights to start from: a checkpoint of an earlier run, or a bundled "
        "model's name (default, accurate)",
    )
    head: str | None = Field(None, description="head type, passed to create_model")
    head_hidden: list[int] | None = None
    dropout: float | list[float] | None = None
    options: dict[str, Any] = Field({}, description="extra create_model keyword arguments")
    freeze_backbone: bool = False
    unfreeze_at_epoch: int | None = Field(None, ge=1)
    unfreeze_last_n: int | None = Field(None, ge=1)
    backbone_lr_factor: float = Field(1.0, gt=0, le=1)
    unfreeze_warmup_epochs: float = Field(
        0.0,
        ge=0,
        description="ramp the unfrozen blocks' learning rate linearly from 0 over this many "
        "epochs after unfreeze_at_epoch",
    )
    precompute_blocks: int | None = Field(
        None,
        ge=1,
        description="run the first N backbone blocks (frozen all along) once per face and "
        "train the rest on their stored output (augmentation: hflip only, unless "
        "precompute_augmented)",
    )
    precompute_augmented: int = Field(
        0,
        ge=0,
        le=16,
        description="with precompute_blocks: also store N draws of the whole augment.recipe "
        "per face; each training sample reads one stored view at random",
    )

    _paths = field_validator("pretrained_file")(_resolve)
    _weights = field_validator("init_from")(_resolve_weights)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        from agegender.models import list_models

        return _one_of("model", v, list(list_models()))

    @field_validator("head_hidden")
    @classmethod
    def _hidden(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and any(h < 1 for h in v):
            raise ValueError("layer widths must be >= 1")
        return v

    @field_validator("dropout")
    @classmethod
    def _dropout(cls, v: float | list[float] | None) -> float | list[float] | None:
        values = v if isinstance(v, list) else [v] if v is not None else []
        if any(not 0 <= x < 1 for x in values):
            raise ValueError("must be within [0, 1)")
        return v

    @model_validator(mode="after")
    def _options(self) -> ModelConfig:
        from agegender.models import get_model_entry, is_model

        if not is_model(self.name):
            return self  # unknown name: reported by the name validator
        accepted = get_model_entry(self.name).options
        given = [k for k in ("head", "head_hidden", "dropout") if getattr(self, k) is not None]
        shown = ", ".join(o for o in accepted if o not in ("pretrained_file", "pretrained"))
        if self.pretrained is not None:
            if "pretrained" not in accepted:
                raise ValueError(
                    f"model.pretrained: model {self.name!r} has no pretrained weights "
                    "(use model.pretrained_file)"
                )
            if self.pretrained_file is not None:
                raise ValueError("model.pretrained: set pretrained or pretrained_file, not both")
            choices = get_model_entry(self.name).cfg["pretrained_choices"]
            if self.pretrained not in choices:
                raise ValueError(
                    f"model.pretrained: {self.pretrained} weights do not exist for model "
                    f"{self.name!r} (use pretrained: {' or '.join(choices)})"
                )
        for key in (*given, *self.options):
            if key not in accepted:
                where = f"model.{key}" if key in given else f"model.options.{key}"
                raise ValueError(
                    f"{where}: model {self.name!r} does not take this option (it takes: {shown})"
                )
        for key in ("pretrained", "pretrained_file", "freeze_backbone", "input_size"):
            if key in self.options:
                raise ValueError(f"model.options.{key}: set it with its own key, not in options")
        return self

    @model_validator(mode="after")
    def _freeze(self) -> ModelConfig:
        if self.precompute_blocks is not None and not self.freeze_backbone:
            raise ValueError("model.precompute_blocks: needs model.freeze_backbone: true")
        if self.precompute_augmented and self.precompute_blocks is None:
            raise ValueError("model.precompute_augmented: needs model.precompute_blocks")
        if (
            self.precompute_blocks is not None
            and self.unfreeze_at_epoch is not None
            and self.unfreeze_last_n is None
        ):
            raise ValueError(
                "model.precompute_blocks: the stored blocks must stay frozen; set "
                "model.unfreeze_last_n to the blocks after them"
            )
        if self.unfreeze_warmup_epochs and self.unfreeze_at_epoch is None:
            raise ValueError("model.unfreeze_warmup_epochs: needs model.unfreeze_at_epoch")
        if not self.freeze_backbone:
            if self.unfreeze_at_epoch is not None:
                raise ValueError("model.unfreeze_at_epoch: needs model.freeze_backbone: true")
            if self.unfreeze_last_n is not None:
                raise ValueError("model.unfreeze_last_n: needs model.freeze_backbone: true")
        return self
