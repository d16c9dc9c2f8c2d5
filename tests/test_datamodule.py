"""The data module (``agegender.data.datamodule``): batch sampling, batches and label
conventions, train/val/test splits by fraction and by fold."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agegender.data.datamodule import (
    BatchSampler,
    FaceDataModule,
    split_by_fold,
    split_by_fractions,
)
from agegender.data.records import make_table


def test_batch_sampler_shards_pads_and_reshuffles() -> None:
    idx = np.arange(100, 111)  # 11 rows
    ranks = [BatchSampler(idx, 3, shuffle=True, seed=1, rank=r, world=2) for r in (0, 1)]
    got = [[b for b in s] for s in ranks]
    assert [len(g) for g in got] == [2, 2] == [len(s) for s in ranks]  # 6 rows each, padded
    flat = [i for g in got for b in g for i in b]
    assert set(flat) == set(idx.tolist()) and len(flat) == 12
    assert list(ranks[0]) == got[0]  # same epoch: same order
    ranks[0].set_epoch(1)
    assert list(ranks[0]) != got[0]
    train = BatchSampler(idx, 4, shuffle=False, drop_last=True)
    assert [len(b) for b in train] == [4, 4]


def test_datamodule_batches_and_label_conventions() -> None:
    table = make_table(
        [
            dict(
                path=f"/x/{i}.jpg",
                gender=[0, 1, None][i % 3],
                age=[30.0, None][i % 2],
                age_group=[4, None][i % 2],
                subject="",
                source="t",
            )
            for i in range(10)
        ]
    )
    images = np.arange(10, dtype=np.uint8)[:, None, None, None] * np.ones((1, 8, 8, 3), np.uint8)
    splits = split_by_fractions(table, [0.6, 0.4], seed=0)
    dm = FaceDataModule(images, table, splits, batch_size=4, eval_batch_size=16)
    b = next(iter(dm.val_dataloader()))
    assert b["image"].dtype == torch.uint8 and b["image"].shape == (4, 3, 8, 8)
    rows = b["row"].numpy()
    assert sorted(rows.tolist()) == sorted(splits.val.tolist())
    assert (b["image"][:, 0, 0, 0].numpy() == rows).all()  # pixels come from those rows
    assert b["gender"].dtype == torch.int64 and b["age_group"].dtype == torch.int64
    for r, g, a, grp in zip(rows, b["gender"], b["age"], b["age_group"], strict=True):
        assert int(g) == [0, 1, -1][r % 3]
        assert (np.isnan(float(a)) and int(grp) == -1) if r % 2 else (a == 30 and grp == 4)
    assert sum(len(x["row"]) for x in dm.train_dataloader()) == 4  # drop_last: 6 -> 4


def test_fraction_splits_keep_groups_together() -> None:
    n = 400
    table = make_table([dict(path=f"/x/{i}", gender=i % 2, source="t") for i in range(n)])
    table["group"] = np.arange(n) // 4  # duplicate groups of 4
    s = split_by_fractions(table, [0.4, 0.3, 0.3], seed=3)
    parts = [set(table["group"].iloc[p]) for p in (s.train, s.val, s.test)]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert sorted(np.concatenate([s.train, s.val, s.test]).tolist()) == list(range(n))
    assert abs(len(s.train) - 160) <= 8 and abs(len(s.test) - 120) <= 8
    assert s.sizes() == {"train": len(s.train), "val": len(s.val), "test": len(s.test)}


def test_fold_splits() -> None:
    table = make_table([dict(path=f"/x/{i}", gender=0, source="t") for i in range(10)])
    table["fold"] = np.arange(10) % 5
    s = split_by_fold(table, 2)
    assert set(table["fold"].iloc[s.val]) == {2} and 2 not in set(table["fold"].iloc[s.train])
    s = split_by_fold(table, 2, val_fold=3)
    assert set(table["fold"].iloc[s.test]) == {2} and set(table["fold"].iloc[s.val]) == {3}
    with pytest.raises(ValueError, match="data.fold: fold 7 is not in"):
        split_by_fold(table, 7)
