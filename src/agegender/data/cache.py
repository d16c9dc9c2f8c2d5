"""Decode-once image cache: every image resized to ``size`` x ``size`` in one uint8 ``.npy``.

Decoding JPEGs dominates CPU training, so :func:`build_cache` decodes each image of a
FaceTable once (:func:`~agegender.data.imageio.load_resized`, in parallel processes that
write straight into a ``np.lib.format.open_memmap`` file) and later runs map the file
read-only. One cache is a folder ``<cache_dir>/faces<size>-<key>/`` holding

- ``images.npy``: uint8 ``(N, size, size, 3)``, row ``i`` = table row ``i`` (RGB, HWC);
- ``index.json``: version, size, key, the paths, file sizes and mtimes, an ``ok`` flag per
  row, the problems (failed images are zero-filled and flagged) and build speed.

The key hashes every ``(path, file size, mtime_ns)`` in table order, the image size and
:data:`CACHE_VERSION`, so changing, adding or touching a file gives a new cache and an
unchanged table reuses the old one without decoding anything. The table order is part of
the key because rows are stored in that order. A build writes into a temporary folder and
renames it into place, so an interrupted build never leaves a cache that looks complete.

A cache built on a whole dataset serves any subset or fold through
:meth:`ImageCache.rows_for`. The default ``cache_dir`` is ``$AGEGENDER_CACHE`` or
``~/.cache/agegender``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console

from agegender.data.imageio import Crop, ImageError, load_resized
from agegender.data.parallel import parallel_map
from agegender.data.records import Problem

CACHE_VERSION = 1
IMAGES_FILE = "images.npy"
INDEX_FILE = "index.json"


def default_cache_dir() -> Path:
    """``$AGEGENDER_CACHE`` or ``~/.cache/agegender``."""
    env = os.environ.get("AGEGENDER_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "agegender"


def file_stats(paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(file sizes, mtime_ns)`` per path; ``-1`` for a file that cannot be stat'ed."""
    sizes = np.full(len(paths), -1, np.int64)
    mtimes = np.full(len(paths), -1, np.int64)
    for k, p in enumerate(paths):
        try:
            st = os.stat(p)
        except OSError:
            continue
        sizes[k], mtimes[k] = st.st_size, st.st_mtime_ns
    return sizes, mtimes


def cache_key(
    paths: list[str],
    sizes: np.ndarray,
    mtimes: np.ndarray,
    size: int,
    crop: Crop | None = None,
    align: str | None = None,
    template: Sequence[Sequence[float]] | None = None,
) -> str:
    """20 hex digits of SHA-256 over the files (in order), their sizes and mtimes, ``size``,
    the ``crop`` box, the ``align`` detector and its ``template`` (caches made before those
    existed keep their key)."""
    head = f"agegender-cache v{CACHE_VERSION} size={size} n={len(paths)}\n"
    if crop is not None:
        head += f"crop={','.join(f'{c:.4f}' for c in crop)}\n"
    if align is not None:
        from agegender.infer.align import as_template

        head += f"align={align} template={as_template(template)}\n"
    h = hashlib.sha256(head.encode())
    for p, s, m in zip(paths, sizes.tolist(), mtimes.tolist(), strict=True):
        h.update(f"{p}\t{s}\t{m}\n".encode())
    return h.hexdigest()[:20]


def cache_name(size: int, key: str) -> str:
    return f"faces{size}-{key}"


@dataclass
class ImageCache:
    """A built cache: ``images[i]`` is the ``(size, size, 3)`` uint8 image of ``paths[i]``."""

    folder: Path
    images: np.ndarray  # np.memmap, read-only
    ok: np.ndarray  # bool per row; False rows are zeros
    paths: list[str]
    size: int
    key: str
    problems: list[Problem] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    reused: bool = False
    _row_of: dict[str, int] | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def failed(self) -> int:
        return int((~self.ok).sum())

    def rows_for(self, paths: list[str] | pd.Series | np.ndarray) -> np.ndarray:
        """Cache rows holding ``paths`` (e.g. a fold's table paths), as an int64 array.

        Raises KeyError naming the first path the cache does not hold.
        """
        lookup = self._lookup()
        out = np.empty(len(paths), np.int64)
        for k, p in enumerate(map(str, paths)):
            row = lookup.get(p)
            if row is None:
                missing = sum(str(q) not in lookup for q in paths)
                raise KeyError(
                    f"{p}: not in the image cache {self.folder} ({missing} paths missing)"
                )
            out[k] = row
        return out

    def _lookup(self) -> dict[str, int]:
        if self._row_of is None:
            self._row_of = {}
            for row, p in enumerate(self.paths):
                self._row_of.setdefault(p, row)
        return self._row_of

    @classmethod
    def load(cls, folder: str | Path, key: str | None = None) -> ImageCache:
        """Open a cache folder, or (with ``key``) the cache with that key inside ``folder``."""
        folder = Path(folder)
        if key is not None:
            matches = sorted(folder.glob(f"faces*-{key}"))
            if not matches:
                raise FileNotFoundError(f"{folder}: no image cache with key {key}")
            folder = matches[0]
        index_path = folder / INDEX_FILE
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise FileNotFoundError(f"{index_path}: not a readable cache index ({exc})") from exc
        if index.get("version") != CACHE_VERSION:
            raise FileNotFoundError(
                f"{index_path}: cache version {index.get('version')} != {CACHE_VERSION}"
            )
        images = np.load(folder / IMAGES_FILE, mmap_mode="r")
        n, size = len(index["paths"]), int(index["size"])
        if images.shape != (n, size, size, 3) or images.dtype != np.uint8:
            raise FileNotFoundError(
                f"{folder / IMAGES_FILE}: shape {images.shape} does not match the index"
            )
        return cls(
            folder=folder,
            images=images,
            ok=np.asarray(index["ok"], dtype=bool),
            paths=list(index["paths"]),
            size=size,
            key=index["key"],
            problems=[Problem(**p) for p in index["problems"]],
            meta={k: v for k, v in index.items() if k not in ("paths", "ok", "problems")},
        )


# ------------------------------------------------------------------ workers
_WRITERS: dict[str, np.ndarray] = {}


def _writer(npy: str) -> np.ndarray:
    """The open read-write memmap of ``npy`` in this process (opened once per process)."""
    mm = _WRITERS.get(npy)
    if mm is None:
        mm = _WRITERS[npy] = np.load(npy, mmap_mode="r+")
    return mm


def load_aligned(
    path: str, size: int, detector: str, template: Sequence[Sequence[float]] | None = None
) -> np.ndarray:
    """The largest face of a photo through the predictor's face path (detect, padded
    retry, align on landmarks to ``template`` (default UTKFace's) or crop) at ``size`` px;
    ``ImageError`` when none is found."""
    from agegender.data.imageio import load_rgb
    from agegender.infer.align import as_template
    from agegender.infer.detector import shared_detector
    from agegender.infer.faces import find_faces, largest_face

    det = shared_detector(detector)
    faces = find_faces(
        load_rgb(path),
        det,
        size,
        margin=det.margin,
        shift=det.shift,
        template=as_template(template),
    )
    if not faces:
        raise ImageError("no face found")
    return largest_face(faces).crop


def _decode_into(
    item: tuple[int, str],
    npy: str,
    size: int,
    crop: Crop | None = None,
    align: str | None = None,
    template: Sequence[Sequence[float]] | None = None,
) -> str | None:
    """Decode ``item = (row, path)`` into row ``row`` of ``npy``; the error or None."""
    row, path = item
    try:
        if align is not None:
            _writer(npy)[row] = load_aligned(path, size, align, template)
        else:
            _writer(npy)[row] = load_resized(path, size, crop=crop)
    except ImageError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - one bad image never stops the build
        return f"cannot decode image: {exc}"
    return None


# ------------------------------------------------------------------ build / find
def _remove_stale_tmp(root: Path) -> None:
    """Delete temporary folders left by builds whose process is gone."""
    for tmp in root.glob(".tmp-*"):
        try:
            pid = int(tmp.name.split("-")[1])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, IndexError, PermissionError, OSError):
            continue


def find_cache(
    table: pd.DataFrame, size: int, *, cache_dir: str | Path | None = None
) -> ImageCache | None:
    """The existing cache for exactly these files at this size, or None."""
    paths = table["path"].astype(str).tolist()
    sizes, mtimes = file_stats(paths)
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    folder = root / cache_name(size, cache_key(paths, sizes, mtimes, size))
    return _try_load(folder)


def _try_load(folder: Path) -> ImageCache | None:
    if not (folder / INDEX_FILE).is_file():
        return None
    try:
        cache = ImageCache.load(folder)
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None
    cache.reused = True
    return cache


def build_cache(
    table: pd.DataFrame,
    size: int,
    *,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    progress: bool = True,
    console: Console | None = None,
    crop: Crop | None = None,
    align: str | None = None,
    template: Sequence[Sequence[float]] | None = None,
) -> ImageCache:
    """Decode every image of ``table`` once into a ``(N, size, size, 3)`` uint8 cache
    (``crop``: the face box of every image, as fractions; see ``load_resized``; ``align``:
    a detector name: photos go through the predictor's face path and keep their largest
    face, aligned to ``template`` (default UTKFace's), and a photo without one is a problem
    ``no face found``, never silently dropped).

    Returns the existing cache when the files (paths, sizes, mtimes) and ``size`` match,
    without decoding anything. Images that fail are zero-filled, flagged in ``ok`` and
    listed in ``problems``; they never stop the build.
    """
    if size < 1:
        raise ValueError(f"cache image size must be positive, got {size}")
    if len(table) == 0:
        raise ValueError("cannot cache an empty table")
    paths = table["path"].astype(str).tolist()
    sizes, mtimes = file_stats(paths)
    key = cache_key(paths, sizes, mtimes, size, crop, align, template)
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    folder = root / cache_name(size, key)
    found = _try_load(folder)
    if found is not None:
        return found

    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(root)
    tmp = root / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-{cache_name(size, key)}"
    tmp.mkdir()
    npy = str(tmp / IMAGES_FILE)
    start = time.perf_counter()
    try:
        mm = np.lib.format.open_memmap(
            npy, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, 3)
        )
        del mm  # zero-filled; workers open it read-write themselves
        errors = parallel_map(
            partial(_decode_into, npy=npy, size=size, crop=crop, align=align, template=template),
            list(enumerate(paths)),
            workers=workers,
            progress=progress,
            description=f"caching images at {size}px",
            console=console,
        )
        writer = _WRITERS.pop(npy, None)  # opened here when the work ran in this process
        if writer is not None:
            writer.flush()
            del writer
        seconds = time.perf_counter() - start
        lines = table["line"] if "line" in table else pd.Series([pd.NA] * len(table))
        problems = [
            Problem(p, 0 if pd.isna(ln) else int(ln), err)
            for p, ln, err in zip(paths, lines, errors, strict=True)
            if err is not None
        ]
        index = {
            "version": CACHE_VERSION,
            "size": size,
            "crop": None if crop is None else list(crop),
            "align": align,
            "template": None if template is None else [list(map(float, p)) for p in template],
            "key": key,
            "count": len(paths),
            "failed": len(problems),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "build_seconds": round(seconds, 3),
            "images_per_second": round(len(paths) / max(seconds, 1e-9), 1),
            "paths": paths,
            "file_sizes": sizes.tolist(),
            "mtimes_ns": mtimes.tolist(),
            "ok": [e is None for e in errors],
            "problems": [p.to_dict() for p in problems],
        }
        (tmp / INDEX_FILE).write_text(json.dumps(index), encoding="utf-8")
        try:
            os.rename(tmp, folder)
        except OSError:  # another process finished the same cache first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        _WRITERS.pop(npy, None)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ImageCache.load(folder)
