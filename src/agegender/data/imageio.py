"""Robust image decoding shared by the audit, the cache and the predictor.

Every odd file a user may have is either turned into an RGB uint8 array or rejected with
an :class:`ImageError` whose message is one line: corrupt or truncated JPEGs, text files
named ``.jpg``, grayscale / RGBA / palette / CMYK / 16-bit images, EXIF rotation, and
decompression bombs (more pixels than ``max_pixels``).

HEIC/HEIF (what iPhones save) is read through pillow-heif's Pillow plugin, registered when
this module is imported; AVIF through Pillow's own plugin (Pillow >= 11.3 wheels), else
pillow-heif's where that build has one. Without a decoder such a file is one line saying
what to install, never "cannot identify".
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError, features

#: Default pixel limit (width * height) above which an image is refused as a possible
#: decompression bomb. 64 megapixels covers every camera photo users send.
DEFAULT_MAX_PIXELS = 64_000_000

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
    | {".heic", ".heif", ".hif", ".avif"}
)


def _register_heif() -> tuple[bool, bool]:
    """Register pillow-heif's HEIF opener (and its AVIF opener when Pillow has no AVIF of
    its own and this pillow-heif build offers one). Returns (heif, avif) support."""
    avif = "avif" in features.modules and bool(features.check_module("avif"))  # Pillow >= 11.2
    try:
        import pillow_heif
    except ImportError:
        return False, avif
    pillow_heif.register_heif_opener()
    register_avif = getattr(pillow_heif, "register_avif_opener", None)  # pillow-heif < 1.0
    if not avif and register_avif is not None:
        try:
            register_avif()
            avif = True
        except Exception:  # noqa: BLE001 - a libheif without an AV1 decoder: still no AVIF
            pass
    return True, avif


#: Whether HEIC/HEIF and AVIF files can be decoded here.
HEIF_SUPPORT, AVIF_SUPPORT = _register_heif()

_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_HEIC_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"})
_HEIF_BRANDS = frozenset({b"mif1", b"msf1", b"mif2"})


def heif_kind(head: bytes) -> str | None:
    """``"AVIF"``, ``"HEIC"`` or ``"HEIF"`` when ``head`` (a file's first bytes; 64 are
    plenty) starts with an ISO-BMFF ``ftyp`` box naming one of their brands, else None."""
    if len(head) < 12 or head[4:8] != b"ftyp":
        return None
    end = min(len(head), max(16, int.from_bytes(head[:4], "big")))
    brands = {head[8:12]} | {head[i : i + 4] for i in range(16, end - 3, 4)}
    if brands & _AVIF_BRANDS:
        return "AVIF"
    if brands & _HEIC_BRANDS:
        return "HEIC"
    return "HEIF" if brands & _HEIF_BRANDS else None


def _missing_decoder(kind: str) -> str:
    if kind == "AVIF":
        return (
            "AVIF needs a Pillow with AVIF support (the wheels of Pillow >= 11.3 have it):"
            " pip install -U pillow"
        )
    return f"{kind} needs pillow-heif: pip install pillow-heif"


def _head(src: object) -> bytes | None:
    """The first 64 bytes of a path or a BytesIO (None when they cannot be read)."""
    import io

    try:
        if isinstance(src, io.BytesIO):
            return src.getvalue()[:64]
        with open(src, "rb") as fh:  # type: ignore[arg-type]
            return fh.read(64)
    except (OSError, TypeError, ValueError):
        return None


def _unidentified(src: object) -> str:
    """The one-line reason for a file that no Pillow plugin identified."""
    head = _head(src)
    if head == b"":
        return "not an image: empty file (0 bytes)"
    kind = heif_kind(head or b"")
    if kind is None:
        return "not an image (cannot identify image file)"
    if not (AVIF_SUPPORT if kind == "AVIF" else HEIF_SUPPORT):
        return _missing_decoder(kind)
    return f"corrupt or truncated {kind} image (cannot read its header)"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0].strip() if lines else type(exc).__name__


class ImageError(ValueError):
    """An image that cannot be used; ``str()`` is a one-line reason (without the path)."""


def is_image_name(path: str | Path) -> bool:
    """True when the file name ends like an image (UTKFace's ``.jpg.chip.jpg`` included)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() if arr.size else 0.0
        scale = 255.0 / (65535.0 if hi > 255 else max(hi, 1.0))
        arr8 = np.clip(arr * scale, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def open_image(
    path: str | Path | bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | tuple[int, int] | None = None,
) -> Image.Image:
    """Open, fully decode, EXIF-rotate and convert an image to RGB.

    ``path`` may be a file path or the file's bytes. ``draft_size`` lets the JPEG decoder
    scale down by 2/4/8 while decoding when the result will be resized to at most that size
    (an int for both sides, or ``(width, height)`` in the file's stored orientation: the
    decoded image is at least that large).
    Raises :class:`ImageError` with a one-line reason for anything unusable.
    """
    import io

    src = io.BytesIO(path) if isinstance(path, bytes | bytearray) else path
    fmt: str | None = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(src) as img:
                fmt = img.format
                w, h = img.size
                if w * h > max_pixels:
                    raise ImageError(
                        f"image too large: {w}x{h} = {w * h} pixels > limit {max_pixels}"
                        " (possible decompression bomb)"
                    )
                if w == 0 or h == 0:
                    raise ImageError(f"image has no pixels ({w}x{h})")
                if draft_size and img.format == "JPEG":
                    want = draft_size if isinstance(draft_size, tuple) else (draft_size,) * 2
                    img.draft("RGB", want)
                img.load()
                # in place: the default returns a copy even when nothing turns (a 12 MP
                # photo's decode copied once more for nothing)
                ImageOps.exif_transpose(img, in_place=True)
                return _to_rgb(img)
    except ImageError:
        raise
    except FileNotFoundError as exc:
        raise ImageError("file not found") from exc
    except IsADirectoryError as exc:
        raise ImageError("is a directory, not an image") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(_unidentified(src)) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"decompression bomb: {exc}") from exc
    except (OSError, ValueError, SyntaxError, EOFError, RuntimeError) as exc:
        if fmt in ("HEIF", "AVIF"):  # libheif / libavif: "Invalid input: Unexpected end ..."
            kind = heif_kind(_head(src) or b"") or fmt
            raise ImageError(f"corrupt or truncated {kind} image: {_first_line(exc)}") from exc
        if isinstance(exc, RuntimeError):
            raise
        if isinstance(exc, OSError):
            raise ImageError(f"corrupt or truncated image: {exc}") from exc
        raise ImageError(f"cannot decode image: {exc}") from exc  # PIL plugins raise these too


def header_pixels(item: object) -> int | None:
    """Width x height from the image header of a path or encoded bytes, without decoding
    (None: not an image PIL can identify, or not a path/bytes). A decompression bomb too
    large for PIL to even open reports the pixel count its error names."""
    import io
    import re

    if isinstance(item, bytes | bytearray):
        src: object = io.BytesIO(bytes(item))
    elif isinstance(item, str | Path):
        src = item
    else:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(src) as img:  # type: ignore[arg-type]
                w, h = img.size
                return int(w) * int(h)
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        return int(found.group(1)) if found else None
    except Exception:  # noqa: BLE001 - unreadable: the decoder reports the real reason later
        return None


class PixelBudget:
    """At most ``limit`` image pixels held in memory by concurrent decodes at once.

    ``with budget.hold(pixels):`` waits until the pixels fit; an image larger than the whole
    budget waits until nothing else is held and then runs alone. So a folder of 64 MP PNGs
    is decoded one at a time while ordinary photos still decode in parallel, and peak memory
    stays near ``limit`` x ~10 bytes whatever the inputs.
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(1, int(limit))
        self.held = 0
        self.peak = 0  # the most pixels ever held at once (for tests and benchmarks)
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, pixels: int | None) -> Iterator[None]:
        need = min(max(0, int(pixels or 0)), self.limit)
        with self._cond:
            self._cond.wait_for(lambda: self.held == 0 or self.held + need <= self.limit)
            self.held += need
            self.peak = max(self.peak, self.held)
        try:
            yield
        finally:
            with self._cond:
                self.held -= need
                self._cond.notify_all()
            if need >= TRIM_PIXELS:
                _trim_heap()


#: After an image this large is done, freed heap memory is handed back to the OS: glibc
#: otherwise keeps it in the decode thread's arena, so each thread would hold a big image's
#: worth of memory for good (measured: 8 x 64 MP PNGs, peak RSS 1.2 GB without, see
#: benchmarks/predict_memory.py).
TRIM_PIXELS = 8_000_000


def _trim_heap() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def load_rgb(path: str | Path | bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image to an ``(H, W, 3)`` uint8 RGB array (see :func:`open_image`)."""
    return np.asarray(open_image(path, max_pixels=max_pixels))


Crop = tuple[float, float, float, float]


def load_resized(
    path: str | Path,
    size: int,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    crop: Crop | None = None,
) -> np.ndarray:
    """Decode, cut ``crop`` (``x0, y0, x1, y1`` as fractions of the width and height, e.g.
    the face box of an aligned dataset whose crops are looser than the training framing)
    and resize (bilinear, antialiased) to ``(size, size, 3)`` uint8 RGB."""
    img = open_image(path, max_pixels=max_pixels, draft_size=None if crop else size)
    if crop is not None:
        w, h = img.size
        x0, y0, x1, y1 = crop
        img = img.crop((round(x0 * w), round(y0 * h), round(x1 * w), round(y1 * h)))
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    return np.asarray(img)
