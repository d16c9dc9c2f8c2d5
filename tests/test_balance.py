"""Balanced training draws (``data.balance``): the weights, the sampler, the config key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from agegender.config import ConfigError, load_config
from agegender.data.datamodule import BatchSampler, FaceDataModule, Splits, balance_weights
from agegender.data.records import age_to_group, make_table


def _table() -> pd.DataFrame:
    """Source ``a``: 900 men and 100 women aged 30 (group 4), 50 girls aged 5 (group 1);
    source ``b``: 40 women and 10 men with no age (CelebA-like), race unknown."""
    rows = (
        [dict(gender=0, age=30.0, race=0, source="a")] * 900
        + [dict(gender=1, age=30.0, race=1, source="a")] * 100
        + [dict(gender=1, age=5.0, race=0, source="a")] * 50
        + [dict(gender=1, age=None, race=None, source="b")] * 40
        + [dict(gender=0, age=None, race=None, source="b")] * 10
    )
    return make_table(
        [
            dict(r, path=f"/x/{i}.jpg", subject="", age_group=age_to_group(r["age"]))
            for i, r in enumerate(rows)
        ]
    ).assign(source=[r["source"] for r in rows])


def _cells(table: pd.DataFrame, rows: np.ndarray) -> pd.Series:
    part = table.iloc[rows]
    group = part["age_group"].fillna(-1).astype(str)
    key = part["source"] + "|" + part["gender"].astype(str) + "|" + group
    return key.value_counts(normalize=True)


def test_balanced_draws_give_each_cell_of_a_source_an_equal_share() -> None:
    table = _table()
    assert table["age_group"].tolist()[:1] == [4] and table["age_group"].iloc[1000] == 1
    train = np.arange(len(table))
    w = balance_weights(table, train, "source_gender_age")
    assert w is not None and w.shape == (1100,) and w.sum() == pytest.approx(1.0)
    sampler = BatchSampler(train, 100, shuffle=True, seed=3, weights=w)
    drawn = []
    for epoch in range(20):
        sampler.set_epoch(epoch)
        drawn += [i for b in sampler for i in b]
    assert len(drawn) == 20 * 1100  # an epoch stays len(train) draws
    share = _cells(table, np.asarray(drawn))
    # sources keep their plain shares (1050/1100, 50/1100); within a, 3 equal cells; b, 2
    expect = {"a|0|4": 1050 / 1100 / 3, "a|1|4": 1050 / 1100 / 3, "a|1|1": 1050 / 1100 / 3}
    expect.update({"b|1|-1": 50 / 1100 / 2, "b|0|-1": 50 / 1100 / 2})
    assert set(share.index) == set(expect)
    for cell, value in expect.items():
        assert share[cell] == pytest.approx(value, abs=0.01), cell
    plain_draws = [i for b in BatchSampler(train, 100, shuffle=True) for i in b]
    plain = _cells(table, np.asarray(plain_draws))
    assert plain["a|0|4"] == pytest.approx(900 / 1100, abs=0.01)  # without: the table's own


def test_balance_power_moves_cell_shares_between_equal_and_plain() -> None:
    table = _table()  # source a: cells of 900, 100, 50 faces; source b: 10 and 40
    rows = np.arange(len(table))
    equal = balance_weights(table, rows, "source_gender_age", 0.0)
    assert equal == pytest.approx(balance_weights(table, rows, "source_gender_age"))
    plain = balance_weights(table, rows, "source_gender_age", 1.0)
    assert plain == pytest.approx(np.full(len(table), 1 / len(table)))
    half = balance_weights(table, rows, "source_gender_age", 0.5)
    assert half is not None and half.sum() == pytest.approx(1.0)
    a = np.sqrt([900, 100, 50])
    # each cell's share of source a's 1050/1100 of the draws goes as sqrt(cell size)
    assert half[:900].sum() == pytest.approx(1050 / 1100 * a[0] / a.sum())
    assert half[900:1000].sum() == pytest.approx(1050 / 1100 * a[1] / a.sum())
    assert half[1050:].sum() == pytest.approx(50 / 1100)  # sources keep their shares
    with pytest.raises(ValueError, match="data.balance_power"):
        balance_weights(table, rows, "source_gender_age", 1.5)


def test_race_cells_and_repeated_rows() -> None:
    table = _table()
    w = balance_weights(table, np.arange(len(table)), "source_gender_age_race")
    assert w is not None
    # a: (0, 4, race 0), (1, 4, race 1), (1, 1, race 0): three cells again, equal shares
    assert w[0] * 900 == pytest.approx(w[900] * 100) == pytest.approx(w[1000] * 50)
    # a row drawn twice (data.extra weight 2) counts twice in its cell and its source
    rows = np.concatenate([np.arange(1050), np.arange(1050, 1100), np.arange(1050, 1100)])
    w2 = balance_weights(table, rows, "source_gender_age")
    assert w2 is not None
    assert w2[1050:].sum() == pytest.approx(100 / 1150)  # b's share doubled
    assert w2[rows == 1050].sum() == pytest.approx(100 / 1150 / 2 / 40)  # its cell's 40 rows
    assert balance_weights(table, rows, "none") is None
    with pytest.raises(ValueError, match="data.balance"):
        balance_weights(table, rows, "gender")


def test_datamodule_trains_on_balanced_draws_and_validates_on_every_face() -> None:
    table = _table()
    images = np.zeros((len(table), 4, 4, 3), np.uint8)
    val = np.arange(0, 1100, 11)
    train = np.setdiff1d(np.arange(1100), val)
    dm = FaceDataModule(
        images, table, Splits(train, val), batch_size=50, balance="source_gender_age"
    )
    drawn = np.concatenate([b["row"].numpy() for b in dm.train_dataloader()])
    assert len(drawn) == len(train) // 50 * 50
    assert _cells(table, drawn)["a|0|4"] < 0.45  # 82 % of the table, a third of a's draws
    seen = np.concatenate([b["row"].numpy() for b in dm.val_dataloader()])
    assert sorted(seen.tolist()) == val.tolist()  # validation: each face once


def test_config_key(tmp_path: Path) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text("data:\n  path: faces\nmodel:\n  name: small_cnn\n", encoding="utf-8")
    assert load_config(cfg).data.balance == "none"
    c = load_config(cfg, ["data.balance=source_gender_age_race"])
    assert c.data.balance == "source_gender_age_race"
    with pytest.raises(ConfigError) as info:
        load_config(cfg, ["data.balance=gender"])
    assert "data.balance:" in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).startswith(str(cfg))
