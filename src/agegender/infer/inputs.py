"""What the predictor accepts and how each input becomes an RGB array or a one-line error.

Inputs may be file paths, encoded bytes, PIL images or numpy arrays (``(H, W, 3)`` RGB
uint8, ``(H, W)`` gray, ``(H, W, 4)`` RGBA, 16-bit or float in 0..1). Paths and bytes are
decoded with :func:`agegender.data.imageio.open_image` (JPEG, PNG, WebP, ..., HEIC/HEIF and
AVIF; EXIF rotation, odd colour modes, pixel limit). :func:`collect_image_paths` expands the
CLI's arguments (files, folders, ``.txt`` / ``.csv`` lists).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from agegender.data.imageio import DEFAULT_MAX_PIXELS, ImageError, open_image

Input = str | os.PathLike | bytes | bytearray | Image.Image | np.ndarray


def _array_to_rgb(arr: np.ndarray, max_pixels: int) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ImageError(f"unsupported array shape {arr.shape}: expected (H, W), (H, W, 3|4)")
    h, w = arr.shape[:2]
    if h == 0 or w == 0:
        raise ImageError(f"image has no pixels ({w}x{h})")
    if h * w > max_pixels:
        raise ImageError(f"image too large: {w}x{h} = {w * h} pixels > limit {max_pixels}")
    if arr.dtype != np.uint8:
        a = arr.astype(np.float64)
        hi = float(np.nanmax(a)) if a.size else 0.0
        scale = 255.0 if hi <= 1.0 else (255.0 / 65535.0 if hi > 255 else 1.0)
        arr = np.clip(np.nan_to_num(a) * scale, 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        return np.ascontiguousarray(np.repeat(arr[:, :, None], 3, axis=2))
    if arr.shape[2] == 4:  # composite over white, like imageio does for RGBA files
        alpha = arr[:, :, 3:4].astype(np.float32) / 255.0
        rgb = arr[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        return np.ascontiguousarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8))
    return np.ascontiguousarray(arr)


def to_rgb_array(item: Input, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode any supported input to an ``(H, W, 3)`` uint8 RGB array (raises ImageError)."""
    if isinstance(item, np.ndarray):
        return _array_to_rgb(item, max_pixels)
    if isinstance(item, Image.Image):
        w, h = item.size
        if w * h > max_pixels:
            raise ImageError(f"image too large: {w}x{h} = {w * h} pixels > limit {max_pixels}")
        img = ImageOps.exif_transpose(item)
        if img.mode in ("RGBA", "LA", "PA", "P") or "transparency" in img.info:
            return _array_to_rgb(np.asarray(img.convert("RGBA")), max_pixels)
        if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            return _array_to_rgb(np.asarray(img), max_pixels)
        return np.ascontiguousarray(np.asarray(img.convert("RGB")))
    if isinstance(item, bytearray):
        item = bytes(item)
    if isinstance(item, (bytes, str, os.PathLike)):
        return np.asarray(open_image(item, max_pixels=max_pixels))
    raise ImageError(f"unsupported input type {type(item).__name__}")


def source_name(item: Input, index: int) -> str:
    if isinstance(item, (str, os.PathLike)):
        return str(item)
    kind = {bytes: "bytes", bytearray: "bytes"}.get(type(item), "image")
    return f"<{kind} {index}>"


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    msg = text[0] if text else ""
    if isinstance(exc, ImageError):
        return msg or "cannot decode image"
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def _read_list(list_file: Path) -> list[str]:
    """Paths from a ``.txt`` (one per line, ``#`` comments) or ``.csv`` (``path`` column,
    else the first column) list; relative paths are relative to the list's folder."""
    import csv

    base = list_file.parent
    text = list_file.read_text(encoding="utf-8-sig", errors="replace")
    if list_file.suffix.lower() == ".csv":
        rows = list(csv.reader(text.splitlines()))
        if not rows:
            return []
        header = [h.strip().lower() for h in rows[0]]
        col, body = (header.index("path"), rows[1:]) if "path" in header else (0, rows)
        values = [r[col].strip() for r in body if len(r) > col and r[col].strip()]
    else:
        values = [ln.strip() for ln in text.splitlines()]
        values = [v for v in values if v and not v.startswith("#")]
    return [v if Path(v).is_absolute() else str(base / v) for v in values]


def collect_image_paths(inputs: Iterable[str | os.PathLike]) -> list[str]:
    """Expand image files, folders (recursive, image names only:
    :data:`agegender.data.imageio.IMAGE_SUFFIXES`, ``.heic``/``.avif`` included, any case)
    and ``.csv``/``.txt`` lists of paths into one list, in the order given (folders sorted).

    A missing argument is kept, like a missing path inside a list file: it becomes a
    per-image error row and the other inputs are still predicted. Raises ``ValueError``
    only when none of the arguments exists (most likely a typo in the command).
    """
    from agegender.data.imageio import is_image_name

    out: list[str] = []
    missing: list[str] = []
    inputs = list(inputs)
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out.extend(str(f) for f in sorted(p.rglob("*")) if f.is_file() and is_image_name(f))
        elif p.is_file() and p.suffix.lower() in (".csv", ".txt"):
            out.extend(_read_list(p))
        elif p.is_file():
            out.append(str(p))
        else:
            missing.append(str(p))
            out.append(str(p))  # predicted as a per-image "file not found" result
    if missing and len(missing) == len(inputs):
        raise ValueError(f"no such file or folder: {missing[0]}")
    return out
