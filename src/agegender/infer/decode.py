"""Decode a photo at the resolution the face path needs, not more.

A 12 MP phone JPEG takes about 117 ms to decode in full on one core here, 22 ms at 1/4
scale (libjpeg scales while it decodes). JPEGs are decoded by simplejpeg (libjpeg-turbo
straight into a NumPy array, at a 1/2, 1/4 or 1/8 scale) where it can read them, else by
Pillow (``Image.draft``): Pillow's own full decode of a 12 MP JPEG costs about four times
simplejpeg's here, most of it copying the decoded image into the array
(``benchmarks/jpeg_decode.md``). The detector needs far
fewer pixels than the camera took (:func:`detection_side`), and most faces need fewer than
that for the model's crop. So :func:`decode_photo` decodes a JPEG at the smallest of 1/8,
1/4, 1/2, 1 that still gives the detector its pixels, and :func:`crop_scale` says when a
face is too small there for the model's input (the crop would be upsampled): the predictor
then decodes once more at the finer scale it needs and cuts the faces from that. Boxes and
landmarks are reported in the photo's own pixels whatever the scale they were found at.
Other formats, arrays and PIL images are decoded (or taken) in full.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from agegender.data.imageio import DEFAULT_MAX_PIXELS, open_image
from agegender.infer.align import similarity_transform
from agegender.infer.boxes import Box
from agegender.infer.inputs import Input, to_rgb_array

try:  # libjpeg-turbo into NumPy; Pillow decodes JPEGs without it
    import simplejpeg as _simplejpeg
except ImportError:  # pragma: no cover - a dependency; kept optional for odd platforms
    _simplejpeg = None

#: EXIF orientations that swap width and height (rotations by 90 or 270 degrees).
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})


@dataclass(frozen=True)
class Decoded:
    """A decoded photo: ``rgb`` (possibly at a reduced scale) and the photo's own size
    (after EXIF rotation)."""

    rgb: np.ndarray
    width: int
    height: int
    item: Input | None = None  # what to decode again for a finer scale (None: nothing)

    @property
    def scale(self) -> tuple[float, float]:
        """Decoded pixels per photo pixel, along x and y (1.0: decoded in full)."""
        h, w = self.rgb.shape[:2]
        return w / self.width, h / self.height

    @property
    def reduced(self) -> bool:
        return self.item is not None and self.rgb.shape[1] < self.width


def _jpeg_header(item: Input) -> tuple[int, int, int] | None:
    """``(stored width, stored height, EXIF orientation)`` of a JPEG path or bytes; None
    for anything else (other formats, unreadable files: the full decode reports those)."""
    if isinstance(item, bytes | bytearray):
        src: object = io.BytesIO(bytes(item))
    elif isinstance(item, str | os.PathLike):
        src = item
    else:
        return None
    try:
        with Image.open(src) as img:  # type: ignore[arg-type]
            if img.format != "JPEG":
                return None
            w, h = img.size
            orientation = int(img.getexif().get(0x0112, 1) or 1)
            return int(w), int(h), orientation
    except Exception:  # noqa: BLE001 - the full decode gives the one-line reason
        return None


def decode_photo(
    item: Input, long_side: int | None = None, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Decoded:
    """``item`` decoded with at least ``long_side`` pixels on its long side (a JPEG at the
    coarsest DCT scale that gives them; anything else, or ``long_side`` None, in full).
    Raises :class:`~agegender.data.imageio.ImageError` for anything unusable."""
    header = _jpeg_header(item) if long_side else None
    if header is None:
        rgb = to_rgb_array(item, max_pixels)
        h, w = rgb.shape[:2]
        small = reduced(rgb, long_side) if long_side else rgb
        return Decoded(small, w, h, rgb if small is not rgb else None)
    w, h, orientation = header
    width, height = (h, w) if orientation in _SWAPPING_ORIENTATIONS else (w, h)
    rgb = _decode_at(item, w, h, long_side, max_pixels, orientation)
    if rgb.shape[1] >= width and rgb.shape[0] >= height:
        return Decoded(rgb, width, height)
    return Decoded(rgb, width, height, item)


def _factor(w: int, h: int, long_side: int) -> int:
    """The coarsest of libjpeg's scales 1/8, 1/4, 1/2, 1 that keeps ``long_side`` px."""
    return next(f for f in (8, 4, 2, 1) if f == 1 or max(w, h) / f >= long_side)


def reduced(rgb: np.ndarray, long_side: int) -> np.ndarray:
    """A decoded photo (a PNG, a HEIC, an array, a video frame) reduced as a JPEG decoder
    reduces a JPEG (:func:`_turbo_decode`): by the coarsest of 1/8, 1/4, 1/2 that keeps
    ``long_side`` px, each output pixel the mean of its ``f`` x ``f`` block (``rgb``
    itself at 1/1). So a photo takes the same path whatever form it comes in: 200 12 MP
    JPEG portraits against the same photos decoded in full into arrays, P(female) moved
    by 0.012 on average (0.017 when the array went through the pyramid in full; the rest
    is libjpeg's scaled decode against this block mean). The crops are cut from the
    reduced image too, where it has the pixels they need."""
    h, w = rgb.shape[:2]
    f = _factor(w, h, long_side)
    if f == 1:
        return rgb
    size = (math.ceil(w / f), math.ceil(h / f))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def _decode_at(
    item: Input, w: int, h: int, long_side: int, max_pixels: int, orientation: int = 1
) -> np.ndarray:
    long = max(w, h)
    if w * h <= max_pixels:  # (a larger one: Pillow's path gives the one-line refusal)
        fast = _turbo_decode(item, w, h, long_side, orientation)
        if fast is not None:
            return fast
    if long_side >= long:
        return np.asarray(open_image(item, max_pixels=max_pixels))  # type: ignore[arg-type]
    want = (max(1, math.ceil(w * long_side / long)), max(1, math.ceil(h * long_side / long)))
    return np.asarray(open_image(item, max_pixels=max_pixels, draft_size=want))  # type: ignore[arg-type]


def _turbo_decode(
    item: Input, w: int, h: int, long_side: int, orientation: int
) -> np.ndarray | None:
    """A ``w`` x ``h`` (stored) JPEG decoded by simplejpeg at the coarsest of 1/8, 1/4, 1/2,
    1 that keeps ``long_side`` px on its long side, EXIF orientation applied; ``None`` where
    simplejpeg is not installed or cannot read it (CMYK, a damaged file: Pillow's path then
    decodes it or gives the one-line reason)."""
    if _simplejpeg is None:
        return None
    factor = _factor(w, h, long_side)
    try:
        if isinstance(item, bytes | bytearray):
            data = bytes(item)
        else:
            with open(item, "rb") as fh:  # type: ignore[arg-type]
                data = fh.read()
        if _simplejpeg.decode_jpeg_header(data)[2] not in ("YCbCr", "Gray"):
            return None  # CMYK / YCCK: Pillow's conversion, as before
        rgb = _simplejpeg.decode_jpeg(
            data,
            colorspace="RGB",
            min_factor=factor,
            min_width=math.ceil(w / factor),
            min_height=math.ceil(h / factor),
        )
    except (OSError, ValueError):
        return None
    return np.ascontiguousarray(exif_oriented(rgb, orientation))


def exif_oriented(rgb: np.ndarray, orientation: int) -> np.ndarray:
    """``rgb`` as stored, turned upright for its EXIF ``orientation`` (1-8), as Pillow's
    ``ImageOps.exif_transpose`` does (a view where it can be one)."""
    if orientation == 2:
        return rgb[:, ::-1]
    if orientation == 3:
        return rgb[::-1, ::-1]
    if orientation == 4:
        return rgb[::-1]
    if orientation == 5:
        return rgb.transpose(1, 0, 2)
    if orientation == 6:
        return np.rot90(rgb, -1)
    if orientation == 7:
        return rgb[::-1, ::-1].transpose(1, 0, 2)
    if orientation == 8:
        return np.rot90(rgb, 1)
    return rgb


def finer(photo: Decoded, scale: float, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Decoded:
    """``photo`` decoded again with at least ``scale`` of its pixels (at most all)."""
    if photo.item is None or scale <= photo.scale[0]:
        return photo
    long = max(photo.width, photo.height)
    side = min(long, math.ceil(long * min(1.0, scale)))
    if isinstance(photo.item, np.ndarray):  # the full decode, held
        rgb = reduced(photo.item, side)
        full = rgb is photo.item
        return Decoded(rgb, photo.width, photo.height, None if full else photo.item)
    header = _jpeg_header(photo.item)
    if header is None:
        rgb = to_rgb_array(photo.item, max_pixels)
    else:
        rgb = _decode_at(photo.item, header[0], header[1], side, max_pixels, header[2])
    full = rgb.shape[1] >= photo.width
    return Decoded(rgb, photo.width, photo.height, None if full else photo.item)


def scale_box(box: Box, sx: float, sy: float) -> Box:
    """``box`` (and its landmarks) with x multiplied by ``sx`` and y by ``sy``."""
    marks = None
    if box.landmarks is not None:
        marks = tuple((x * sx, y * sy) for x, y in box.landmarks)
    return Box(
        int(round(box.x * sx)),
        int(round(box.y * sy)),
        max(1, int(round(box.w * sx))),
        max(1, int(round(box.h * sy))),
        box.score,
        marks,
    )


def crop_scale(box: Box, size: int, template: Sequence[Sequence[float]]) -> float:
    """Crop pixels per photo pixel of ``box``'s face aligned to a ``size`` px crop (from its
    landmarks; without them, the box side against the crop side). Above 1 the crop is
    upsampled: decoding the photo at ``that`` scale or more gives the crop all it can use."""
    if box.landmarks is not None and len(box.landmarks) >= len(template):
        try:
            m = similarity_transform(box.landmarks, size, template)
            return float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
        except ValueError:
            pass
    return size / max(1, max(box.w, box.h))
