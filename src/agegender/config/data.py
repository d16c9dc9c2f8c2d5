"""The ``data`` section: where the faces come from and how they are split
(:class:`DataConfig`), and the datasets trained on beside it (:class:`ExtraDataConfig`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from agegender.config.base import _resolve, _Section


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
    balance_power: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="with data.balance: each cell's share of its dataset's draws grows as "
        "(cell size) ** balance_power: 0 equal cells, 1 plain sampling, 0.5 between",
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
