"""Reading a dataset for a command, with counts of the rows read, kept and rejected.

:func:`read_rows` is the one read -> sample -> audit -> drop sequence of ``agegender data
folds``, ``data audit``, ``train`` and ``cv``: the reader's rows (a line or file it cannot
use is a *bad row*), an optional seeded sample (``limit``), the duplicate audit
(unreadable images are dropped; duplicate groups whose labels conflict are dropped when
``drop_conflicts``). Later steps (folds file, task labels, image cache, evaluation) add
their own rejections to the same :class:`RowCounts`.

Every command prints :meth:`RowCounts.line` once per dataset it reads::

    read 23,708 rows from /data/utkface: kept 23,705, rejected 3 (2 bad rows, 1 unreadable)

and writes :meth:`RowCounts.to_dict` as ``"row_counts"`` in its JSON output
(``{"path", "read", "kept", "rejected", "reasons": {reason: rows}}``, read = kept +
rejected, reasons in :data:`REASONS` order, only those with rows; ``"notes": {remark:
rows}`` when the reader remarked on rows it read, e.g. Adience's spellings of two age
groups::

    read 1,586 rows from /data/adience: kept 1,584, rejected 2 (2 conflicting); as read:
    6 age (8, 12) read as 8-13, 30 age (60, 100) read as 60+, 1 without gender, 1 without age
).

Nothing to do is an error: :func:`read_rows` (which every command reading a dataset goes
through) raises :class:`NoRowsError` when it keeps no row, naming the dataset, with every
rejected row (file, line, reason), and so does :func:`require_images` when not one image
of the rows kept decodes (``evaluate``, ``train``); the command line shows the first few
and ``--json`` all of them (:func:`agegender.cli.base.fail`)::

    error: /data/bad.csv: no usable rows: read 11, rejected 11 (11 bad rows)
      /data/bad.csv:2: image not found: /data/img/0.jpg
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from agegender.data.records import DatasetError, Problem, ReadResult

#: Why a row is not kept: key in ``row_counts["reasons"]`` -> (one row, several rows).
REASONS: dict[str, tuple[str, str]] = {
    "bad_rows": ("bad row", "bad rows"),  # the reader could not use the line / file name
    # the dataset's own label sources disagree on the face (All-Age-Faces: id rule vs lists)
    "label_disagreement": ("with disagreeing label sources", "with disagreeing label sources"),
    "limit": ("outside the sample", "outside the sample"),  # data.limit / --limit
    "unreadable": ("unreadable", "unreadable"),  # the image does not decode
    "conflicting": ("conflicting", "conflicting"),  # a duplicate group with differing labels
    "not_in_folds_file": ("not in the folds file", "not in the folds file"),
    "no_task_labels": ("without the task's labels", "without the task's labels"),
    "no_face": ("without a face", "without a face"),  # --align / the predictor's face path
    # a data.extra face that is a copy of a face of the main dataset's test split
    "held_out_copy": ("copy of a test face", "copies of test faces"),
}


@dataclass
class RowCounts:
    """Rows read from ``path`` and the rejected ones by reason; kept = read - rejected."""

    path: str
    read: int
    reasons: dict[str, int] = field(default_factory=dict)
    labels: str = ""  # the label file, when the reader found one inside ``path``
    notes: dict[str, int] = field(default_factory=dict)  # the reader's remarks -> rows read

    @classmethod
    def of(cls, result: ReadResult, path: str | Path) -> RowCounts:
        """The reader's rows plus its problems (each is one line or file it could not use)
        and the faces it left out because their label sources disagree."""
        read = len(result.table) + len(result.problems) + len(result.disagreements)
        counts = cls(str(path), read, labels=result.labels, notes=dict(result.notes))
        counts.reject("bad_rows", len(result.problems))
        counts.reject("label_disagreement", len(result.disagreements))
        return counts

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RowCounts:
        return cls(
            str(d.get("path", "")),
            int(d["read"]),
            dict(d.get("reasons") or {}),
            labels=str(d.get("labels", "")),
            notes={str(k): int(v) for k, v in (d.get("notes") or {}).items()},
        )

    def reject(self, reason: str, n: int) -> None:
        """Count ``n`` more rows rejected for ``reason`` (a key of :data:`REASONS`)."""
        if reason not in REASONS:
            raise ValueError(f"unknown reason {reason!r}")
        if n:
            self.reasons[reason] = self.reasons.get(reason, 0) + int(n)

    @property
    def rejected(self) -> int:
        return sum(self.reasons.values())

    @property
    def kept(self) -> int:
        return self.read - self.rejected

    def to_dict(self) -> dict[str, Any]:
        order = [k for k in REASONS if self.reasons.get(k)]
        return {
            "path": self.path,
            "read": self.read,
            "kept": self.kept,
            "rejected": self.rejected,
            "reasons": {k: self.reasons[k] for k in order},
            **({"labels": self.labels} if self._labels_elsewhere() else {}),
            **({"notes": dict(self.notes)} if self.notes else {}),
        }

    def _labels_elsewhere(self) -> bool:
        return bool(self.labels) and Path(self.labels) != Path(self.path)

    def why(self) -> str:
        """The rejected rows by reason: ``" (n1 reason1, n2 reason2)"``, or ``""``."""
        parts = [
            f"{n:,} {REASONS[k][0] if n == 1 else REASONS[k][1]}"
            for k, n in self.to_dict()["reasons"].items()
        ]
        return f" ({', '.join(parts)})" if parts else ""

    def line(self) -> str:
        """``read N rows from PATH: kept K, rejected R (n1 reason1, n2 reason2)``."""
        where = self.path
        if self._labels_elsewhere():
            where += f" (labels: {self.labels})"
        text = f"read {self.read:,} rows from {where}: kept {self.kept:,}, "
        text += f"rejected {self.rejected:,}{self.why()}"
        if self.notes:
            text += "; as read: " + ", ".join(f"{n:,} {k}" for k, n in self.notes.items())
        return text


class NoRowsError(DatasetError):
    """A dataset of which no row can be used: its one line names the dataset and the
    counts (``<path>: no usable rows: read N, rejected N (n1 reason1, ...)``); ``rejected``
    holds every rejected row as a :class:`~agegender.data.records.Problem` (file, line,
    reason), :meth:`to_dict` all of it for ``--json``."""

    def __init__(self, counts: RowCounts, rejected: list[Problem]) -> None:
        self.counts = counts
        self.rejected = list(rejected)
        super().__init__(
            f"{counts.path}: no usable rows: read {counts.read:,}, "
            f"rejected {counts.rejected:,}{counts.why()}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": str(self),
            "dataset": self.counts.path,
            "row_counts": self.counts.to_dict(),
            "rejected_rows": [p.to_dict() for p in self.rejected],
        }


def _row_problems(table: pd.DataFrame, which: np.ndarray, reasons: Any) -> list[Problem]:
    """A :class:`Problem` for each row of ``table`` where ``which`` holds: its image, the
    label file line it came from (0 if none), the reason (one, or one per row)."""
    lines = table["line"] if "line" in table.columns else pd.Series(0, index=table.index)
    lines = lines.fillna(0).astype(int).to_numpy()
    reasons = np.broadcast_to(np.asarray(reasons, dtype=object), (len(table),))
    return [
        Problem(str(path), int(line), str(reason))
        for path, line, reason in zip(
            table["path"].to_numpy()[which], lines[which], reasons[which], strict=True
        )
    ]


def require_rows(rows: DatasetRows) -> DatasetRows:
    """``rows``, or :class:`NoRowsError` when none was kept: the reader's bad rows and
    disagreements, then the rows the audit dropped (unreadable with the decoder's reason,
    conflicting duplicates)."""
    if len(rows.table):
        return rows
    rejected = [*rows.result.problems, *rows.result.disagreements]
    if rows.report is not None:
        read = rows.report.table
        readable = np.asarray(rows.report.readable, dtype=bool)
        errors = rows.report.files["error"].to_numpy(dtype=object)
        reasons = np.asarray([f"unreadable: {e}" if e else "unreadable" for e in errors])
        rejected += _row_problems(read, ~readable, reasons)
        conflict = np.asarray(rows.report.conflict, dtype=bool) & readable
        rejected += _row_problems(read, conflict, "conflicting labels in a duplicate group")
    raise NoRowsError(rows.counts, rejected)


def require_images(rows: DatasetRows, table: pd.DataFrame, errors: Any) -> None:
    """After the images of ``table`` (``rows.table`` or the part of it a command uses) were
    decoded: :class:`NoRowsError` when not one of them decoded. ``errors``: each row's
    failure, ``""`` for an image that decoded (one where no face was found decoded: that
    is a result, not a bad row). The caller has counted the failures in ``rows.counts``."""
    errs = np.asarray([str(e) if isinstance(e, str) else "" for e in errors], dtype=object)
    if len(errs) != len(table):
        raise ValueError(f"{len(errs)} errors for {len(table)} rows")
    if not len(errs) or (errs == "").any() or (errs == "no face found").any():
        return
    reasons = np.asarray([f"unreadable: {e}" for e in errs], dtype=object)
    rejected = [*rows.result.problems, *rows.result.disagreements]
    rejected += _row_problems(table, np.ones(len(table), dtype=bool), reasons)
    raise NoRowsError(rows.counts, rejected)


def reject_failed_images(counts: RowCounts, reasons: list[str]) -> None:
    """Count rows whose image failed (image cache, evaluation) by the failure's reason:
    ``no face found`` (the face path found no face) is ``no_face``, any other
    ``unreadable``."""
    no_face = sum(r == "no face found" for r in reasons)
    counts.reject("no_face", no_face)
    counts.reject("unreadable", len(reasons) - no_face)


@dataclass
class DatasetRows:
    """What :func:`read_rows` returns. ``table`` holds the kept rows (index 0..n-1);
    ``dup_group`` and ``conflict`` (None without the audit) are aligned with it."""

    result: ReadResult
    table: pd.DataFrame
    counts: RowCounts
    info: dict[str, Any]
    report: Any = None  # the AuditReport, over the rows read (or sampled)
    dup_group: np.ndarray | None = None
    conflict: np.ndarray | None = None
    sha1: np.ndarray | None = None  # each kept row's file digest (from the audit)


def read_rows(
    path: str | Path,
    format: str = "auto",
    *,
    audit: bool = True,
    drop_conflicts: bool = True,
    limit: int | None = None,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = False,
    console: Any = None,
) -> DatasetRows:
    """Read ``path``; keep a seeded sample of ``limit`` rows; with ``audit``, run the
    duplicate audit, drop unreadable images and (``drop_conflicts``) duplicate groups with
    conflicting labels. ``info`` is :func:`~agegender.data.readers.read_table`'s summary
    plus ``limit``, ``unreadable``, ``conflicts_dropped`` when they apply.
    Raises ``DatasetError`` (one line) when nothing can be read, :class:`NoRowsError`
    when no row is kept."""
    from agegender.data.readers import read_table, sample_rows

    result, table, info = read_table(path, format)
    counts = RowCounts.of(result, path)
    if limit is not None and limit < len(table):
        counts.reject("limit", len(table) - limit)
        info["limit"] = limit
        table = sample_rows(table, limit, seed)
    rows = DatasetRows(result, table, counts, info)
    if not audit or not len(table):
        return require_rows(rows)
    from agegender.data.audit import audit_dataset

    report = audit_dataset(
        ReadResult(table, result.problems, result.format, disagreements=result.disagreements),
        workers=workers,
        progress=progress,
        console=console,
    )
    readable = np.asarray(report.readable, dtype=bool)
    conflict = np.asarray(report.conflict, dtype=bool) & readable
    keep = readable & ~conflict if drop_conflicts else readable
    counts.reject("unreadable", int((~readable).sum()))
    info["unreadable"] = int((~readable).sum())
    if drop_conflicts:
        counts.reject("conflicting", int(conflict.sum()))
        info["conflicts_dropped"] = int(conflict.sum())
    rows.report = report
    rows.table = table[keep].reset_index(drop=True)
    rows.dup_group = np.asarray(report.group_id)[keep]
    rows.conflict = conflict[keep]
    rows.sha1 = report.files["sha1"].to_numpy(dtype=object)[keep]
    return require_rows(rows)


def link_rows(
    datasets: list[DatasetRows],
    tables: list[pd.DataFrame] | None = None,
    names: list[str] | None = None,
    *,
    workers: int | None = None,
    progress: bool = False,
    console: Any = None,
) -> Any:
    """The duplicates across several audited datasets
    (:func:`~agegender.data.audit.link_datasets`): each dataset's own groups, joined by
    byte-identical files and by faces that match once cut to one framing
    (:func:`~agegender.data.audit.framed_thumbnails`). ``tables``: the rows to link (a
    subset of each dataset's kept rows, default all of them; a ``group`` column, when
    present, replaces the audit's groups); ``names``: the datasets' names (default their
    folder names)."""
    from agegender.data.audit import framed_thumbnails, link_datasets

    tables = tables if tables is not None else [d.table for d in datasets]
    names = names or [Path(d.counts.path).name or d.counts.path for d in datasets]
    groups, digests, thumbs, found = [], [], [], []
    for d, t in zip(datasets, tables, strict=True):
        paths = t["path"].astype(str).tolist()
        if "group" in t.columns:
            groups.append(t["group"].to_numpy())
        elif d.dup_group is not None:
            groups.append(_by_path(d.table, d.dup_group, paths, -1))
        else:
            groups.append(None)
        digests.append(None if d.sha1 is None else _by_path(d.table, d.sha1, paths, ""))
        # the cut faces are cached for every row the reader gave (reused by later audits
        # and runs), or for these rows alone when they are a small sample of them
        read = d.result.table if 2 * len(t) > len(d.result.table) else t
        th, ok = framed_thumbnails(read, paths, workers=workers, progress=progress, console=console)
        thumbs.append(th)
        found.append(ok)
    from agegender.data.cache import default_cache_dir

    return link_datasets(
        tables,
        names,
        groups=groups,
        sha1=digests,
        thumbs=np.concatenate(thumbs),
        found=np.concatenate(found),
        cache_dir=default_cache_dir(),
    )


def _by_path(table: pd.DataFrame, values: np.ndarray, paths: list[str], missing: Any) -> np.ndarray:
    """``values`` (aligned with ``table``) for ``paths``."""
    lookup = dict(zip(table["path"].astype(str), values, strict=True))
    return np.asarray([lookup.get(p, missing) for p in paths], dtype=np.asarray(values).dtype)


def read_datasets(
    paths: list[str | Path],
    format: str = "auto",
    *,
    drop_conflicts: bool = True,
    workers: int | None = None,
    progress: bool = False,
    console: Any = None,
) -> tuple[list[DatasetRows], Any]:
    """:func:`read_rows` (audited) for each of several datasets, then the duplicates across
    them (:func:`link_rows`). Returns ``(rows per dataset, DatasetLinks)``; used by
    ``data audit`` and ``data folds`` with several paths."""
    rows = [
        read_rows(
            p,
            format,
            drop_conflicts=drop_conflicts,
            workers=workers,
            progress=progress,
            console=console,
        )
        for p in paths
    ]
    names = _unique_names([Path(p).name or str(p) for p in paths])
    return rows, link_rows(rows, names=names, workers=workers, progress=progress, console=console)


def _unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return out


def read_folds(
    path: str | Path | list[str | Path],
    format: str,
    k: int,
    *,
    seed: int = 0,
    conflicts: str = "drop",
    official: bool = True,
    limit: int | None = None,
    workers: int | None = None,
    progress: bool = False,
) -> tuple[DatasetRows | list[DatasetRows], Any]:
    """:func:`read_rows` (audited) then grouped, stratified ``k`` folds
    (:func:`~agegender.data.folds.make_folds`); conflicting duplicate groups are dropped
    there (``conflicts="drop"``), after they have joined split groups, and counted as
    rejected rows. Returns ``(rows, folds)``; used by ``data folds`` and ``cv``.

    With a list of paths the datasets are folded together: their rows in one table, the
    duplicate groups those across datasets (:func:`read_datasets`), so no copy of a face
    in two datasets spans two folds; ``rows`` is then the list of each dataset's rows."""
    from agegender.data.folds import make_folds

    if isinstance(path, list):
        if limit is not None:
            raise ValueError("limit: not with several datasets")
        many, links = read_datasets(
            path, format, drop_conflicts=False, workers=workers, progress=progress
        )
        table = pd.concat([r.table for r in many], ignore_index=True)
        conflict = np.concatenate([r.conflict for r in many])
        folds = make_folds(
            table,
            k,
            seed=seed,
            dup_group=links.group_id,
            conflict=conflict,
            conflicts=conflicts,
            use_official=official,
        )
        if conflicts == "drop":
            for k_, r in enumerate(many):
                r.counts.reject("conflicting", int(conflict[links.dataset == k_].sum()))
        return many, folds
    rows = read_rows(
        path,
        format,
        drop_conflicts=False,
        limit=limit,
        seed=seed,
        workers=workers,
        progress=progress,
    )
    folds = make_folds(
        rows.table,
        k,
        seed=seed,
        dup_group=rows.dup_group,
        conflict=rows.conflict,
        conflicts=conflicts,
        use_official=official,
    )
    rows.counts.reject("conflicting", folds.dropped_conflicts)
    return rows, folds


__all__ = [
    "REASONS",
    "DatasetRows",
    "NoRowsError",
    "RowCounts",
    "link_rows",
    "read_datasets",
    "read_folds",
    "read_rows",
    "reject_failed_images",
    "require_images",
    "require_rows",
]
