"""The config schema: one pydantic model per YAML section, and the root :class:`Config`.

Every section forbids unknown keys and validates its defaults; path fields are expanded
against the config file's folder (:func:`agegender.config.paths.expand_path`). Sections,
in file order: data, model, task, optim and schedule, train, augment (the ops of a
recipe and their ``- name: value`` shorthand), trainer and logger, then the root
:class:`Config` with its cross-section checks and :func:`logged_metrics`.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from agegender.config.paths import expand_path
from agegender.metric_names import logged_metrics as vocabulary_names


def _resolve(v: str | None, info: ValidationInfo) -> str | None:
    if v is None:
        return None
    base = (info.context or {}).get("base_dir") if info.context else None
    return expand_path(v, Path(base) if base else None)


def _one_of(kind: str, value: str, names: list[str]) -> str:
    """``value`` if it is one of ``names``, else a ValueError with the closest name."""
    if value not in names:
        close = difflib.get_close_matches(value, names, n=1)
        hint = f"did you mean {close[0]}?" if close else f"choose one of {', '.join(names)}"
        raise ValueError(f"unknown {kind} {value!r}; {hint}")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


def _within(lo: float, hi: float):
    def check(v: float | None) -> float | None:
        if v is not None and not lo <= v <= hi:
            raise ValueError(f"must be within [{lo:g}, {hi:g}]")
        return v

    return check


def _pair_within(lo: float, hi: float, *, ordered: bool = True):
    def check(v: tuple[float, float]) -> tuple[float, float]:
        a, b = v
        if not (lo <= a <= hi and lo <= b <= hi):
            raise ValueError(f"both values must be within [{lo:g}, {hi:g}]")
        if ordered and a > b:
            raise ValueError("first value must be <= second")
        return v

    return check


# --------------------------------------------------------------------------- data
def _check_format(v: str) -> str:
    from agegender.data.readers import FORMATS

    if v not in FORMATS:
        raise ValueError(f"unknown format {v!r}; choose one of {', '.join(FORMATS)}")
    return v


def _check_crop(v: list[float] | None) -> list[float] | None:
    if v is None:
        return v
    if len(v) != 4:
        raise ValueError("must be 4 fractions [x0, y0, x1, y1]")
    x0, y0, x1, y1 = v
    if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
        raise ValueError("must satisfy 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1")
    return v


class ExtraDataConfig(_Section):
    """One more dataset trained on beside ``data.path`` (e.g. CelebA next to UTKFace): all
    of it joins the training split except a grouped ``val_fraction`` (its own subjects /
    duplicate groups), which joins validation. Its missing labels are masked in the loss."""

    path: str = Field(description="dataset folder or label file")
    format: str = Field("auto", description="reader, as data.format")
    name: str | None = Field(None, description="name in logs and summaries (default: folder)")
    crop: list[float] | None = Field(
        None, description="face box [x0, y0, x1, y1] as fractions (default: the reader's)"
    )
    align: bool = Field(False, description="photos: detect and align the largest face")
    weight: float = Field(
        1.0, gt=0, le=10, description="draws per epoch; a fraction: a fixed random subset"
    )
    val_fraction: float = Field(0.1, ge=0, lt=1, description="grouped validation share")
    limit: int | None = Field(None, ge=10, description="use at most this many faces")

    _paths = field_validator("path")(_resolve)
    _fmt = field_validator("format")(_check_format)
    _crop = field_validator("crop")(_check_crop)


class DataConfig(_Section):
    """Where the faces come from and how they are split."""

    path: str = Field(description="dataset folder or label file")
    format: str = Field("auto", description="reader: auto or one of agegender.data.readers")
    size: int | None = Field(None, ge=16, le=1024, description="cache image size (px)")
    input_size: int | None = Field(None, ge=16, le=1024, description="network input (px)")
    folds_file: str | None = Field(None, description="CSV with path,fold (agegender data folds)")
    fold: int | None = Field(
        None, ge=0, description="held-out fold (folds_file, else the dataset's own folds)"
    )
    val_fold: int | None = Field(None, ge=0, description="separate validation fold")
    split: list[float] = Field([0.8, 0.2], description="train/val[/test] fractions")
    limit: int | None = Field(None, ge=10, description="use at most this many faces")
    audit: bool = Field(False, description="run the duplicate audit to group and drop conflicts")
    drop_conflicts: bool = True
    seed: int = 0
    cache_dir: str | None = None
    crop: list[float] | None = Field(
        None, description="face box [x0, y0, x1, y1] as fractions (default: the reader's)"
    )
    align: bool = Field(
        False, description="photos, not face crops: cache each photo's aligned largest face"
    )
    extra: list[ExtraDataConfig] = Field(
        [], description="more datasets for training and validation (not test)"
    )
    balance: Literal["none", "source_gender_age", "source_gender_age_race"] = Field(
        "none",
        description="training draws: none (each face once an epoch) or balanced cells "
        "(agegender.data.datamodule.balance_weights)",
    )

    _paths = field_validator("path", "folds_file", "cache_dir")(_resolve)

    _fmt = field_validator("format")(_check_format)
    _crop = field_validator("crop")(_check_crop)

    @field_validator("split")
    @classmethod
    def _split(cls, v: list[float]) -> list[float]:
        if len(v) not in (2, 3):
            raise ValueError("must be 2 (train, val) or 3 (train, val, test) fractions")
        if any(x <= 0 for x in v):
            raise ValueError("fractions must be > 0")
        if abs(sum(v) - 1) > 1e-6:
            raise ValueError(f"fractions must sum to 1 (sum {sum(v):g})")
        return v

    @model_validator(mode="after")
    def _folds(self) -> DataConfig:
        if self.val_fold is not None and self.fold is None:
            raise ValueError("data.val_fold: needs data.fold")
        if self.val_fold is not None and self.val_fold == self.fold:
            raise ValueError("data.val_fold: must differ from data.fold")
        return self


# --------------------------------------------------------------------------- model
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
    init_from: str | None = Field(None, description="checkpoint of an earlier run to start from")
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

    _paths = field_validator("pretrained_file", "init_from")(_resolve)

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


# --------------------------------------------------------------------------- task
AgeMode = Literal["none", "groups", "regression", "dex"]


class TaskConfig(_Section):
    """What to predict: gender and/or age (8 groups, years by L1 regression, or DEX)."""

    gender: bool = True
    age: AgeMode = "groups"
    gamma: float = Field(0.5, description="L = gamma*L_gender + (1-gamma)*L_age")
    age_sigma: float = Field(
        0.0,
        ge=0,
        description="dex only: a Gaussian target over the years with this sigma (label "
        "distribution learning) instead of the one year; 0 = DEX's one-hot",
    )
    age_l1: float = Field(
        0.0,
        ge=0,
        description="dex only: add this weight x the expected age's L1 error in years "
        "(DLDL-v2's expectation loss)",
    )

    _gamma = field_validator("gamma")(_within(0, 1))

    @model_validator(mode="after")
    def _some(self) -> TaskConfig:
        if not self.gender and self.age == "none":
            raise ValueError("task: nothing to learn (task.gender is false and task.age is none)")
        for key in ("age_sigma", "age_l1"):
            if getattr(self, key) > 0 and self.age != "dex":
                raise ValueError(f"task.{key}: only for task.age: dex (got {self.age!r})")
        return self


class DistillConfig(_Section):
    """Knowledge distillation: a trained teacher's outputs on every training face are soft
    targets for this model (the student), beside the faces' own labels.

    ``L = (1 - weight) * L_labels + weight * L_teacher``, where ``L_teacher`` is the
    task-weighted KL divergence from the teacher's softened distributions (``temperature``;
    times ``temperature**2``, Hinton et al. 2015) for gender and DEX / group age. Faces with
    no label for a task (CelebA has no ages) still learn that task from the teacher.
    ``teacher``: a ``.ckpt`` or ``.pt`` with the same tasks; ``{fold}`` in the path is the
    cross-validation fold (``agegender cv``) or ``data.fold``.
    """

    teacher: str
    weight: float = Field(0.5, description="share of the loss from the teacher's outputs")
    temperature: float = Field(1.0, gt=0, description="softens teacher and student alike")

    _paths = field_validator("teacher")(_resolve)
    _weight = field_validator("weight")(_within(0, 1))


# --------------------------------------------------------------------------- optim
class OptimConfig(_Section):
    name: Literal["adam", "adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False


class ScheduleConfig(_Section):
    """Learning-rate schedule per optimiser step, with a linear warm-up."""

    name: Literal["none", "cosine", "step"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    step_size: int = Field(10, ge=1, description="epochs between decays (step)")
    gamma: float = Field(0.1, gt=0, le=1, description="decay factor (step)")
    min_lr_factor: float = Field(0.0, description="cosine floor as a fraction of lr")

    _min = field_validator("min_lr_factor")(_within(0, 1))


# --------------------------------------------------------------------------- train
class EarlyStoppingConfig(_Section):
    monitor: str = "val/loss"
    mode: Literal["min", "max"] | None = Field(None, description="default: max for *acc*")
    patience: int | None = Field(5, ge=1, description="null disables early stopping")
    min_delta: float = Field(0.0, ge=0)

    @property
    def resolved_mode(self) -> str:
        return self.mode or ("max" if "acc" in self.monitor else "min")


class TrainConfig(_Section):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int | None = Field(None, ge=1)
    precision: Literal["auto", "32", "32-true", "bf16-mixed", "16-mixed", "bf16-true"] = "auto"
    seed: int = 0
    deterministic: bool | Literal["warn"] = "warn"
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    num_workers: int = Field(0, ge=0, le=8)
    checkpoint_every_n_steps: int = Field(100, ge=0, description="also save last.ckpt (0: off)")
    keep_epoch_checkpoints: bool = Field(
        False, description="also keep checkpoints/epoch_N.ckpt for every epoch (N from 0)"
    )
    limit_train_batches: int | float | None = Field(None, gt=0)
    limit_val_batches: int | float | None = Field(None, gt=0)
    gradient_clip_val: float | None = Field(None, gt=0)
    accumulate_grad_batches: int = Field(1, ge=1)
    log_every_n_steps: int = Field(20, ge=1)
    progress_bar: bool = True


# --------------------------------------------------------------------------- augment
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


# --------------------------------------------------------------------------- trainer
STRATEGIES = (
    "auto",
    "ddp",
    "ddp_spawn",
    "ddp_fork",
    "ddp_notebook",
    "ddp_find_unused_parameters_true",
    "fsdp",
    "deepspeed",
    "single_device",
)


class TrainerConfig(_Section):
    """Hardware: Lightning accelerator / devices / nodes / strategy, and CPU speed knobs."""

    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: int | str | list[int] = Field(1, description="per node; more than 1 -> DDP")
    num_nodes: int = Field(1, ge=1)
    strategy: str = "auto"
    channels_last: bool = Field(True, description="NHWC tensors: faster convs on CPU and GPU")
    compile: bool = False
    threads: int | None = Field(None, ge=1, description="torch.set_num_threads")

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, v: str) -> str:
        return _one_of("strategy", v, list(STRATEGIES))

    @field_validator("devices")
    @classmethod
    def _devices(cls, v: int | str | list[int]) -> int | str | list[int]:
        if isinstance(v, str) and v != "auto" and not re.fullmatch(r"-1|\d+(,\d+)*,?", v):
            raise ValueError("must be 'auto', a count, or a list of device ids")
        if isinstance(v, int) and v == 0 or isinstance(v, int) and v < -1:
            raise ValueError("must be >= 1 (or -1 for all)")
        return v


class LoggerConfig(_Section):
    """Loggers; none uses the network unless asked (mlflow to a URI, wandb online)."""

    csv: bool = True
    tensorboard: bool = True
    mlflow: bool = False
    mlflow_tracking_uri: str | None = Field(None, description="default: file:<run>/mlruns")
    wandb: bool = False
    wandb_project: str = "agegender"
    wandb_offline: bool = True


# --------------------------------------------------------------------------- root
class Config(_Section):
    """A whole training run."""

    name: str | None = None
    description: str = ""
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    logger: LoggerConfig = Field(default_factory=LoggerConfig)
    distill: DistillConfig | None = None

    @model_validator(mode="after")
    def _cross(self) -> Config:
        monitor = self.train.early_stopping.monitor
        allowed = logged_metrics(self.task)
        if monitor not in allowed:
            raise ValueError(
                f"train.early_stopping.monitor: {monitor!r} is not logged with "
                f"task.gender={self.task.gender}, task.age={self.task.age}; "
                f"choose one of {', '.join(allowed)}"
            )
        d = self.data
        if (
            self.augment.get("random_crop") is not None
            and d.size is not None
            and d.input_size is not None
            and d.input_size > d.size
        ):
            raise ValueError(
                f"augment.recipe: random_crop needs data.size ({d.size}) >= "
                f"data.input_size ({d.input_size})"
            )
        if self.model.precompute_blocks is not None:
            other = [op.op for op in self.augment.recipe if op.op != "hflip"]
            if other and not self.model.precompute_augmented:
                raise ValueError(
                    f"augment.recipe: {', '.join(other)} cannot run on stored features "
                    "(model.precompute_blocks): keep hflip only, or store augmented draws "
                    "with model.precompute_augmented: N"
                )
            if self.model.precompute_augmented and not other:
                raise ValueError(
                    "model.precompute_augmented: augment.recipe has nothing to draw beyond "
                    "hflip (the stored mirror view covers it)"
                )
            if self.distill is not None:
                raise ValueError("distill: not with model.precompute_blocks")
        if self.distill is not None and self.task.age == "regression":
            raise ValueError(
                "distill: a regression age has no distribution to distil; use task.age dex "
                "or groups"
            )
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def logged_metrics(task: TaskConfig) -> list[str]:
    """Per-epoch metric names the training module logs for ``task`` (from the metric
    vocabulary in :mod:`agegender.metric_names`)."""
    return vocabulary_names(task.gender, task.age)
