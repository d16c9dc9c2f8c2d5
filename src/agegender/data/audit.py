"""Dataset audit: unreadable images, exact and near duplicates, label conflicts.

:func:`audit_dataset` reads every image of a :class:`~agegender.data.records.ReadResult`
once, in parallel processes: the file's bytes give a SHA-1 (exact duplicates), the decoded
image (:func:`~agegender.data.imageio.open_image`, which rejects corrupt, truncated,
not-an-image and decompression-bomb files with a one-line reason) gives its stored width,
height and mode and a 32x32 grayscale thumbnail. From the thumbnails it computes a 64-bit
perceptual hash (pHash, bit-for-bit the same as ``imagehash.phash``, computed for all
images in one vectorised DCT) and finds near duplicates.

Near duplicates (same photo re-encoded, blurred, recoloured, slightly re-cropped) are found
in two steps, because UTKFace-style *aligned* faces make a loose pHash threshold group
different people who merely look alike:

1. candidates: every pair whose pHash Hamming distance is at most ``near_threshold``
   (default 12 of 64 bits; all 23.7k x 23.7k UTKFace pairs are compared with numpy XOR +
   ``bitwise_count`` in chunks, in about a second);
2. confirmation: the cosine similarity of the two thumbnails' pixel *gradients*
   (``grad_corr``) must be at least ``min_grad_corr`` (0.80), or at least 0.75 when the
   plain pixel correlation (``pixel_corr``) is also at least 0.95. Gradients follow the
   photo's own edges (hair, background, clothing, wrinkles), which a re-encode, blur or
   colour change keeps but a different person's photo does not; plain pixel correlation
   of aligned faces stays above 0.93 for many look-alike strangers.

The thresholds were calibrated by viewing UTKFace pairs side by side at every distance:
see ``benchmarks/`` notes in the project report. Groups are the connected components over
exact and near-duplicate edges, so a chain of copies forms one group.

``AuditReport.to_dict()`` keys (all JSON-able):

- ``format``: the dataset layout the reader used.
- ``images``: image files found = table rows + image files that exist but that the reader
  could not label (e.g. an unparseable UTKFace name). Rows pointing at missing files and
  label-file lines are not images found; they are ``label_errors``.
- ``rows``: table rows; ``readable`` / ``unreadable``: rows whose image decodes or not.
- ``labelled_gender``, ``labelled_age`` (exact age or age group known): table rows.
- ``exact_duplicate_groups`` / ``exact_duplicate_files``: sets of >= 2 byte-identical rows.
- ``near_duplicate_groups`` / ``near_duplicate_files``: duplicate groups whose members are
  *not* all byte-identical (at least one re-encoded / blurred copy), and their rows;
  ``near_duplicate_pairs``: confirmed near-duplicate pairs of distinct file contents.
- ``duplicate_groups`` / ``duplicate_files``: every group of >= 2 rows (exact or near).
- ``label_conflict_groups``: duplicate groups whose known gender or known age-group labels
  disagree (``gender_conflict_groups``, ``age_group_conflict_groups`` split it up;
  ``conflict_files`` counts their rows); ``age_disagreement_groups``: groups whose exact
  ages differ (even inside one age group).
- ``label_errors``: number of reader problems (unparseable names or rows, missing images).
- ``label_source_disagreements``: faces the reader left out because the dataset's own
  label sources disagree on them (All-Age-Faces: its id rule vs its lists);
  ``label_source_examples``: the first 10 as ``{path, line, reason}``.
- ``problems``: list of ``{path, line, reason}``: reader problems, faces whose label
  sources disagree, then unreadable images with the decoder's reason.
- ``gender_balance`` ``{male, female, unknown}``; ``age_groups`` (rows per Adience group
  name, plus ``unknown``); ``age_histogram`` (exact ages per decade ``"20-29"``, plus
  ``unknown``); ``image_sizes`` (the 10 most common stored ``WxH``); ``image_modes``.
- ``conflict_examples``: up to 10 conflict groups as lists of ``{path, gender, age}``.
- ``settings``: ``near_threshold``, ``min_grad_corr``, ``workers``; ``seconds``: wall time.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from rich.console import Console
from rich.table import Table
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from agegender.data.imageio import DEFAULT_MAX_PIXELS, ImageError, is_image_name, open_image
from agegender.data.parallel import default_workers, parallel_map
from agegender.data.records import AGE_GROUP_NAMES, Problem, ReadResult

THUMB = 32  #: thumbnail side for hashing and confirmation (= imagehash.phash's DCT input)
DEFAULT_NEAR_THRESHOLD = 12  #: max pHash Hamming distance (of 64 bits) for a candidate pair
DEFAULT_MIN_GRAD_CORR = 0.80  #: gradient cosine similarity that confirms a near duplicate
RELAXED_GRAD_CORR = 0.75  #: ... or this much when pixel correlation >= STRONG_PIXEL_CORR
STRONG_PIXEL_CORR = 0.95


# ------------------------------------------------------------------ per-file work (workers)
@dataclass(frozen=True)
class FileFacts:
    """What one pass over a file learns. ``error`` is set when the image cannot be used."""

    sha1: str = ""
    width: int = 0
    height: int = 0
    mode: str = ""
    error: str | None = None
    thumb: bytes | None = None  # THUMB x THUMB uint8 grayscale


def gray_thumbnail(img: Image.Image) -> Image.Image:
    """The THUMB x THUMB grayscale thumbnail the hashes and confirmations are made of."""
    return img.convert("L").resize((THUMB, THUMB), Image.Resampling.LANCZOS)


def inspect_file(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> FileFacts:
    """Read a file once: SHA-1 of its bytes, stored size and mode, a grayscale thumbnail.

    Never raises: a missing, corrupt or oversized file comes back with ``error`` set.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return FileFacts(error="file not found")
    except OSError as exc:
        return FileFacts(error=f"cannot read file: {exc.strerror or exc}")
    sha1 = hashlib.sha1(data).hexdigest()
    width = height = 0
    mode = ""
    try:
        with Image.open(io.BytesIO(data)) as probe:  # header only: stored size and mode
            (width, height), mode = probe.size, probe.mode
    except Exception:  # noqa: BLE001 - open_image below gives the one-line reason
        pass
    try:
        # the JPEG decoder may scale by 1/2, 1/4 while decoding: the thumbnail is 32 px
        img = open_image(data, max_pixels=max_pixels, draft_size=2 * THUMB)
        gray = gray_thumbnail(img)
    except ImageError as exc:
        return FileFacts(sha1, width, height, mode, str(exc))
    except Exception as exc:  # noqa: BLE001 - one bad file never stops the audit
        return FileFacts(sha1, width, height, mode, f"cannot decode image: {exc}")
    return FileFacts(sha1, width, height, mode, None, gray.tobytes())


# ------------------------------------------------------------------ hashing and matching
def _dct_matrix(n: int = THUMB, k: int = 8) -> np.ndarray:
    """The first ``k`` rows of the unnormalised DCT-II matrix (scipy's ``dct`` default)."""
    rows, cols = np.arange(k)[:, None], np.arange(n)[None, :]
    return 2.0 * np.cos(np.pi * rows * (2 * cols + 1) / (2 * n))


def phash_batch(thumbs: np.ndarray) -> np.ndarray:
    """64-bit pHash of ``(N, 32, 32)`` uint8 grayscale thumbnails as ``uint64``.

    Identical to ``imagehash.phash(Image.fromarray(thumb))`` (2-D DCT-II, the 8x8 lowest
    frequencies compared with their median, row-major bits, first bit most significant),
    but computed for all images at once as two matrix products (only the 8x8 low
    frequencies are needed) instead of one ``scipy.fftpack`` call per image.
    """
    pixels = np.asarray(thumbs, dtype=np.float64)
    m = _dct_matrix()
    coeffs = (m @ pixels @ m.T).reshape(len(pixels), 64)
    bits = coeffs > np.median(coeffs, axis=1, keepdims=True)
    return np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64)


def hash_pairs(
    hashes: np.ndarray, threshold: int, chunk: int = 512
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs ``i < j`` with Hamming distance ``<= threshold``: ``(i, j, distance)``."""
    h = np.ascontiguousarray(hashes, dtype=np.uint64)
    n = len(h)
    out_i, out_j, out_d = [], [], []
    for s in range(0, n, chunk):
        dist = np.bitwise_count(h[s : s + chunk, None] ^ h[None, s:])
        i, j = np.nonzero(dist <= threshold)
        keep = j > i  # the block starts at column s: j > i is the upper triangle
        i, j = i[keep], j[keep]
        out_i.append(i + s)
        out_j.append(j + s)
        out_d.append(dist[i, j])
    if not out_i:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0, np.uint8)
    return (
        np.concatenate(out_i).astype(np.int64),
        np.concatenate(out_j).astype(np.int64),
        np.concatenate(out_d),
    )


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norm, 1e-6)).astype(np.float32)


def gradient_features(thumbs: np.ndarray) -> np.ndarray:
    """Unit-length vectors of horizontal and vertical pixel differences per thumbnail."""
    t = np.asarray(thumbs, dtype=np.float32)
    dy = np.diff(t, axis=1)[:, :, :-1].reshape(len(t), -1)
    dx = np.diff(t, axis=2)[:, :-1, :].reshape(len(t), -1)
    return _unit_rows(np.concatenate([dy, dx], axis=1))


def pixel_features(thumbs: np.ndarray) -> np.ndarray:
    """Unit-length mean-centred pixel vectors (dot product = Pearson correlation)."""
    t = np.asarray(thumbs, dtype=np.float32).reshape(len(thumbs), -1)
    return _unit_rows(t - t.mean(axis=1, keepdims=True))


def _pair_dots(feats: np.ndarray, i: np.ndarray, j: np.ndarray, chunk: int = 8192) -> np.ndarray:
    out = np.empty(len(i), np.float32)
    for s in range(0, len(i), chunk):
        a, b = feats[i[s : s + chunk]], feats[j[s : s + chunk]]
        out[s : s + chunk] = np.einsum("ij,ij->i", a, b)
    return out


def near_duplicate_pairs(
    thumbs: np.ndarray,
    *,
    near_threshold: int = DEFAULT_NEAR_THRESHOLD,
    min_grad_corr: float = DEFAULT_MIN_GRAD_CORR,
    hashes: np.ndarray | None = None,
) -> pd.DataFrame:
    """Confirmed near-duplicate pairs among ``(N, 32, 32)`` thumbnails.

    Returns a DataFrame ``i, j, hamming, grad_corr, pixel_corr`` (indices into ``thumbs``,
    ``i < j``). ``hashes`` are the thumbnails' pHashes when already computed.
    """
    cols = ["i", "j", "hamming", "grad_corr", "pixel_corr"]
    if len(thumbs) < 2 or near_threshold < 0:
        return pd.DataFrame({c: [] for c in cols})
    i, j, d = hash_pairs(phash_batch(thumbs) if hashes is None else hashes, near_threshold)
    relaxed = min(min_grad_corr, RELAXED_GRAD_CORR)
    gc = _pair_dots(gradient_features(thumbs), i, j)
    keep = gc >= relaxed
    i, j, d, gc = i[keep], j[keep], d[keep], gc[keep]
    pc = _pair_dots(pixel_features(thumbs), i, j)
    keep = (gc >= min_grad_corr) | (pc >= STRONG_PIXEL_CORR)
    return pd.DataFrame(
        {"i": i[keep], "j": j[keep], "hamming": d[keep], "grad_corr": gc[keep],
         "pixel_corr": pc[keep]}
    )  # fmt: skip


# ------------------------------------------------------------------ the report
@dataclass
class AuditReport:
    """The audit's result; per-row Series are aligned with ``table`` (same index).

    - ``readable``: the row's image decodes.
    - ``group_id``: duplicate-group id (connected components over exact and near
      duplicates); a row without duplicates has an id of its own.
    - ``conflict``: the row is in a duplicate group whose gender / age-group labels disagree.
    - ``files``: per-row facts (sha1, width, height, mode, phash as 16 hex digits, error).
    - ``near_pairs``: confirmed near-duplicate pairs (table row positions of the first row
      of each distinct file content) with their scores.
    """

    table: pd.DataFrame
    summary: dict
    problems: list[Problem]
    readable: pd.Series
    group_id: pd.Series
    conflict: pd.Series
    files: pd.DataFrame
    near_pairs: pd.DataFrame = field(default_factory=pd.DataFrame)

    def to_dict(self) -> dict:
        """A JSON-able dict (see the module docstring for the keys)."""
        return {**self.summary, "problems": [p.to_dict() for p in self.problems]}

    def groups(self, min_size: int = 2) -> list[np.ndarray]:
        """Row positions of each duplicate group with at least ``min_size`` rows."""
        gid = self.group_id.to_numpy()
        order = np.argsort(gid, kind="stable")
        bounds = np.flatnonzero(np.diff(gid[order])) + 1
        return [g for g in np.split(order, bounds) if len(g) >= min_size]


def _age_histogram(ages: np.ndarray) -> dict[str, int]:
    known = ages[~np.isnan(ages)]
    decades = Counter(int(a // 10) * 10 for a in known)
    hist = {f"{d}-{d + 9}": decades[d] for d in sorted(decades)}
    hist["unknown"] = int(np.isnan(ages).sum())
    return hist


def _label_disagreements(table: pd.DataFrame, gid: np.ndarray) -> pd.DataFrame:
    """Per group: rows, distinct known genders, age groups and exact ages."""
    df = pd.DataFrame(
        {
            "g": gid,
            "gender": table["gender"].to_numpy(dtype="float64", na_value=np.nan),
            "age_group": table["age_group"].to_numpy(dtype="float64", na_value=np.nan),
            "age": table["age"].to_numpy(dtype="float64"),
        }
    )
    return df.groupby("g").agg(
        rows=("gender", "size"),
        genders=("gender", "nunique"),
        age_groups=("age_group", "nunique"),
        ages=("age", "nunique"),
    )


def audit_dataset(
    result: ReadResult,
    *,
    workers: int | None = None,
    progress: bool = True,
    near_threshold: int = DEFAULT_NEAR_THRESHOLD,
    min_grad_corr: float = DEFAULT_MIN_GRAD_CORR,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    console: Console | None = None,
) -> AuditReport:
    """Audit every image of ``result.table``; unreadable images are reported, never fatal.

    ``near_threshold`` is the pHash Hamming distance for near-duplicate candidates
    (negative: exact duplicates only); ``min_grad_corr`` the gradient similarity that
    confirms them (see the module docstring).
    """
    import time

    start = time.perf_counter()
    table = result.table
    n = len(table)
    paths = table["path"].astype(str).to_numpy()
    unique_paths, inverse = np.unique(paths, return_inverse=True)
    workers = default_workers() if workers is None else max(1, workers)
    facts_u = parallel_map(
        partial(inspect_file, max_pixels=max_pixels),
        list(unique_paths),
        workers=workers,
        progress=progress,
        description="auditing images",
        console=console,
    )
    facts = [facts_u[k] for k in inverse]
    readable = np.array([f.error is None for f in facts], dtype=bool)

    # exact duplicates: same bytes (files that could not be read at all stay alone)
    sha = np.array([f.sha1 for f in facts], dtype=object)
    has_bytes = sha != ""
    sha_codes = np.full(n, -1, np.int64)
    if has_bytes.any():
        sha_codes[has_bytes] = pd.factorize(sha[has_bytes])[0]
    first_of_code = (
        pd.Series(np.arange(n)[has_bytes]).groupby(sha_codes[has_bytes]).transform("min")
    )
    exact_i = np.arange(n)[has_bytes]
    exact_j = first_of_code.to_numpy()
    code_counts = np.bincount(sha_codes[has_bytes]) if has_bytes.any() else np.zeros(0, int)
    exact_groups = int((code_counts >= 2).sum())
    exact_files = int(code_counts[code_counts >= 2].sum())

    # near duplicates among readable rows, one representative per distinct file content
    rows_ok = np.flatnonzero(readable)
    thumbs = np.zeros((len(rows_ok), THUMB, THUMB), np.uint8)
    for k, r in enumerate(rows_ok):
        thumbs[k] = np.frombuffer(facts[r].thumb, np.uint8).reshape(THUMB, THUMB)
    hashes = phash_batch(thumbs)
    first_row = np.arange(n)
    first_row[exact_i] = exact_j
    rep = first_row[rows_ok] == rows_ok
    pairs = near_duplicate_pairs(
        thumbs[rep],
        hashes=hashes[rep],
        near_threshold=near_threshold,
        min_grad_corr=min_grad_corr,
    )
    near_i = rows_ok[rep][pairs["i"].to_numpy(dtype=np.int64)]
    near_j = rows_ok[rep][pairs["j"].to_numpy(dtype=np.int64)]
    pairs = pairs.assign(i=near_i, j=near_j)

    edges_i = np.concatenate([np.arange(n), exact_i, near_i])
    edges_j = np.concatenate([np.arange(n), exact_j, near_j])
    graph = coo_matrix((np.ones(len(edges_i), np.int8), (edges_i, edges_j)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    gid = pd.factorize(labels)[0] if n else np.zeros(0, np.int64)

    per_group = _label_disagreements(table, gid)
    sizes = per_group["rows"]
    dup = sizes >= 2
    distinct_bytes = pd.Series(sha_codes).where(sha_codes >= 0, -1 - np.arange(n))
    distinct_bytes = distinct_bytes.groupby(gid).nunique()
    near_groups = dup & (distinct_bytes > 1)
    gender_conf = dup & (per_group["genders"] > 1)
    age_conf = dup & (per_group["age_groups"] > 1)
    conflict_groups = gender_conf | age_conf
    conflict = conflict_groups.to_numpy()[gid] if n else np.zeros(0, bool)

    problems = list(result.problems) + list(result.disagreements)
    line = table["line"] if "line" in table else pd.Series([pd.NA] * n)
    for r in np.flatnonzero(~readable):
        ln = line.iloc[r]
        problems.append(Problem(str(paths[r]), 0 if pd.isna(ln) else int(ln), facts[r].error))

    in_table = set(unique_paths.tolist())
    unlabelled_images = {
        p.path
        for p in problems
        if p.path not in in_table and is_image_name(p.path) and Path(p.path).is_file()
    }
    gender = table["gender"]
    age_group = table["age_group"]
    conflict_examples = []
    for g in np.flatnonzero(conflict_groups.to_numpy())[:10]:
        members = np.flatnonzero(gid == g)
        conflict_examples.append(
            [
                {
                    "path": str(paths[r]),
                    "gender": None if pd.isna(gender.iloc[r]) else int(gender.iloc[r]),
                    "age": None
                    if math.isnan(table["age"].iloc[r])
                    else float(table["age"].iloc[r]),
                    "age_group": None
                    if pd.isna(age_group.iloc[r])
                    else AGE_GROUP_NAMES[int(age_group.iloc[r])],
                }
                for r in members
            ]
        )
    sizes_wh = Counter(f"{f.width}x{f.height}" for f in facts if f.width)
    summary = {
        "format": result.format,
        "images": n + len(unlabelled_images),
        "rows": n,
        "readable": int(readable.sum()),
        "unreadable": int((~readable).sum()),
        "labelled_gender": int(gender.notna().sum()),
        "labelled_age": int((table["age"].notna() | age_group.notna()).sum()),
        "exact_duplicate_groups": exact_groups,
        "exact_duplicate_files": exact_files,
        "near_duplicate_groups": int(near_groups.sum()),
        "near_duplicate_files": int(sizes[near_groups].sum()),
        "near_duplicate_pairs": len(pairs),
        "duplicate_groups": int(dup.sum()),
        "duplicate_files": int(sizes[dup].sum()),
        "label_conflict_groups": int(conflict_groups.sum()),
        "gender_conflict_groups": int(gender_conf.sum()),
        "age_group_conflict_groups": int(age_conf.sum()),
        "conflict_files": int(conflict.sum()),
        "age_disagreement_groups": int((dup & (per_group["ages"] > 1)).sum()),
        "label_errors": len(result.problems),
        "label_source_disagreements": len(result.disagreements),
        "label_source_examples": [p.to_dict() for p in result.disagreements[:10]],
        "gender_balance": {
            "male": int((gender == 0).sum()),
            "female": int((gender == 1).sum()),
            "unknown": int(gender.isna().sum()),
        },
        "age_groups": {
            **{name: int((age_group == k).sum()) for k, name in enumerate(AGE_GROUP_NAMES)},
            "unknown": int(age_group.isna().sum()),
        },
        "age_histogram": _age_histogram(table["age"].to_numpy(dtype="float64")),
        "image_sizes": dict(sizes_wh.most_common(10)),
        "image_modes": dict(Counter(f.mode for f in facts if f.mode).most_common()),
        "conflict_examples": conflict_examples,
        "settings": {
            "near_threshold": near_threshold,
            "min_grad_corr": min_grad_corr,
            "workers": workers,
        },
        "seconds": round(time.perf_counter() - start, 2),
    }
    phash = np.zeros(n, np.uint64)
    phash[rows_ok] = hashes
    files = pd.DataFrame(
        {
            "sha1": sha.astype(str),
            "width": [f.width for f in facts],
            "height": [f.height for f in facts],
            "mode": [f.mode for f in facts],
            "phash": [
                f"{int(h):016x}" if ok else "" for h, ok in zip(phash, readable, strict=True)
            ],
            "error": [f.error or "" for f in facts],
        },
        index=table.index,
    )
    return AuditReport(
        table=table,
        summary=summary,
        problems=problems,
        readable=pd.Series(readable, index=table.index, name="readable"),
        group_id=pd.Series(gid, index=table.index, name="group_id", dtype=np.int64),
        conflict=pd.Series(conflict, index=table.index, name="conflict", dtype=bool),
        files=files,
        near_pairs=pairs.reset_index(drop=True),
    )


# ------------------------------------------------------------------ across datasets
#: Side of the face crops every dataset is cut to before faces of different datasets are
#: compared (UTKFace's framing, through the face path) ...
FRAMED_SIZE = 64
#: ... and the part of them the thumbnails are made of (x0, y0, x1, y1 in pixels): brows to
#: chin, without the margins where one dataset's image may end (UTKFace's tight crops are
#: padded there) and another's shows hair or background.
FRAMED_INNER = (8, 8, 56, 56)


def framed_thumbnails(
    read: pd.DataFrame,
    paths: list[str] | np.ndarray,
    *,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    progress: bool = False,
    console: Console | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(thumbs, found)`` for ``paths``: ``(N, 32, 32)`` uint8 grayscale thumbnails of each
    image's largest face cut through the face path (default detector) to UTKFace's framing
    (its :data:`FRAMED_INNER` part), and whether a face was found. Datasets framed
    differently (UTKFace's tight crops, All-Age-Faces' hair and shoulders, CelebA's loose
    crops) only compare alike this way.

    The crops go through the image cache built over the rows of ``read`` (all the rows a
    reader gave: one cache per dataset, reused by every later audit and run)."""
    from agegender.data.cache import build_cache
    from agegender.infer.align import UTKFACE_TEMPLATE
    from agegender.infer.detector import DEFAULT_DETECTOR

    thumbs = np.zeros((len(paths), THUMB, THUMB), np.uint8)
    if len(paths) == 0:
        return thumbs, np.zeros(0, bool)
    cache = build_cache(
        read,
        FRAMED_SIZE,
        cache_dir=cache_dir,
        workers=workers,
        progress=progress,
        console=console,
        align=DEFAULT_DETECTOR,
        template=UTKFACE_TEMPLATE,
    )
    rows = cache.rows_for(paths)
    found = np.asarray(cache.ok, dtype=bool)[rows]
    for k in np.flatnonzero(found):
        face = Image.fromarray(cache.images[rows[k]]).crop(FRAMED_INNER)
        thumbs[k] = np.asarray(gray_thumbnail(face))
    return thumbs, found


#: Near copies across datasets: pHash candidates within this many bits (of 64) ...
CROSS_NEAR_THRESHOLD = 16
#: ... whose gradients, blurred by BLUR_SIGMA px, have at least this cosine similarity ...
CROSS_MIN_BLUR_GRAD = 0.75
BLUR_SIGMA = 1.5
#: ... are confirmed when, once one thumbnail is registered onto the other (an affine
#: map, OpenCV's ECC), their gradients have at least this cosine similarity.
CROSS_MIN_GRAD_CORR = 0.865


def registered_grad_corr(a: np.ndarray, b: np.ndarray) -> float:
    """Gradient cosine similarity of two 32x32 grayscale thumbnails after ``b`` is
    registered onto ``a`` (``cv2.findTransformECC``, affine, from the identity); -1 when
    the registration does not converge."""
    import cv2

    warp = np.eye(2, 3, dtype=np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 50, 1e-4)
    try:
        _, warp = cv2.findTransformECC(
            a.astype(np.float32), b.astype(np.float32), warp, cv2.MOTION_AFFINE, criteria, None, 3
        )
    except cv2.error:
        return -1.0
    moved = cv2.warpAffine(
        b,
        warp,
        (b.shape[1], b.shape[0]),
        flags=cv2.INTER_LINEAR + cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )
    f = gradient_features(np.stack([a, moved]))
    return float(f[0] @ f[1])


def cross_near_pairs(
    thumbs: np.ndarray,
    labels: np.ndarray,
    *,
    near_threshold: int = CROSS_NEAR_THRESHOLD,
    min_blur_grad: float = CROSS_MIN_BLUR_GRAD,
    min_grad_corr: float = CROSS_MIN_GRAD_CORR,
    cache_dir: str | Path | None = None,
) -> pd.DataFrame:
    """Near copies between thumbnails of different ``labels`` (datasets): ``i, j,
    hamming, blur_grad, grad_corr`` (``i < j``; ``grad_corr`` after registration).

    Faces of two datasets are cut from differently framed images (a tight crop, a head
    with shoulders), so even one photo's two cuts are a few pixels apart and the plain
    gradient similarity that confirms copies within a dataset would miss many (on UTKFace
    x All-Age-Faces, real copies scored 0.40-0.91 unregistered, as low as look-alike
    strangers). Hence: pHash candidates (``near_threshold``), a shift-tolerant gate on
    blurred gradients (``min_blur_grad``), then each remaining pair is registered (affine
    ECC) and confirmed on its gradients (``min_grad_corr``). Calibrated by viewing
    UTKFace x All-Age-Faces pairs side by side (faces framed by :func:`framed_thumbnails`):
    each of the 26 pairs at 0.877 or more was one photo, each pair at 0.849 or less two
    people (smooth baby faces the most alike, 0.82-0.85). With ``cache_dir`` the result is
    stored there, keyed by the thumbnails, labels and settings (the folds of a
    cross-validation share it)."""
    import hashlib as _hashlib

    from scipy.ndimage import gaussian_filter

    cols = ["i", "j", "hamming", "blur_grad", "grad_corr"]
    thumbs = np.ascontiguousarray(thumbs, dtype=np.uint8)
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    settings = (near_threshold, min_blur_grad, min_grad_corr, BLUR_SIGMA, 1)
    stored = None
    if cache_dir is not None:
        key = _hashlib.sha1(thumbs.tobytes() + labels.tobytes() + repr(settings).encode())
        stored = Path(cache_dir).expanduser() / f"cross-pairs-{key.hexdigest()[:20]}.csv"
        if stored.is_file():
            return pd.read_csv(stored)
    if len(thumbs) < 2 or near_threshold < 0:
        return pd.DataFrame({c: [] for c in cols})
    i, j, d = hash_pairs(phash_batch(thumbs), near_threshold)
    keep = labels[i] != labels[j]
    i, j, d = i[keep], j[keep], d[keep]
    blurred = gaussian_filter(thumbs.astype(np.float32), (0, BLUR_SIGMA, BLUR_SIGMA))
    bg = _pair_dots(gradient_features(blurred), i, j)
    keep = bg >= min_blur_grad
    i, j, d, bg = i[keep], j[keep], d[keep], bg[keep]
    gc = np.array(
        [registered_grad_corr(thumbs[a], thumbs[b]) for a, b in zip(i, j, strict=True)],
        dtype=np.float32,
    )
    keep = gc >= min_grad_corr
    out = pd.DataFrame(
        {"i": i[keep], "j": j[keep], "hamming": d[keep], "blur_grad": bg[keep],
         "grad_corr": gc[keep]}
    )  # fmt: skip
    if stored is not None:
        from agegender.fileio import atomic_path

        stored.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(stored) as tmp:
            out.to_csv(tmp, index=False)
    return out


@dataclass
class DatasetLinks:
    """Duplicates across several datasets (:func:`link_datasets`); per-row arrays follow
    the datasets' rows concatenated in order.

    - ``dataset``: the row's dataset (index into ``names``).
    - ``group_id``: duplicate groups over all rows: each dataset's own groups joined by
      copies found across datasets; a row without copies has a group of its own.
    - ``pairs``: the copies found across datasets, ``i, j, kind`` (``exact``: same bytes;
      ``near``: the framed faces match, :func:`cross_near_pairs`) and the near pairs'
      ``hamming, blur_grad, grad_corr``.
    - ``summary``: JSON-able counts (see :func:`link_datasets`).
    """

    names: list[str]
    dataset: np.ndarray
    group_id: np.ndarray
    pairs: pd.DataFrame
    summary: dict

    def cross_groups(self) -> np.ndarray:
        """Per row: its group holds rows of at least two datasets."""
        per_group = pd.Series(self.dataset).groupby(self.group_id).nunique()
        if not len(self.group_id):
            return np.zeros(0, bool)
        return per_group.to_numpy()[self.group_id] > 1


def _components(n: int, edges_i: list[np.ndarray], edges_j: list[np.ndarray]) -> np.ndarray:
    i = np.concatenate([np.arange(n), *edges_i]).astype(np.int64)
    j = np.concatenate([np.arange(n), *edges_j]).astype(np.int64)
    graph = coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return pd.factorize(labels)[0] if n else np.zeros(0, np.int64)


def _same_key_edges(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edges joining every row to the first row with the same key (keys < 0 or "" stay
    alone)."""
    keys = np.asarray(keys)
    valid = keys != "" if keys.dtype.kind in "OUS" else keys >= 0
    rows = np.flatnonzero(valid)
    if not len(rows):
        return rows, rows
    first = pd.Series(rows).groupby(pd.factorize(keys[rows])[0]).transform("min")
    return rows, first.to_numpy()


def link_datasets(
    tables: list[pd.DataFrame],
    names: list[str],
    *,
    groups: list[np.ndarray | None] | None = None,
    sha1: list[np.ndarray | None] | None = None,
    thumbs: np.ndarray | None = None,
    found: np.ndarray | None = None,
    near_threshold: int = CROSS_NEAR_THRESHOLD,
    min_grad_corr: float = CROSS_MIN_GRAD_CORR,
    cache_dir: str | Path | None = None,
) -> DatasetLinks:
    """Join several datasets' duplicate groups by the copies found across them.

    ``tables``: each dataset's rows; ``groups``: each one's own duplicate groups (its
    audit's ``group_id``; None: each row alone); ``sha1``: each row's file digest (exact
    copies); ``thumbs`` / ``found``: the rows' faces cut to one framing
    (:func:`framed_thumbnails`, all datasets concatenated) for near copies between rows of
    different datasets (:func:`cross_near_pairs`; ``cache_dir`` keeps them for the next
    call). Labels are not compared to drop anything: each dataset keeps its own (their age
    labels differ in origin); disagreements are counted.

    ``summary`` keys: ``datasets`` (``{name: {rows, faces_framed, in_cross_groups}}``),
    ``cross_dataset_groups``, ``cross_dataset_files``, ``cross_dataset_pairs``
    (``{exact, near}``), ``dataset_pairs`` (``{"a + b": groups holding both}``),
    ``cross_gender_conflict_groups``, ``cross_age_gap_years`` (median and max gap between
    exact ages of one group's datasets), ``cross_examples`` (up to 10 groups as lists of
    ``{dataset, path, gender, age}``), ``settings``.
    """
    if len(tables) != len(names):
        raise ValueError(f"{len(tables)} tables for {len(names)} names")
    sizes = [len(t) for t in tables]
    n = int(sum(sizes))
    dataset = np.repeat(np.arange(len(tables)), sizes)
    offsets = np.concatenate([[0], np.cumsum(sizes)])[:-1]
    edges_i: list[np.ndarray] = []
    edges_j: list[np.ndarray] = []
    for k, g in enumerate(groups or []):
        if g is not None:
            a, b = _same_key_edges(pd.factorize(np.asarray(g))[0])
            edges_i.append(a + offsets[k])
            edges_j.append(b + offsets[k])
    pair_frames = []
    if sha1 is not None:
        digests = (
            np.concatenate(
                [
                    np.asarray(d if d is not None else [""] * m, dtype=object)
                    for d, m in zip(sha1, sizes, strict=True)
                ]
            )
            if n
            else np.zeros(0, object)
        )
        a, b = _same_key_edges(digests)
        cross = dataset[a] != dataset[b]
        pair_frames.append(pd.DataFrame({"i": b[cross], "j": a[cross], "kind": "exact"}))
        edges_i.append(a)
        edges_j.append(b)
    if thumbs is not None and n:
        ok = np.ones(n, bool) if found is None else np.asarray(found, dtype=bool)
        rows = np.flatnonzero(ok)
        near = cross_near_pairs(
            thumbs[rows],
            dataset[rows],
            near_threshold=near_threshold,
            min_grad_corr=min_grad_corr,
            cache_dir=cache_dir,
        )
        near = near.assign(
            i=rows[near["i"].to_numpy(dtype=np.int64)],
            j=rows[near["j"].to_numpy(dtype=np.int64)],
            kind="near",
        )
        pair_frames.append(near)
        edges_i.append(near["i"].to_numpy(dtype=np.int64))
        edges_j.append(near["j"].to_numpy(dtype=np.int64))
    cols = ["i", "j", "kind", "hamming", "blur_grad", "grad_corr"]
    pairs = pd.concat(pair_frames, ignore_index=True) if pair_frames else pd.DataFrame()
    pairs = pairs.reindex(columns=cols)
    gid = _components(n, edges_i, edges_j)
    links = DatasetLinks(list(names), dataset, gid, pairs, {})
    links.summary = _links_summary(links, tables, found, near_threshold, min_grad_corr)
    return links


def _links_summary(
    links: DatasetLinks,
    tables: list[pd.DataFrame],
    found: np.ndarray | None,
    near_threshold: int,
    min_grad_corr: float,
) -> dict:
    names, dataset, gid = links.names, links.dataset, links.group_id
    n = len(gid)
    cols = ["path", "gender", "age"]
    rows = (
        pd.concat([t[cols] for t in tables], ignore_index=True)
        if n
        else pd.DataFrame({c: [] for c in cols})
    )
    in_cross = links.cross_groups()
    framed = np.ones(n, bool) if found is None else np.asarray(found, dtype=bool)
    per_dataset = {
        name: {
            "rows": int((dataset == k).sum()),
            "faces_framed": int((framed & (dataset == k)).sum()),
            "in_cross_groups": int((in_cross & (dataset == k)).sum()),
        }
        for k, name in enumerate(names)
    }
    cross_gids = np.unique(gid[in_cross])
    members = pd.DataFrame(
        {
            "g": gid[in_cross],
            "d": dataset[in_cross],
            "gender": rows["gender"].to_numpy(dtype="float64", na_value=np.nan)[in_cross],
            "age": rows["age"].to_numpy(dtype="float64")[in_cross],
            "row": np.flatnonzero(in_cross),
        }
    )
    dataset_pairs: Counter[str] = Counter()
    gender_conflicts = 0
    gaps: list[float] = []
    for _, m in members.groupby("g"):
        present = sorted(set(m["d"].tolist()))
        for a in range(len(present)):
            for b in range(a + 1, len(present)):
                dataset_pairs[f"{names[present[a]]} + {names[present[b]]}"] += 1
        gender_conflicts += int(m["gender"].nunique() > 1)
        ages = m.dropna(subset=["age"]).groupby("d")["age"].median()
        if len(ages) > 1:
            gaps.append(float(ages.max() - ages.min()))
    examples = []
    for g in cross_gids[:10]:
        examples.append(
            [
                {
                    "dataset": names[dataset[r]],
                    "path": str(rows["path"].iloc[r]),
                    "gender": None
                    if pd.isna(rows["gender"].iloc[r])
                    else int(rows["gender"].iloc[r]),
                    "age": None if math.isnan(rows["age"].iloc[r]) else float(rows["age"].iloc[r]),
                }
                for r in np.flatnonzero(gid == g)
            ]
        )
    kinds = links.pairs["kind"].value_counts() if len(links.pairs) else pd.Series(dtype=int)
    return {
        "datasets": per_dataset,
        "cross_dataset_groups": len(cross_gids),
        "cross_dataset_files": int(in_cross.sum()),
        "cross_dataset_pairs": {k: int(kinds.get(k, 0)) for k in ("exact", "near")},
        "dataset_pairs": dict(dataset_pairs.most_common()),
        "cross_gender_conflict_groups": gender_conflicts,
        "cross_age_gap_years": {
            "groups": len(gaps),
            "median": float(np.median(gaps)) if gaps else None,
            "max": float(max(gaps)) if gaps else None,
        },
        "cross_examples": examples,
        "settings": {
            "near_threshold": near_threshold,
            "min_blur_grad": CROSS_MIN_BLUR_GRAD,
            "min_grad_corr": min_grad_corr,
            "registration": "affine ECC",
            "framing": f"utkface template, {FRAMED_SIZE} px, face path, box {list(FRAMED_INNER)}",
        },
    }


# ------------------------------------------------------------------ human-readable output
def print_report(report: AuditReport, console: Console | None = None, max_problems: int = 20):
    """Print the audit as rich tables (overview, duplicates, labels, problems)."""
    console = console or Console()
    s = report.summary
    overview = Table(title=f"dataset audit ({s['format'] or 'unknown format'})", show_header=False)
    overview.add_column("what", style="bold")
    overview.add_column("count", justify="right")
    for key, label in [
        ("images", "image files found"),
        ("readable", "readable"),
        ("unreadable", "unreadable"),
        ("label_errors", "label problems (reader)"),
        ("label_source_disagreements", "left out: the dataset's label sources disagree"),
        ("labelled_gender", "rows with gender"),
        ("labelled_age", "rows with age / age group"),
        ("exact_duplicate_groups", "byte-identical groups"),
        ("exact_duplicate_files", "  files in them"),
        ("near_duplicate_groups", "near-duplicate groups (re-encoded / blurred copies)"),
        ("near_duplicate_files", "  files in them"),
        ("duplicate_groups", "all duplicate groups"),
        ("duplicate_files", "  files in them"),
        ("label_conflict_groups", "groups with conflicting gender / age-group labels"),
        ("conflict_files", "  files in them"),
    ]:
        overview.add_row(label, f"{s[key]:,}")
    overview.caption = f"{s['seconds']} s, {s['settings']['workers']} workers"
    console.print(overview)

    labels = Table(title="labels", show_header=True)
    labels.add_column("gender")
    labels.add_column("rows", justify="right")
    labels.add_column("age group")
    labels.add_column("rows", justify="right")
    genders = list(s["gender_balance"].items())
    groups = list(s["age_groups"].items())
    for k in range(max(len(genders), len(groups))):
        g = genders[k] if k < len(genders) else ("", "")
        a = groups[k] if k < len(groups) else ("", "")
        labels.add_row(g[0], f"{g[1]:,}" if g[1] != "" else "", a[0], f"{a[1]:,}")
    console.print(labels)

    if s["conflict_examples"]:
        conf = Table(title="label conflicts (first groups)")
        conf.add_column("group")
        conf.add_column("file")
        conf.add_column("gender")
        conf.add_column("age")
        for k, members in enumerate(s["conflict_examples"]):
            for m in members:
                g = m["gender"]
                conf.add_row(
                    str(k),
                    Path(m["path"]).name,
                    "?" if g is None else ("male", "female")[g],
                    f"{m['age']:g}" if m["age"] is not None else (m["age_group"] or "?"),
                )
        console.print(conf)

    if report.problems:
        shown = min(max_problems, len(report.problems))
        console.print(f"[bold]problems[/] ({len(report.problems):,}; first {shown}):")
        for p in report.problems[:shown]:
            console.print(f"  {p}", highlight=False, soft_wrap=True, markup=False)


def print_links(links: DatasetLinks, console: Console | None = None) -> None:
    """Print the duplicates found across datasets as a rich table and a few examples."""
    console = console or Console()
    s = links.summary
    t = Table(title="duplicates across datasets")
    t.add_column("dataset")
    t.add_column("rows", justify="right")
    t.add_column("faces framed", justify="right")
    t.add_column("in cross-dataset groups", justify="right")
    for name, d in s["datasets"].items():
        t.add_row(name, f"{d['rows']:,}", f"{d['faces_framed']:,}", f"{d['in_cross_groups']:,}")
    pairs = s["cross_dataset_pairs"]
    t.caption = (
        f"{s['cross_dataset_groups']:,} groups span datasets ({s['cross_dataset_files']:,} "
        f"rows; {pairs['exact']:,} exact and {pairs['near']:,} near pairs); "
        f"{s['cross_gender_conflict_groups']:,} with conflicting gender"
    )
    console.print(t)
    for k, v in s["dataset_pairs"].items():
        console.print(f"  {k}: {v:,} groups", highlight=False)
    for members in s["cross_examples"][:3]:
        console.print(
            "  e.g. " + " = ".join(f"{m['dataset']}:{Path(m['path']).name}" for m in members),
            highlight=False,
            soft_wrap=True,
        )
