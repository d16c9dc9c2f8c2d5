"""The LightningDataModule over the uint8 image cache.

Loading is deliberately trivial so the CPU works on the model, not the loader: a batch is
ONE fancy-indexed read of the memmap (sorted row indices), handed over as a uint8
``(B, 3, H, W)`` tensor plus label tensors; augmentation runs later on the model's device
(:mod:`agegender.data.augment`). Batches:

- ``image``     uint8 ``(B, 3, H, W)`` (channels-last strides, straight from the cache)
- ``gender``    int64, 0 male / 1 female / -1 unknown
- ``age``       float32 years, NaN unknown
- ``age_group`` int64 Adience group 0..7, -1 unknown
- ``row``       int64 row of the table the batch came from

Splits (:func:`make_splits`) come from a folds CSV (fold k held out) or from fractions,
with scikit-learn's ``GroupShuffleSplit`` over split groups (shared subject or duplicate
group, :func:`agegender.data.folds.split_groups`), so no face's copies straddle a split.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import GroupShuffleSplit
from torch.utils.data import DataLoader, Dataset, Sampler

from agegender.data.folds import split_groups

SPLITS = ("train", "val", "test")


# --------------------------------------------------------------------------- splitting
@dataclass
class Splits:
    """Row indices (into the table) of each split, and how they were made."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray | None = None
    how: str = ""
    groups: int = 0
    notes: list[str] = field(default_factory=list)

    def sizes(self) -> dict[str, int]:
        out = {"train": len(self.train), "val": len(self.val)}
        if self.test is not None:
            out["test"] = len(self.test)
        return out

    def as_dict(self) -> dict[str, np.ndarray]:
        d = {"train": self.train, "val": self.val}
        if self.test is not None:
            d["test"] = self.test
        return d


def table_groups(table: pd.DataFrame) -> np.ndarray:
    """Split-group id per row: ``split_group`` if present, else components over subject
    and the audit's duplicate ``group`` column (when the table has one)."""
    if "split_group" in table.columns and table["split_group"].notna().all():
        return pd.factorize(table["split_group"].to_numpy())[0]
    dup = table["group"].to_numpy() if "group" in table.columns else None
    return split_groups(table, dup)


def split_by_fractions(
    table: pd.DataFrame, fractions: list[float] | tuple[float, ...], seed: int = 0
) -> Splits:
    """Train/val[/test] by fractions of independent groups (GroupShuffleSplit)."""
    if len(fractions) not in (2, 3):
        raise ValueError(f"split: need 2 or 3 fractions, got {list(fractions)}")
    groups = table_groups(table)
    n_groups = len(np.unique(groups))
    if n_groups < len(fractions):
        raise ValueError(
            f"split: only {n_groups} independent groups, cannot make {len(fractions)} splits"
        )
    idx = np.arange(len(table))
    total = float(sum(fractions))
    test = None
    if len(fractions) == 3:
        gss = GroupShuffleSplit(n_splits=1, test_size=fractions[2] / total, random_state=seed)
        rest_pos, test_pos = next(gss.split(idx, groups=groups))
        test, idx, groups = idx[test_pos], idx[rest_pos], groups[rest_pos]
        total -= fractions[2]
    gss = GroupShuffleSplit(n_splits=1, test_size=fractions[1] / total, random_state=seed + 1)
    train_pos, val_pos = next(gss.split(idx, groups=groups))
    return Splits(
        train=np.sort(idx[train_pos]),
        val=np.sort(idx[val_pos]),
        test=None if test is None else np.sort(test),
        how=f"GroupShuffleSplit {list(fractions)} seed {seed}",
        groups=n_groups,
    )


def split_by_fold(table: pd.DataFrame, fold: int, val_fold: int | None = None) -> Splits:
    """Fold ``fold`` held out: it is the validation set, or the test set when ``val_fold``
    names a separate validation fold. ``table`` needs a ``fold`` column."""
    folds = table["fold"].astype(int).to_numpy()
    present = sorted(set(folds.tolist()))
    for key, k in (("data.fold", fold), ("data.val_fold", val_fold)):
        if k is not None and k not in present:
            raise ValueError(f"{key}: fold {k} is not in the folds file (folds: {present})")
    idx = np.arange(len(table))
    held = folds == fold
    if val_fold is None:
        return Splits(idx[~held], idx[held], None, how=f"fold {fold} held out (val)")
    val = folds == val_fold
    return Splits(
        idx[~held & ~val],
        idx[val],
        idx[held],
        how=f"fold {fold} test, fold {val_fold} val",
    )


# --------------------------------------------------------------------------- balancing
BALANCE_CELLS = {
    "none": (),
    "source_gender_age": ("source", "gender", "age_group"),
    "source_gender_age_race": ("source", "gender", "age_group", "race"),
}


def balance_weights(
    table: pd.DataFrame, rows: np.ndarray, balance: str, power: float = 0.0
) -> np.ndarray | None:
    """Draw probabilities (summing to 1) for the training positions ``rows`` (table rows,
    a row repeated by ``data.extra``'s ``weight`` counted each time), or ``None`` for
    ``balance="none"``. Each source keeps the share of draws it has in plain sampling;
    within a source, each cell of :data:`BALANCE_CELLS` (gender x Adience age group
    [x race]) gets a share proportional to ``n_cell ** power``, a missing label (CelebA's
    ages, a dataset's race) counting as one more value: ``power`` 0 gives every cell an
    equal share, 1 is plain sampling, 0.5 is between (a cell 100 times larger is drawn 10
    times as often, not 100)."""
    if balance not in BALANCE_CELLS:
        raise ValueError(f"data.balance: {balance!r} is not one of {sorted(BALANCE_CELLS)}")
    if not 0.0 <= power <= 1.0:
        raise ValueError(f"data.balance_power: {power} is not between 0 and 1")
    if balance == "none":
        return None
    part = table.iloc[np.asarray(rows, dtype=np.int64)]
    n = len(part)
    source = part["source"].astype(str) if "source" in part.columns else pd.Series([""] * n)
    keys = {"source": source.to_numpy()}
    for col in BALANCE_CELLS[balance][1:]:
        known = col in part.columns
        keys[col] = part[col].astype("Int64").fillna(-1).to_numpy() if known else np.full(n, -1)
    cell = pd.DataFrame(keys).groupby(list(keys), sort=False).ngroup().to_numpy()
    src = pd.factorize(keys["source"])[0]
    sizes = np.bincount(cell).astype(np.float64)
    cell_src = np.zeros(len(sizes), dtype=np.int64)
    cell_src[cell] = src
    mass = sizes**power
    share = mass / np.bincount(cell_src, weights=mass)[cell_src]  # each cell's share of its source
    src_size = np.bincount(src)[src]
    w = src_size * share[cell] / sizes[cell]
    return w / w.sum()


# --------------------------------------------------------------------------- loading
class BatchSampler(Sampler[list[int]]):
    """Yields whole batches of positions into ``indices``, sharded across DDP ranks.

    Like ``DistributedSampler`` + ``BatchSampler``: a per-epoch permutation (seeded by
    ``seed`` and ``set_epoch``), padded by wrapping so every rank gets the same number of
    batches, rank ``r`` taking every ``world``-th element. ``drop_last`` drops a final
    partial batch (only when at least one full batch remains). ``weights`` (one
    probability per index, :func:`balance_weights`): each epoch draws ``len(indices)``
    indices with replacement by them instead of a permutation.
    """

    def __init__(
        self,
        indices: np.ndarray,
        batch_size: int,
        *,
        shuffle: bool,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        weights: np.ndarray | None = None,
    ) -> None:
        if len(indices) == 0:
            raise ValueError("cannot sample from an empty split")
        self.indices = np.asarray(indices, dtype=np.int64)
        if weights is not None and len(weights) != len(self.indices):
            raise ValueError(f"{len(weights)} sampling weights for {len(self.indices)} indices")
        self.weights = weights
        self.batch_size = int(batch_size)
        self.shuffle, self.drop_last = shuffle, drop_last
        self.seed, self.rank, self.world = seed, rank, world
        self.epoch = 0
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def resume_at(self, epoch: int, batches: int) -> None:
        """Skip the first ``batches`` batches the next time epoch ``epoch`` is iterated."""
        self._resume = (int(epoch), int(batches))

    def _per_rank(self) -> int:
        return -(-len(self.indices) // self.world)

    def __len__(self) -> int:
        n = self._per_rank()
        if self.drop_last and n >= self.batch_size:
            return n // self.batch_size
        return -(-n // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = self.indices
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch])
            if self.weights is None:
                order = order[rng.permutation(len(order))]
            else:
                order = order[rng.choice(len(order), len(order), p=self.weights)]
        total = self._per_rank() * self.world
        if total > len(order):
            order = np.concatenate([order, order[: total - len(order)]])
        mine = order[self.rank :: self.world]
        start = 0
        if self._resume is not None:
            if self._resume[0] == self.epoch:
                start = self._resume[1]
            self._resume = None
        for b in range(start, len(self)):
            yield mine[b * self.batch_size : (b + 1) * self.batch_size].tolist()


class ResumableLoader(DataLoader):
    """A DataLoader whose position within the epoch goes into Lightning checkpoints, so a
    run resumed from a mid-epoch ``last.ckpt`` continues with exactly the batches it had
    not trained on. ``progress()`` returns the batches of this epoch already trained."""

    def __init__(self, *args: Any, progress: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._progress = progress

    def state_dict(self) -> dict[str, int]:
        done = int(self._progress()) if self._progress is not None else 0
        return {"epoch": int(self.sampler.epoch), "batches": done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.resume_at(state.get("epoch", -1), state.get("batches", 0))


class CachedBatches(Dataset):
    """``dataset[list_of_rows]`` -> one batch dict (one memmap read per batch).

    ``cache_rows[i]`` is the row of ``images`` holding table row ``i`` (default: the same).
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: dict[str, np.ndarray],
        cache_rows: np.ndarray | None = None,
    ) -> None:
        self.images = images
        self.labels = labels
        n = len(next(iter(labels.values())))
        self.cache_rows = (
            np.arange(n, dtype=np.int64) if cache_rows is None else np.asarray(cache_rows)
        )
        if len(self.cache_rows) != n:
            raise ValueError(f"{len(self.cache_rows)} cache rows for {n} table rows")

    def __len__(self) -> int:
        return len(self.cache_rows)

    def __getitem__(self, rows: list[int]) -> dict[str, torch.Tensor]:
        rows_np = np.sort(np.asarray(rows, dtype=np.int64))
        where = self.cache_rows[rows_np]
        order = np.argsort(where, kind="stable")  # ascending memmap offsets: one sweep
        rows_np, where = rows_np[order], where[order]
        pixels = np.ascontiguousarray(self.images[where])  # (B, H, W, 3) uint8
        if pixels.ndim == 5:  # stored features (B, views, C, h, w): train/features.py
            batch = {"image": torch.from_numpy(pixels)}
        else:
            batch = {"image": torch.from_numpy(pixels).permute(0, 3, 1, 2)}
        for key, values in self.labels.items():
            batch[key] = torch.from_numpy(values[rows_np])
        batch["row"] = torch.from_numpy(rows_np)
        return batch


def source_names(table: pd.DataFrame) -> list[str]:
    """The datasets a training table mixes (``source`` column, in order of appearance: the
    main dataset first), or ``[]`` when it holds one dataset."""
    if "source" not in table.columns:
        return []
    names = pd.unique(table["source"].astype(str)).tolist()
    return names if len(names) > 1 else []


def label_arrays(table: pd.DataFrame) -> dict[str, np.ndarray]:
    """gender int64 (-1 unknown), age float32 (NaN unknown), age_group int64 (-1 unknown),
    and for a table that mixes datasets ``source``: each row's index in
    :func:`source_names` (so validation and test metrics can be given per dataset)."""
    labels = {
        "gender": table["gender"].astype("Int64").fillna(-1).to_numpy(dtype=np.int64),
        "age": pd.to_numeric(table["age"], errors="coerce").to_numpy(dtype=np.float32),
        "age_group": table["age_group"].astype("Int64").fillna(-1).to_numpy(dtype=np.int64),
    }
    names = source_names(table)
    if names:
        codes = {name: i for i, name in enumerate(names)}
        labels["source"] = table["source"].astype(str).map(codes).to_numpy(dtype=np.int64)
    return labels


class FaceDataModule(L.LightningDataModule):
    """Train/val/test loaders over ``images`` (``(M, S, S, 3)`` uint8) for the table row
    indices in ``splits``; table row ``i`` is ``images[cache_rows[i]]`` (default: row
    ``i``, i.e. ``images`` row-aligned with ``table``). ``extra_labels``: more per-row
    arrays the batches carry under their keys (a teacher's outputs). ``balance``
    (``data.balance``) and ``balance_power`` (``data.balance_power``): the training draws
    by :func:`balance_weights`."""

    def __init__(
        self,
        images: np.ndarray,
        table: pd.DataFrame,
        splits: Splits,
        *,
        cache_rows: np.ndarray | None = None,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        pin_memory: bool = False,
        extra_labels: dict[str, np.ndarray] | None = None,
        balance: str = "none",
        balance_power: float = 0.0,
    ) -> None:
        super().__init__()
        if cache_rows is None and len(images) != len(table):
            raise ValueError(f"{len(images)} cached images for {len(table)} table rows")
        self.images = images
        self.table = table
        self.splits = splits
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.pin_memory = pin_memory
        labels = label_arrays(table)
        for key, values in (extra_labels or {}).items():  # e.g. a teacher's outputs per row
            if len(values) != len(table):
                raise ValueError(f"{key}: {len(values)} values for {len(table)} table rows")
            labels[key] = values
        self.dataset = CachedBatches(images, labels, cache_rows)
        self.train_weights = balance_weights(table, splits.train, balance, balance_power)

    @property
    def size(self) -> int:
        return int(self.images.shape[1])

    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def train_batches(self, rank: int = 0, world: int = 1) -> int:
        """Training batches per epoch on each rank."""
        sampler = BatchSampler(
            self.splits.train,
            self.batch_size,
            shuffle=True,
            drop_last=True,
            rank=rank,
            world=world,
        )
        return len(sampler)

    def _trained_batches(self) -> int:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0
        return trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def _loader(self, indices: np.ndarray, *, train: bool) -> DataLoader:
        rank, world = self._rank_world()
        sampler = BatchSampler(
            indices,
            self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            drop_last=train,
            seed=self.seed,
            rank=rank,
            world=world,
            weights=self.train_weights if train else None,
        )
        kwargs: dict[str, Any] = dict(
            batch_size=None,  # the sampler yields whole batches
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
        )
        if train:
            return ResumableLoader(self.dataset, progress=self._trained_batches, **kwargs)
        return DataLoader(self.dataset, **kwargs)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.splits.train, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.splits.val, train=False)

    def test_dataloader(self) -> DataLoader:
        if self.splits.test is None:
            raise ValueError("this run has no test split (data.split has 2 fractions)")
        return self._loader(self.splits.test, train=False)

    def state_dict(self) -> dict[str, Any]:
        return {"sizes": self.splits.sizes(), "how": self.splits.how}
