"""Parquet output of ``predict``: parts written as the job goes, and what ``--resume`` reads.

Two layouts, both read by any Parquet reader (pandas, pyarrow, Ray, Spark, DuckDB):

- ``--out results.parquet``: **one file**. While the job runs, every ``part_size`` inputs
  (or ``part_seconds``, whichever comes first) go to a part in ``results.parquet.parts/``,
  each written to a temporary name and renamed, so a part is whole or absent. When the job
  ends, the earlier file (if any) and the parts are merged into ``results.parquet`` (written
  beside it, then renamed) and the parts folder is removed. A killed job leaves its parts;
  ``--resume`` reads them (and the earlier file) and predicts only the rest.
- ``--out results.parquet/`` (a trailing slash, or an existing folder of ours): **a folder
  of parts**, never merged: the layout for a job too large to rewrite as one file.

Columns: those of the CSV (:func:`agegender.infer.outputs.result_columns`), then the
resume key ``file_size`` and ``file_mtime_ns`` (the input as it was when it was read), then
``run_id`` (which run wrote the row). Every file's schema metadata holds, under
``agegender``, the writer's format, the run, the model (name, file, SHA-1) and the face
path settings (detector, margin, shift, alignment); a merged file also lists the parts it
took in (``merged_parts``), so parts left behind by a kill between the rename and their
removal are removed, never read twice.

**Resume key: path + size + modification time**, not a content hash. Deciding what is done
must cost far less than predicting: a ``stat`` reads no pixel data (a hash would read every
byte of every input again, most of a photo's I/O, on the shared storage a large job reads
from), and it is what ``make`` and ``rsync`` trust. An input whose size or mtime changed
since it was predicted is predicted again and its old rows are removed first. The cost: a
file rewritten in place with the same size and mtime is not noticed, and a moved or renamed
file is predicted again under its new path.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from agegender.fileio import atomic_path

FORMAT = "agegender-predict/1"
META_KEY = b"agegender"
KEY_COLUMNS = ("file_size", "file_mtime_ns")
RUN_COLUMN = "run_id"
DEFAULT_PART_SIZE = 5000  # inputs per part: a kill loses at most this many
DEFAULT_PART_SECONDS = 60.0  # ... or this much work, whichever comes first
_PART = re.compile(r"^part-[0-9TZ]+-[0-9a-f]+-\d{5,}\.parquet$")
# the photo columns, then a video's (frame, track and video rows: agegender.infer.video)
_INT_COLUMNS = frozenset(
    {"face_index", "x", "y", "w", "h"}
    | {"frame", "track_id", "first_frame", "last_frame", "frames_seen"}
)
_STR_COLUMNS = frozenset(
    {"path", "gender", "age_group", "face_source", "error", RUN_COLUMN} | {"kind"}
)


class OutputError(ValueError):
    """An output that cannot be written or resumed; ``str()`` is one line naming it."""


def new_run_id() -> str:
    """A run id that sorts by start time: ``20260102T030405123456Z-1a2b3c``."""
    t = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(t)) + f"{int(t % 1 * 1e6):06d}Z"
    return f"{stamp}-{uuid.uuid4().hex[:6]}"


def input_key(path: str | os.PathLike) -> tuple[int | None, int | None]:
    """``(size, mtime_ns)`` of an input file, ``(None, None)`` when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None, None
    return int(st.st_size), int(st.st_mtime_ns)


def parquet_columns(columns: Sequence[str]) -> list[str]:
    """The Parquet columns for a model's CSV columns: the resume key and ``run_id`` added."""
    return [*columns, *KEY_COLUMNS, RUN_COLUMN]


def arrow_schema(columns: Sequence[str]) -> Any:
    """The fixed Arrow schema of the Parquet output (every part has exactly this one)."""
    import pyarrow as pa

    def kind(name: str) -> Any:
        if name in _INT_COLUMNS:
            return pa.int32()
        if name in KEY_COLUMNS:
            return pa.int64()
        if name in _STR_COLUMNS:
            return pa.string()
        return pa.float64()

    return pa.schema([pa.field(c, kind(c)) for c in parquet_columns(columns)])


def read_meta(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``agegender`` metadata of a Parquet file we wrote, else None (not Parquet, or
    somebody else's)."""
    import pyarrow.parquet as pq

    try:
        raw = (pq.read_schema(path).metadata or {}).get(META_KEY)
        meta = json.loads(raw) if raw else None
    except Exception:  # noqa: BLE001 - not a Parquet file at all: not ours
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == FORMAT else None


def describe_model(meta: Mapping[str, Any]) -> str:
    sha = meta.get("model_sha1")
    where = meta.get("model_source") or meta.get("model_file") or "?"
    return f"'{meta.get('model')}' ({where}" + (f", sha1 {sha[:12]})" if sha else ")")


#: The settings besides the model that change a row (``--resume`` compares them).
FACE_PATH_KEYS = ("detector", "detect_size", "margin", "shift", "align", "tta")


def _face_path(meta: Mapping[str, Any]) -> tuple[Any, ...]:
    # tta: files written before it was an option were all "none"
    return tuple(meta.get(k) or "none" if k == "tta" else meta.get(k) for k in FACE_PATH_KEYS)


def _same_model(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    if a.get("model_sha1") or b.get("model_sha1"):
        return a.get("model_sha1") == b.get("model_sha1")
    return (a.get("model"), a.get("arch")) == (b.get("model"), b.get("arch"))


class ParquetOutput:
    """The Parquet output at ``out`` (see the module docstring for the layout).

    ``columns``: the model's CSV columns; ``identity``: model and face path settings, kept
    in every file's metadata and compared on resume; ``run_id``: this run's id."""

    def __init__(
        self,
        out: str | os.PathLike,
        columns: Sequence[str],
        identity: Mapping[str, Any],
        run_id: str,
        *,
        part_size: int = DEFAULT_PART_SIZE,
        part_seconds: float = DEFAULT_PART_SECONDS,
    ) -> None:
        text = os.fspath(out)
        self.out = Path(text)
        self.folder_mode = text.endswith(("/", os.sep)) or self.out.is_dir()
        parts = self.out.with_name(self.out.name + ".parts")
        self.parts_dir = self.out if self.folder_mode else parts
        self.columns = list(columns)
        self.schema = arrow_schema(self.columns)
        self.identity = dict(identity)
        self.run_id = run_id
        self.part_size = max(1, int(part_size))
        self.part_seconds = float(part_seconds)
        self._rows: list[dict[str, Any]] = []
        self._inputs = 0  # inputs in _rows
        self._seq = 0
        self._last_flush = time.monotonic()
        self.parts_written: list[Path] = []
        self.rows_written = 0

    # ------------------------------------------------------------------ what is there
    def _merged_meta(self) -> tuple[dict[str, Any] | None, set[str]]:
        """The merged file's metadata (None: there is none) and the parts it took in."""
        if self.folder_mode or not self.out.is_file():
            return None, set()
        meta = read_meta(self.out)
        return meta, set(meta.get("merged_parts", [])) if meta else set()

    def _part_files(self) -> list[Path]:
        if not self.parts_dir.is_dir():
            return []
        return sorted(p for p in self.parts_dir.iterdir() if _PART.match(p.name))

    def check_ours(self) -> None:
        """Raise :class:`OutputError` when something at ``out`` was not written by
        ``agegender predict`` (nothing is touched then)."""
        advice = "nothing was overwritten; remove it or choose another --out"
        if (
            not self.folder_mode
            and self.out.is_file()
            and self.out.stat().st_size > 0
            and read_meta(self.out) is None
        ):
            raise OutputError(
                f"{self.out}: exists and is not a Parquet output of agegender predict; " + advice
            )
        if not self.parts_dir.exists():
            return
        if not self.parts_dir.is_dir():
            raise OutputError(f"{self.parts_dir}: exists and is not a folder; {advice}")
        for p in sorted(self.parts_dir.iterdir()):
            if p.name.startswith(".part-") and p.name.endswith(".tmp"):
                continue  # a part a killed run was writing: removed when we write
            if not (_PART.match(p.name) and p.is_file() and read_meta(p) is not None):
                raise OutputError(
                    f"{self.parts_dir}: holds {p.name}, which agegender predict did not "
                    f"write; {advice}"
                )

    def _leftovers(self) -> list[Path]:
        """Parts the merged file already holds (a kill came between its rename and their
        removal): never read, removed by :meth:`finish` and :meth:`clear`."""
        _merged, taken = self._merged_meta()
        return [p for p in self._part_files() if p.name in taken]

    def existing(self) -> list[tuple[Path, dict[str, Any]]]:
        """Our files with rows from earlier runs and their metadata, oldest first: the
        merged file, then the parts it does not already hold."""
        files: list[tuple[Path, dict[str, Any]]] = []
        merged, taken = self._merged_meta()
        if merged is not None:
            files.append((self.out, merged))
        for p in self._part_files():
            meta = None if p.name in taken else read_meta(p)
            if meta is not None:
                files.append((p, meta))
        return files

    def check_resumable(self) -> None:
        """Raise :class:`OutputError` when an earlier run wrote ``out`` with another model
        or other face path settings (its rows and this run's would not be comparable)."""
        for _path, meta in self.existing():
            if not _same_model(meta, self.identity):
                raise OutputError(
                    f"{self.out}: written by model {describe_model(meta)}; this run's model "
                    f"is {describe_model(self.identity)}; --resume only continues a run of "
                    "the same model (choose another --out, or drop --resume to replace it)"
                )
            if _face_path(meta) != _face_path(self.identity):
                old = dict(zip(FACE_PATH_KEYS, _face_path(meta), strict=True))
                new = dict(zip(FACE_PATH_KEYS, _face_path(self.identity), strict=True))
                raise OutputError(
                    f"{self.out}: written with face path {old}; this run uses {new}; --resume "
                    "only continues a run with the same settings"
                )

    def _done_frame(self) -> Any:
        """``path, file_size, file_mtime_ns, _file`` of every row already written."""
        import pandas as pd
        import pyarrow as pa
        import pyarrow.parquet as pq

        frames = []
        for i, (path, _meta) in enumerate(self.existing()):
            t = pq.read_table(path, columns=["path", *KEY_COLUMNS])
            f = t.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
            f["_file"] = i
            frames.append(f)
        if not frames:
            return None
        return pd.concat(frames, ignore_index=True)

    def pending(self, paths: Sequence[str]) -> tuple[list[str], int, int]:
        """``(to_predict, skipped, changed)``: the inputs without rows yet, in order;
        how many are already there with the same size and mtime (skipped); how many are
        there but changed since (their old rows are removed here, then they are predicted
        again)."""
        import pandas as pd

        done = self._done_frame()
        if done is None or done.empty:
            return list(paths), 0, 0
        last = done.drop_duplicates("path", keep="last").set_index("path")
        inputs = pd.Series(list(paths), dtype=object)
        known = pd.Index(inputs[inputs.isin(last.index)].unique())
        keys = [input_key(p) for p in known]  # Int64 from the ints: a float would round
        now = pd.DataFrame(
            {c: pd.array([k[i] for k in keys], dtype="Int64") for i, c in enumerate(KEY_COLUMNS)},
            index=known,
        )
        then = last.loc[known, list(KEY_COLUMNS)]
        same = (now.fillna(-1) == then.fillna(-1)).all(axis=1)
        changed = set(same.index[~same])
        if changed:
            self._remove_paths(changed, done)
        skip = inputs.isin(same.index[same])
        return inputs[~skip].tolist(), int(skip.sum()), len(changed)

    def _remove_paths(self, paths: set[str], done: Any) -> None:
        """Rewrite each file holding rows of ``paths`` without them (atomic per file)."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        files = self.existing()
        hit = set(done.loc[done["path"].isin(paths), "_file"].tolist())
        for i in sorted(hit):
            path, _meta = files[i]
            table = pq.read_table(path)
            mask = pc.invert(pc.is_in(table["path"], value_set=_string_array(paths)))
            self._write_atomic(path, table.filter(mask), table.schema.metadata)

    def clear(self) -> None:
        """Remove our earlier output (no ``--resume``: this run replaces it)."""
        if not self.folder_mode and self.out.is_file():
            self.out.unlink()
        for p in self._part_files():
            p.unlink()
        if not self.folder_mode:
            self._remove_parts_dir()

    # ------------------------------------------------------------------------ writing
    def _meta(self, **extra: Any) -> dict[bytes, bytes]:
        meta = {"format": FORMAT, "run_id": self.run_id, **self.identity, **extra}
        return {META_KEY: json.dumps(meta, sort_keys=True).encode()}

    def _write_atomic(self, path: Path, table: Any, metadata: Mapping[bytes, bytes]) -> None:
        import pyarrow.parquet as pq

        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            pq.write_table(table.replace_schema_metadata(dict(metadata)), fh)
            fh.flush()
            os.fsync(fh.fileno())

    def add(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """One input's rows (never split between parts); writes a part when one is due."""
        for row in rows:
            self._rows.append({**row, RUN_COLUMN: self.run_id})
        self._inputs += 1
        due = time.monotonic() - self._last_flush >= self.part_seconds
        if self._inputs >= self.part_size or due:
            self.flush()

    def flush(self) -> None:
        """Write the rows held so far as one part (nothing when there are none)."""
        import pyarrow as pa

        self._last_flush = time.monotonic()
        if not self._rows:
            return
        names = self.schema.names
        rows = [{k: r.get(k) for k in names} for r in self._rows]
        table = pa.Table.from_pylist(rows, self.schema)
        path = self.parts_dir / f"part-{self.run_id}-{self._seq:05d}.parquet"
        self._write_atomic(path, table, self._meta())
        self._seq += 1
        self.parts_written.append(path)
        self.rows_written += len(self._rows)
        self._rows, self._inputs = [], 0

    def finish(self) -> None:
        """Flush, then (one-file layout) merge the earlier file and every part into
        ``out`` and remove the parts."""
        import pyarrow.parquet as pq

        self.flush()
        if self.folder_mode:
            return
        for p in self._leftovers():
            p.unlink(missing_ok=True)
        files = self.existing()
        parts = [p for p, _ in files if p != self.out]
        if not parts and self.out.is_file():
            self._remove_parts_dir()
            return  # nothing new: the file is already whole
        runs = sorted({m.get("run_id") for _, m in files} | {self.run_id})
        meta = self._meta(runs=runs, merged_parts=[p.name for p in parts])
        with (
            atomic_path(self.out) as tmp,
            pq.ParquetWriter(tmp, self.schema.with_metadata(meta)) as writer,
        ):
            for path, _ in files:
                pf = pq.ParquetFile(path)
                for g in range(pf.num_row_groups):
                    writer.write_table(pf.read_row_group(g).cast(self.schema))
        for p in parts:
            p.unlink(missing_ok=True)
        self._remove_parts_dir()

    def _remove_parts_dir(self) -> None:
        if not self.parts_dir.is_dir():
            return
        with contextlib.suppress(OSError):  # not empty: somebody else's file (never ours)
            for p in self.parts_dir.glob(".part-*.tmp"):  # a part a killed run was writing
                p.unlink()
            self.parts_dir.rmdir()


def _string_array(values: Iterable[str]) -> Any:
    import pyarrow as pa

    return pa.array(sorted(values), type=pa.string())


def read_output(out: str | os.PathLike) -> Any:
    """Every row of a Parquet output as one Arrow table: the file, or the folder's parts
    (and, for a one-file output a killed job left unfinished, its parts as well)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    text = os.fspath(out)
    p = Path(text)
    po = ParquetOutput(text, [], {}, "")
    files = [f for f, _ in po.existing()]
    if not files:
        raise FileNotFoundError(f"no Parquet output of agegender predict at {p}")
    return pa.concat_tables([pq.read_table(f).replace_schema_metadata(None) for f in files])


__all__ = [
    "DEFAULT_PART_SECONDS",
    "DEFAULT_PART_SIZE",
    "KEY_COLUMNS",
    "RUN_COLUMN",
    "OutputError",
    "ParquetOutput",
    "arrow_schema",
    "describe_model",
    "input_key",
    "new_run_id",
    "parquet_columns",
    "read_meta",
    "read_output",
]
