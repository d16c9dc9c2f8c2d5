"""The data a run trains on, from its config: ``prepare_data(config) -> PreparedData``.

Read the dataset (and the folds file / audit) -> check the task has labels -> sample ->
split -> decode-once image cache (faces cut to the model's framing), then each
``data.extra`` dataset the same way; every row left out is counted (:class:`RowCounts`).
:func:`agegender.train.run.train` and the distillation teacher
(:mod:`agegender.train.distill`) both start here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from agegender.config import Config, ConfigError
from agegender.data.datamodule import Splits, split_by_fold, split_by_fractions
from agegender.data.prepare import (
    DatasetRows,
    RowCounts,
    read_rows,
    reject_failed_images,
    require_images,
)
from agegender.data.records import DatasetError

__all__ = ["PreparedData", "model_face_template", "prepare_data", "resolve_sizes"]


@dataclass
class PreparedData:
    """The table rows a run uses, their cached images and the splits."""

    table: pd.DataFrame
    images: np.ndarray
    cache_rows: np.ndarray
    splits: Splits
    info: dict
    #: rows read, kept and rejected: the main dataset, then each ``data.extra`` dataset
    row_counts: list[RowCounts] = field(default_factory=list)


def resolve_sizes(config: Config) -> tuple[int, int]:
    """``(cache size, input size)``: as configured, else from the model's default_cfg
    (``resize`` and ``input_size``, keeping their ratio when only one is given)."""
    from agegender.models.registry import get_model_entry

    cfg = get_model_entry(config.model.name).cfg
    d_in, d_resize = int(cfg["input_size"]), int(cfg["resize"])
    size, inp = config.data.size, config.data.input_size
    if size is None and inp is None:
        size, inp = d_resize, d_in
    elif size is None:
        size = round(inp * d_resize / d_in)
    elif inp is None:
        inp = round(size * d_in / d_resize)
    if inp < cfg["min_input_size"]:
        raise ConfigError(
            f"data.input_size: model {config.model.name!r} needs >= {cfg['min_input_size']} "
            f"(got {inp})"
        )
    return int(size), int(inp)


# --------------------------------------------------------------------------- data
def _label_masks(config: Config, table: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """``(has_gender, has_age)`` per row, age meaning what ``task.age`` trains on: the
    group for ``groups``, years for ``regression``, years or a group for ``dex`` (a group
    alone trains the group's share of the distribution)."""
    age = config.task.age
    if age == "regression":
        has_age = table["age"].notna()
    elif age == "dex":
        has_age = table["age"].notna() | table["age_group"].notna()
    else:
        has_age = table["age_group"].notna()
    return table["gender"].notna(), has_age


def _useful(config: Config, table: pd.DataFrame) -> pd.Series:
    """Rows with at least one label the task uses."""
    t = config.task
    has_gender, has_age = _label_masks(config, table)
    return (has_gender if t.gender else False) | (has_age if t.age != "none" else False)


def _check_labels(config: Config, table: pd.DataFrame) -> pd.DataFrame:
    """Task vs labels, then keep rows with at least one label the task uses. A task whose
    loss term has no weight (``task.gamma`` 0 or 1 with both tasks: a fine-tune on photos
    labelled for one task keeps the model's other head) needs no labels."""
    t = config.task
    has_gender, has_age = _label_masks(config, table)
    both = t.gender and t.age != "none"
    if t.gender and not has_gender.any() and not (both and t.gamma == 0):
        raise ConfigError("task.gender: dataset has no gender labels")
    if t.age != "none" and not has_age.any() and not (both and t.gamma == 1):
        what = {"regression": "exact ages", "dex": "exact ages or age groups"}.get(
            t.age, "age labels"
        )
        raise ConfigError(f"task.age: dataset has no age labels ({what} needed for {t.age!r})")
    return table[_useful(config, table)]


def _merge_folds(config: Config, table: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    from agegender.data.folds import read_folds

    folds = read_folds(config.data.folds_file)
    cols = ["path", "fold"] + (["split_group"] if "split_group" in folds.columns else [])
    folds = folds[cols].drop_duplicates("path")
    base = table.drop(columns=[c for c in ("fold", "split_group") if c in table.columns])
    merged = base.reset_index().merge(folds, on="path", how="inner").set_index("index")
    if merged.empty:
        raise ConfigError(
            f"data.folds_file: none of its {len(folds)} paths are images of data.path "
            f"({config.data.path})"
        )
    return merged.sort_index(), len(table) - len(merged)


def _load_images(
    table: pd.DataFrame,
    size: int,
    cache_dir: str | None,
    progress: bool,
    crop: Sequence[float] | None = None,
    align: bool = False,
    template: Sequence[Sequence[float]] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """``(images, cache_rows, ok, failures)`` for the rows of ``table`` through the image
    cache (``align``: photos through the predictor's face path with the default detector,
    aligned to ``template``); ``failures``: the reason of each row that is not ``ok``."""
    from agegender.data.cache import build_cache
    from agegender.infer.detector import DEFAULT_DETECTOR

    box = None if crop is None else tuple(float(c) for c in crop)
    cache = build_cache(
        table,
        size,
        cache_dir=cache_dir,
        progress=progress,
        crop=box,
        align=DEFAULT_DETECTOR if align else None,
        template=template if align else None,
    )
    ok = np.asarray(cache.ok, dtype=bool)
    rows = np.arange(len(table), dtype=np.int64)
    if len(ok) != len(table):
        rows = np.asarray(cache.rows_for(table["path"].tolist()), dtype=np.int64)
        ok = ok[rows]
    why = {p.path: p.reason for p in cache.problems}
    paths = table["path"].astype(str).to_numpy()
    failures = [why.get(p, "unreadable") for p in paths[~ok]]
    return cache.images, rows, ok, failures


def baselines(table: pd.DataFrame, splits: Splits) -> dict[str, float]:
    """What a model that ignores the image scores on the validation split: the training
    split's majority gender / age group, and its median age (for MAE)."""
    train, val = table.iloc[splits.train], table.iloc[splits.val]
    out: dict[str, float] = {}
    for key, col in (("val/gender_acc", "gender"), ("val/age_acc", "age_group")):
        known, target = train[col].dropna(), val[col].dropna()
        if len(known) and len(target):
            out[key] = float((target == known.mode().iloc[0]).mean())
    ages, target = train["age"].dropna(), val["age"].dropna()
    if len(ages) and len(target):
        out["val/age_mae"] = float((target - ages.median()).abs().mean())
    return out


def prepare_data(config: Config, *, progress: bool = False) -> PreparedData:
    """Read, filter, split and cache the dataset described by ``config.data``; every row
    left out is counted in ``info["row_counts"]`` (:class:`RowCounts`)."""
    from agegender.data.readers import default_crop, sample_rows

    d = config.data
    rows = read_rows(
        d.path, d.format, audit=d.audit, drop_conflicts=d.drop_conflicts, progress=progress
    )
    result, table, info, counts = rows.result, rows.table, rows.info, rows.counts
    if d.audit:
        table = table.assign(group=rows.dup_group)
        info.setdefault("conflicts_dropped", 0)
    if d.folds_file is not None:
        table, missing = _merge_folds(config, table)
        info["not_in_folds_file"] = missing
        counts.reject("not_in_folds_file", missing)
    elif d.fold is not None and table["fold"].isna().any():
        raise ConfigError(
            f"data.fold: the {result.format} dataset has no folds of its own for every face; "
            "make a folds file (agegender data folds) and set data.folds_file"
        )
    labelled = _check_labels(config, table)
    counts.reject("no_task_labels", len(table) - len(labelled))
    table = labelled
    if d.limit is not None and d.limit < len(table):
        info["limit"] = d.limit
        counts.reject("limit", len(table) - d.limit)
    table = sample_rows(table, d.limit, d.seed)
    size, _ = resolve_sizes(config)
    crop = d.crop if d.crop is not None else default_crop(result.format)
    model_template = model_face_template(config)
    _check_model_framing(config, "data.align", d.align)
    info["face_template"] = _framing(d.crop, result.format, d.align, model_template)
    images, cache_rows, ok, failures = _load_images(
        table, size, d.cache_dir, progress, crop, d.align, model_template
    )
    if not ok.all():
        info["undecodable"] = int((~ok).sum())
        reject_failed_images(counts, failures)
        errors = np.full(len(table), "", dtype=object)
        errors[~ok] = failures
        require_images(rows, table, errors)
        table, cache_rows = table[ok].reset_index(drop=True), cache_rows[ok]
    info["row_counts"] = counts.to_dict()
    row_counts = [counts]
    if d.fold is not None:
        splits = split_by_fold(table, d.fold, d.val_fold)
    else:
        splits = split_by_fractions(table, d.split, d.seed)
    for name, idx in splits.as_dict().items():
        if len(idx) == 0:
            raise ConfigError(f"data: the {name} split is empty ({splits.how})")
    if d.extra:
        info["sources"] = {_source_name(d.path): dict(splits.sizes())}
        table, images, cache_rows, splits = _add_extra(
            config, table, images, cache_rows, splits, info, size, progress, row_counts, rows
        )
    info["used"] = len(table)
    info["splits"] = splits.sizes()
    info["split"] = splits.how
    info["baselines"] = baselines(table, splits)
    return PreparedData(table, images, cache_rows, splits, info, row_counts)


def model_face_template(config: Config) -> tuple:
    """The landmark template the model's input expects (its registered ``face_template``:
    UTKFace's crops for most models, dlib's face chip for ``dlib_resnet29``)."""
    from agegender.infer.align import named_template
    from agegender.models import get_model_entry

    return named_template(get_model_entry(config.model.name).cfg["face_template"])


def _check_model_framing(config: Config, key: str, align: bool) -> None:
    """A model that expects another framing than UTKFace's needs its faces cut through the
    face path (``align``): a reader's box gives UTKFace's framing."""
    from agegender.models import get_model_entry

    name = get_model_entry(config.model.name).cfg["face_template"]
    if name != "utkface" and not align:
        raise ConfigError(
            f"{key}: model {config.model.name!r} expects faces framed as {name!r} "
            "(agegender.infer.align.FACE_TEMPLATES); set it to true so every face is cut "
            "through the face path to that framing"
        )


def _framing(
    crop: Sequence[float] | None, format: str, align: bool, template: Sequence | None = None
) -> tuple:
    """The landmark template of a dataset's cached faces: ``template`` (default UTKFace's)
    when aligned by the face path, UTKFace's when cut with its reader's own box, else
    scaled by ``crop``."""
    from agegender.data.readers import default_crop
    from agegender.infer.align import as_template, framing_template

    if align:
        return as_template(template)
    return framing_template(crop, default_crop(format))


def _source_name(path: str) -> str:
    return Path(path).name or str(path)


def _add_extra(
    config: Config,
    table: pd.DataFrame,
    images: np.ndarray,
    cache_rows: np.ndarray,
    splits: Splits,
    info: dict,
    size: int,
    progress: bool,
    row_counts: list[RowCounts],
    main_rows: DatasetRows,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, Splits]:
    """Append ``data.extra`` datasets: each is read and audited (its duplicate groups, as
    for UTKFace, since a dataset without subject ids has no other; conflicting groups
    dropped with ``data.drop_conflicts``), cached at ``size`` through its own face box and
    split by its own groups into training (drawn ``weight`` times per epoch) and
    validation rows; the test split stays the main dataset's. Copies of one face across
    datasets (:func:`agegender.data.prepare.link_rows`) stay on one side: an extra face
    whose copy the main dataset (or an earlier extra) trains on is trained on, one whose
    copy is validated on is validated on, and one whose copy is in the test split is left
    out (``held_out_copy``). Rows get a ``source``; each dataset's :class:`RowCounts` is
    appended to ``row_counts``."""
    from agegender.data.readers import default_crop, sample_rows
    from agegender.infer.align import FRAMING_TOLERANCE, template_gap

    d = config.data
    tables = [table.assign(source=_source_name(d.path))]
    arrays = [np.asarray(images[cache_rows])]
    train, val = [splits.train], [splits.val]
    offset = len(table)
    rng = np.random.default_rng(d.seed)
    loaded = []
    for k, extra in enumerate(d.extra):
        key = f"data.extra[{k}]"
        name = extra.name or _source_name(extra.path)
        try:
            x = read_rows(extra.path, extra.format, drop_conflicts=d.drop_conflicts)
        except DatasetError as exc:
            raise ConfigError(f"{key}.path: {exc}") from None
        result, xt, counts = x.result, x.table.assign(group=x.dup_group), x.counts
        labelled = xt[_useful(config, xt)]
        counts.reject("no_task_labels", len(xt) - len(labelled))
        if extra.limit is not None and extra.limit < len(labelled):
            counts.reject("limit", len(labelled) - extra.limit)
        xt = sample_rows(labelled, extra.limit, d.seed)
        if xt.empty:
            raise ConfigError(f"{key}.path: no faces with labels for this task in {extra.path}")
        crop = extra.crop if extra.crop is not None else default_crop(result.format)
        _check_model_framing(config, f"{key}.align", extra.align)
        framing = _framing(extra.crop, result.format, extra.align, info["face_template"])
        gap = template_gap(framing, info["face_template"])
        if gap > FRAMING_TOLERANCE:
            raise ConfigError(
                f"{key}.crop: its faces would be framed unlike data.path's (landmarks up to "
                f"{100 * gap:.0f} % of the side apart); one model needs one framing: set the "
                "same kind of box for both"
            )
        x_images, x_rows, ok, failures = _load_images(
            xt, size, d.cache_dir, progress, crop, extra.align, model_face_template(config)
        )
        reject_failed_images(counts, failures)
        row_counts.append(counts)
        xt, x_rows = xt[ok].reset_index(drop=True), x_rows[ok]
        loaded.append((name, x, xt, x_images, x_rows, int((~ok).sum()), crop))
    sides = _extra_sides(config, table, splits, main_rows, loaded, info, progress)
    for k, (extra, (name, x, xt, x_images, x_rows, failed, crop)) in enumerate(
        zip(d.extra, loaded, strict=True)
    ):
        side = sides.place(k, xt, extra.val_fraction, d.seed)
        held = side == HELD_OUT
        x.counts.reject("held_out_copy", int(held.sum()))
        xt, x_rows, side = xt[~held].reset_index(drop=True), x_rows[~held], side[~held]
        x_train, x_val = np.flatnonzero(side == TRAIN), np.flatnonzero(side == VAL)
        whole, part = divmod(extra.weight, 1.0)
        drawn = [x_train] * int(whole)
        if part > 0:
            drawn.append(rng.choice(x_train, round(part * len(x_train)), replace=False))
        x_train = np.sort(np.concatenate(drawn)) if drawn else x_train[:0]
        tables.append(xt.assign(source=name))
        arrays.append(np.asarray(x_images[x_rows]))
        train.append(x_train + offset)
        val.append(x_val + offset)
        info["sources"][name] = {
            "read": int(len(x.result.table)),
            "used": int(len(xt)),
            "train": int(len(x_train)),
            "val": int(len(x_val)),
            "undecodable": failed,
            "held_out_copies": int(held.sum()),
            "crop": None if crop is None else [float(c) for c in crop],
            "align": bool(extra.align),
            "row_counts": x.counts.to_dict(),
        }
        offset += len(xt)
    merged = pd.concat(tables, ignore_index=True)
    all_images = np.concatenate(arrays)
    new_splits = Splits(
        train=np.concatenate(train),
        val=np.concatenate(val),
        test=splits.test,
        how=splits.how + f" + {len(d.extra)} extra dataset(s) in train/val",
        groups=splits.groups,
        notes=list(splits.notes),
    )
    return merged, all_images, np.arange(len(merged), dtype=np.int64), new_splits


# --------------------------------------------------------------------------- copies across datasets
TRAIN, VAL, HELD_OUT = 0, 1, 2  #: a row's side; HELD_OUT: the main dataset's test split


@dataclass
class _Sides:
    """Which side each duplicate group (over all of a run's datasets) is on: the most
    held-out side of its rows placed so far (test > validation > training)."""

    group_id: np.ndarray | None  # over the main rows then each extra's rows, or None
    starts: list[int]  # where each extra's rows start in group_id
    side_of: dict[int, int]

    def place(self, k: int, xt: pd.DataFrame, val_fraction: float, seed: int) -> np.ndarray:
        """Sides of extra ``k``'s rows (TRAIN, VAL or HELD_OUT), remembered for the next
        extras: a copy's side where one is placed, the other rows split by their own
        groups (``val_fraction`` of them to validation)."""
        side = np.full(len(xt), -1, np.int64)
        gid = None
        if self.group_id is not None:
            gid = self.group_id[self.starts[k] : self.starts[k] + len(xt)]
            side = np.array([self.side_of.get(int(g), -1) for g in gid], dtype=np.int64)
            xt = xt.assign(group=gid)
        free = np.flatnonzero(side < 0)
        if val_fraction > 0 and len(free):
            xs = split_by_fractions(xt.iloc[free], [1 - val_fraction, val_fraction], seed)
            side[free[xs.train]], side[free[xs.val]] = TRAIN, VAL
        side[side < 0] = TRAIN
        for g, s in zip(gid if gid is not None else [], side, strict=False):
            self.side_of[int(g)] = max(self.side_of.get(int(g), -1), int(s))
        return side


def _extra_sides(
    config: Config,
    table: pd.DataFrame,
    splits: Splits,
    main_rows: DatasetRows,
    loaded: list,
    info: dict,
    progress: bool,
) -> _Sides:
    """Link the main dataset's rows (grouped as its splits were: folds file, audit or
    subjects) and every extra's, and mark the groups of the main rows with their split's
    side."""
    from agegender.data.datamodule import table_groups
    from agegender.data.prepare import link_rows

    d = config.data
    names = [_source_name(d.path)] + [name for name, *_ in loaded]
    links = link_rows(
        [main_rows] + [x for _, x, *_ in loaded],
        [table.assign(group=table_groups(table))] + [xt for _, _, xt, *_ in loaded],
        names,
        progress=progress,
    )
    info["cross_dataset_duplicates"] = links.summary
    side_of: dict[int, int] = {}
    main_gid = links.group_id[: len(table)]
    for s, idx in ((TRAIN, splits.train), (VAL, splits.val), (HELD_OUT, splits.test)):
        if idx is not None:
            for g in main_gid[idx]:
                side_of[int(g)] = max(side_of.get(int(g), -1), s)
    starts = np.cumsum([len(table)] + [len(xt) for _, _, xt, *_ in loaded]).tolist()
    return _Sides(links.group_id, starts[:-1], side_of)
