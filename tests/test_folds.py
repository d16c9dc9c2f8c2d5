import numpy as np
import pandas as pd
import pytest

from agegender.data.folds import make_folds, read_folds, split_groups, write_folds
from agegender.data.readers import DatasetError, read_dataset
from agegender.data.records import make_table


def toy(n=200, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        age = float(rng.integers(1, 80))
        rows.append(
            dict(
                path=f"/x/{i}.jpg",
                gender=int(rng.integers(0, 2)),
                age=age,
                age_group=None,
                subject=f"s{i // 4}" if i < 100 else "",
                race=None,
                source="t",
                fold=None,
                line=None,
            )
        )
    t = make_table(rows)
    from agegender.data.records import ages_to_groups

    t["age_group"] = pd.array(ages_to_groups(t["age"].to_numpy()), dtype="Int8")
    return t


def test_no_subject_or_duplicate_group_spans_folds():
    t = toy()
    dup = np.arange(len(t))
    dup[150:155] = 150  # a duplicate group among subject-less rows
    dup[10] = dup[120] = 999  # a duplicate linking subject s2 to a subject-less row
    res = make_folds(t, 5, seed=1, dup_group=dup)
    out = res.table
    assert len(out) == len(t) and set(out["fold"]) == set(range(5))
    assert (out[out["subject"] != ""].groupby("subject")["fold"].nunique() == 1).all()
    assert out.loc[150:154, "fold"].nunique() == 1
    assert out.loc[8:11, "fold"].nunique() == 1 and out.loc[120, "fold"] == out.loc[10, "fold"]
    # stratified: each fold near the overall female fraction
    frac = out.groupby("fold")["gender"].mean().astype(float)
    assert (abs(frac - out["gender"].astype(float).mean()) < 0.12).all()


def test_conflicts_dropped_and_counted():
    t = toy(50)
    conflict = np.zeros(len(t), bool)
    conflict[[3, 7]] = True
    res = make_folds(t, 2, conflict=conflict)
    assert res.dropped_conflicts == 2 and len(res.table) == 48
    keep = make_folds(t, 2, conflict=conflict, conflicts="keep")
    assert keep.dropped_conflicts == 0 and len(keep.table) == 50


def test_official_folds_kept_and_roundtrip(tmp_path):
    t = toy(40)
    t["fold"] = pd.array([i % 4 for i in range(40)], dtype="Int8")
    res = make_folds(t, 5)
    assert res.official and res.k == 4 and (res.table["fold"] == t["fold"]).all()
    out = write_folds(res, tmp_path / "f.csv")
    back = read_folds(out)
    assert back["path"].tolist() == res.table["path"].tolist()
    assert back["fold"].tolist() == res.table["fold"].tolist()


def test_one_official_fold_gets_grouped_folds():
    """Rows all from one official fold (a part of Adience's fold 0) cannot be held out by
    that fold: they get k grouped folds, no subject on two sides."""
    t = toy(100)
    t["fold"] = pd.array([0] * 100, dtype="Int8")
    res = make_folds(t, 5, seed=3)
    assert not res.official and res.k == 5 and set(res.table["fold"]) == set(range(5))
    out = res.table[res.table["subject"] != ""]
    assert (out.groupby("subject")["fold"].nunique() == 1).all()


def test_split_groups_connects_chains():
    t = toy(6)
    t["subject"] = ["a", "a", "b", "", "", "c"]
    g = split_groups(t, np.array([0, 1, 2, 2, 4, 4]))
    assert g[0] == g[1] and g[2] == g[3] and g[4] == g[5] and len(set(g)) == 3


def test_bad_inputs(tmp_path):
    with pytest.raises(DatasetError, match="cannot make 5 folds"):
        make_folds(toy(3), 5)
    (tmp_path / "f.csv").write_text("path,fold\na.jpg,0\nb.jpg,x\n")
    with pytest.raises(DatasetError, match=r"f.csv:3: fold is not a number"):
        read_folds(tmp_path / "f.csv")
    with pytest.raises(DatasetError, match="folds file not found"):
        read_folds(tmp_path / "nope.csv")


def test_real_utkface_folds_balanced(utkface_dir):
    r = read_dataset(utkface_dir)
    res = make_folds(r.table, 5, seed=0)
    sizes = res.table["fold"].value_counts()
    assert len(sizes) == 5 and sizes.max() - sizes.min() <= 0.02 * sizes.mean()
    assert res.table["path"].is_unique
