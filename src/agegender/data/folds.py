"""Grouped, stratified k-fold splits.

No subject and no duplicate / near-duplicate group ever spans two folds: rows are joined
into *split groups* (connected components over shared subject ids and shared duplicate
groups from the audit), and scikit-learn's ``StratifiedGroupKFold`` assigns whole groups to
folds while balancing gender x age group. Datasets with their own folds (Adience) keep them
unless asked otherwise, or unless every row is in one of them (a part of one Adience fold):
one fold cannot hold anything out, so those rows get grouped folds like any other dataset.

Conflicting labels (copies of one photo labelled differently) follow ``conflicts``:
``"drop"`` (default) removes every row of a conflict group, since no label can be trusted;
``"keep"`` keeps them (they still share a fold).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.model_selection import StratifiedGroupKFold

from agegender.data.records import DatasetError
from agegender.fileio import atomic_path

CONFLICT_POLICIES = ("drop", "keep")


@dataclass
class FoldResult:
    """The kept rows with a ``fold`` and a ``split_group`` column, and what was done."""

    table: pd.DataFrame
    k: int
    dropped_conflicts: int
    official: bool
    groups: int


def split_groups(
    table: pd.DataFrame, dup_group: np.ndarray | pd.Series | None = None
) -> np.ndarray:
    """Connected components over rows sharing a non-empty subject or a duplicate group id."""
    n = len(table)
    keys: list[np.ndarray] = []
    subj = table["subject"].astype(str).to_numpy()
    known = subj != ""
    if known.any():
        codes = pd.factorize(subj)[0]
        keys.append(np.where(known, codes, -1))
    if dup_group is not None:
        keys.append(pd.factorize(np.asarray(dup_group))[0])
    rows_list, cols_list = [np.arange(n)], [np.arange(n)]
    offset = n
    for key in keys:
        ok = key >= 0
        rows_list.append(np.arange(n)[ok])
        cols_list.append(offset + key[ok])
        offset += int(key.max()) + 1 if ok.any() else 0
    rows, cols = np.concatenate(rows_list), np.concatenate(cols_list)
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(offset, offset))
    _, labels = connected_components(graph, directed=False)
    return pd.factorize(labels[:n])[0]


def strata(table: pd.DataFrame) -> np.ndarray:
    """Stratification label: gender (or unknown) x age group (or unknown)."""
    g = table["gender"].fillna(2).astype(int).to_numpy()
    a = table["age_group"].fillna(8).astype(int).to_numpy()
    return g * 9 + a


def make_folds(
    table: pd.DataFrame,
    k: int = 5,
    *,
    seed: int = 0,
    dup_group: np.ndarray | pd.Series | None = None,
    conflict: np.ndarray | pd.Series | None = None,
    conflicts: str = "drop",
    use_official: bool = True,
) -> FoldResult:
    """Assign every kept row to one of ``k`` folds (see the module docstring)."""
    if k < 2:
        raise ValueError(f"k must be at least 2 (got {k})")
    if conflicts not in CONFLICT_POLICIES:
        raise ValueError(f"conflicts must be one of {CONFLICT_POLICIES} (got {conflicts!r})")
    table = table.reset_index(drop=True).copy()
    groups = split_groups(table, dup_group)
    keep = np.ones(len(table), dtype=bool)
    if conflict is not None and conflicts == "drop":
        keep &= ~np.asarray(conflict, dtype=bool)
    dropped = int((~keep).sum())
    table, groups = table[keep].reset_index(drop=True), groups[keep]
    table["split_group"] = pd.factorize(groups)[0]
    official = bool(
        use_official and len(table) and table["fold"].notna().all() and table["fold"].nunique() >= 2
    )
    if official:
        folds = table["fold"].astype(int).to_numpy()
        k = len(np.unique(folds))
    else:
        n_groups = table["split_group"].nunique()
        if n_groups < k:
            raise DatasetError(f"only {n_groups} independent groups: cannot make {k} folds")
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        folds = np.empty(len(table), dtype=int)
        for i, (_, test_idx) in enumerate(
            splitter.split(np.zeros(len(table)), strata(table), table["split_group"])
        ):
            folds[test_idx] = i
    table["fold"] = pd.array(folds, dtype="Int8")
    return FoldResult(table, k, dropped, official, int(table["split_group"].nunique()))


def write_folds(result: FoldResult, out: str | Path) -> Path:
    """Write ``path,fold,split_group,gender,age,age_group,subject`` as CSV (atomically:
    processes running different folds of one CV may write it at the same time)."""
    out = Path(out)
    cols = ["path", "fold", "split_group", "gender", "age", "age_group", "race", "subject"]
    with atomic_path(out) as tmp:
        result.table[cols].to_csv(tmp, index=False)
    return out


def read_folds(path: str | Path) -> pd.DataFrame:
    """Read a folds CSV (at least ``path`` and ``fold``), one-line errors naming the file."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"{path}: folds file not found")
    try:
        df = pd.read_csv(p)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DatasetError(f"{path}: cannot read folds CSV: {str(exc).splitlines()[0]}") from exc
    missing = {"path", "fold"} - set(df.columns)
    if missing:
        raise DatasetError(f"{path}:1: missing column(s) {', '.join(sorted(missing))}")
    bad = pd.to_numeric(df["fold"], errors="coerce").isna()
    if bad.any():
        raise DatasetError(f"{path}:{int(np.argmax(bad.to_numpy())) + 2}: fold is not a number")
    df["fold"] = df["fold"].astype(int)
    return df
