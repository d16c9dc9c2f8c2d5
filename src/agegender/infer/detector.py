"""Face detection for the predictor: OpenCV's bundled Haar cascades, MediaPipe's BlazeFace
(:mod:`agegender.infer.blazeface`, optional packages), or ``none``.

The Haar detector runs on a grayscale copy scaled down so its long side is at most
``detect_size`` pixels (detection cost grows with the pixel count, and faces big enough to
classify are still found there), then maps the boxes back to the full image. Its score is
the cascade's level weight (``detectMultiScale3`` with ``outputRejectLevels=True``): the sum
of the last stage's weak classifiers, an unbounded confidence where larger is surer (values
of about 3 to 10 for clear frontal faces). The ``none`` detector treats the whole image as
one face with score 1.0, for photos that are already face crops (UTKFace, Adience).

:func:`crop_face` cuts a square around a box with a margin (see :data:`DEFAULT_MARGIN` for
the framing that matches the training faces), moved to stay inside the
image where it fits and padded (edge pixels repeated) where it does not.
"""

from __future__ import annotations

import functools
import queue
from pathlib import Path
from typing import TYPE_CHECKING, Union

import cv2
import numpy as np

from agegender.infer.boxes import Box

DETECTORS = ("blazeface", "blazeface_128", "blazeface_full", "haar", "none")
#: The detector ``predict``, the service, ``evaluate`` and the benchmarks use by default:
#: BlazeFace finds 100 % of FairFace-540's photos and 19/19 Adience photos where Haar finds
#: 82.6 % and 17/19, at 3-4 ms per photo instead of 20-26 (README, design section); run
#: over an image pyramid it also finds the small faces of group photos
#: (benchmarks/group_photos.md).
DEFAULT_DETECTOR = "blazeface"

#: How a Haar box becomes a crop framed like UTKFace's aligned faces (the training data):
#: on UTKFace faces padded into larger images the frontal cascade's box is as wide as the
#: dataset's crop (median ratio 0.98) and its centre sits 8.5% of the box above the crop's.
#: So the default crop is the box itself (margin 0 on each side, as a fraction of the box
#: size) moved down by 0.08 of its height. A quickly trained small_cnn scored 0.79 gender
#: accuracy on 400 held-out UTKFace crops, 0.75-0.79 through Haar with this framing, and
#: 0.54 with a 0.4 margin: framing that differs from training costs more than anything.
#: Models trained on wider crops record ``crop_margin`` / ``crop_shift`` in their meta.
DEFAULT_MARGIN = 0.0
DEFAULT_SHIFT = 0.08

#: Long side of the image the cascade sees. With ``min_size`` 20 the smallest face found is
#: 1/8 of the photo's long side: fine for portraits and small groups, and fast (about
#: 10-20 ms per photo on one core). Raise it (e.g. 320 or 640) for crowds of small faces.
DEFAULT_DETECT_SIZE = 160
#: When nothing is found at ``detect_size``, the cascade looks once more at up to this long
#: side (only for larger images). On the 19 Adience sample photos, 160 px alone missed 3
#: large, clear faces that 250 px found; the retry costs time only on photos without a face.
DEFAULT_RETRY_SIZE = 400


class NoneDetector:
    """The whole image is one face (for pre-cropped face photos)."""

    name = "none"
    margin = 0.0
    shift = 0.0

    def detect(self, rgb: np.ndarray) -> list[Box]:
        h, w = rgb.shape[:2]
        return [Box(0, 0, int(w), int(h), 1.0)]


def _cascade_path(name: str) -> str:
    path = Path(cv2.data.haarcascades) / name
    if not path.is_file():
        raise FileNotFoundError(f"OpenCV Haar cascade {name} not found in {path.parent}")
    return str(path)


class HaarDetector:
    """OpenCV Haar cascade face detector, safe to call from several threads at once.

    ``detect_size`` caps the long side of the image the cascade sees; ``min_size`` is the
    smallest face in pixels at that scale (so faces under ``min_size / detect_size`` of the
    long side are not looked for); ``scale_factor`` and ``min_neighbors`` go to
    ``detectMultiScale3`` (defaults tuned on UTKFace faces pasted into 250x250 photos:
    about 93% found, 1/3 of the time of detecting at full size); ``profile`` also runs the
    profile-face cascade (both directions) and merges its boxes with non-maximum suppression.
    ``retry_size``: when nothing is found, look once more with the long side at up to this
    many pixels (None: no retry).
    """

    name = "haar"

    def __init__(
        self,
        *,
        detect_size: int = DEFAULT_DETECT_SIZE,
        scale_factor: float = 1.1,
        min_neighbors: int = 3,
        min_size: int = 20,
        retry_size: int | None = DEFAULT_RETRY_SIZE,
        margin: float = DEFAULT_MARGIN,
        shift: float = DEFAULT_SHIFT,
        profile: bool = False,
        cascade: str = "haarcascade_frontalface_default.xml",
    ) -> None:
        if detect_size < 32:
            raise ValueError(f"detect_size must be >= 32, got {detect_size}")
        if scale_factor <= 1.0:
            raise ValueError(f"scale_factor must be > 1, got {scale_factor}")
        self.detect_size = detect_size
        self.retry_size = retry_size
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_size = min_size
        self.margin = margin
        self.shift = shift
        self.profile = profile
        self._paths = [_cascade_path(cascade)]
        if profile:
            self._paths.append(_cascade_path("haarcascade_profileface.xml"))
        # Loading a cascade takes tens of ms and one instance must not run in two threads
        # at once: keep a pool of loaded instances, one per concurrent caller.
        self._pool: queue.SimpleQueue[list[cv2.CascadeClassifier]] = queue.SimpleQueue()
        self._pool.put(self._load())  # fail early on a broken OpenCV install

    def _load(self) -> list[cv2.CascadeClassifier]:
        cascades = [cv2.CascadeClassifier(p) for p in self._paths]
        if any(c.empty() for c in cascades):
            raise RuntimeError(f"cannot load Haar cascades {self._paths}")
        return cascades

    def _run(self, cascade: cv2.CascadeClassifier, gray: np.ndarray) -> tuple[np.ndarray, ...]:
        rects, _levels, weights = cascade.detectMultiScale3(
            gray,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(self.min_size, self.min_size),
            outputRejectLevels=True,
        )
        rects = np.asarray(rects, dtype=np.float64).reshape(-1, 4)
        weights = np.asarray(weights, dtype=np.float64).reshape(-1)
        return rects, weights

    def detect(self, rgb: np.ndarray) -> list[Box]:
        """Boxes ``(x, y, w, h, score)`` in ``rgb``'s pixel coordinates, best score first."""
        h, w = rgb.shape[:2]
        full = rgb if rgb.ndim == 2 else cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        sizes = [self.detect_size]
        if self.retry_size and self.retry_size > self.detect_size and max(h, w) > self.detect_size:
            sizes.append(min(self.retry_size, max(h, w)))
        try:
            cascades = self._pool.get_nowait()
        except queue.Empty:
            cascades = self._load()
        try:
            for side in sizes:
                scale = min(1.0, side / max(h, w))
                gray = full
                if scale < 1.0:
                    size = (max(1, round(w * scale)), max(1, round(h * scale)))
                    gray = cv2.resize(full, size, interpolation=cv2.INTER_AREA)
                boxes = self._detect(cascades, gray, scale, w, h)
                if boxes:
                    return boxes
            return []
        finally:
            self._pool.put(cascades)

    def _detect(
        self, cascades: list[cv2.CascadeClassifier], gray: np.ndarray, scale: float, w: int, h: int
    ) -> list[Box]:
        frontal, *profile = cascades
        rects, scores = self._run(frontal, gray)
        if profile:
            flipped = np.ascontiguousarray(gray[:, ::-1])
            gw = gray.shape[1]
            r1, s1 = self._run(profile[0], gray)
            r2, s2 = self._run(profile[0], flipped)
            r2[:, 0] = gw - r2[:, 0] - r2[:, 2]
            rects = np.concatenate([rects, r1, r2])
            scores = np.concatenate([scores, s1, s2])
            keep = (
                cv2.dnn.NMSBoxes(rects.tolist(), scores.tolist(), -1e9, 0.3) if len(rects) else []
            )
            keep = np.asarray(keep, dtype=np.int64).reshape(-1)
            rects, scores = rects[keep], scores[keep]
        boxes = []
        for (x, y, bw, bh), s in zip(rects / scale, scores, strict=True):
            x0, y0 = max(0, round(x)), max(0, round(y))
            x1, y1 = min(w, round(x + bw)), min(h, round(y + bh))
            if x1 > x0 and y1 > y0:
                boxes.append(Box(int(x0), int(y0), int(x1 - x0), int(y1 - y0), float(s)))
        boxes.sort(key=lambda b: -b.score)
        return boxes


if TYPE_CHECKING:
    from agegender.infer.blazeface import BlazeFaceDetector

Detector = Union[HaarDetector, NoneDetector, "BlazeFaceDetector"]


#: What each detector returns and how fast it is (``agegender detectors``). Speeds: median
#: ms per photo on one core of this project's 2-core CPU, measured while other jobs ran
#: (FairFace 448x448 / CelebA 89x109 photos).
DETECTOR_INFO: dict[str, dict[str, str]] = {
    "blazeface": {
        "returns": "box + 6 landmarks (eyes, nose tip, mouth, ears); faces are aligned",
        "speed": "one-face photos about as blazeface_128 (5.5 vs 5.4 ms, FairFace 448 px); "
        "group photos 0.52 s (median, 640x480 to 4000x3000), 12 MP portraits 64 ms, one core "
        "(benchmarks/group_photos.md, 2026-12-07)",
        "notes": "BlazeFace short range over an image pyramid: the whole photo at 128 px, "
        "then the network over the whole photo at finer scales (down to 24 px faces, at most "
        "2000 px on the long side; one more at 3000 px for a crowd in a bigger photo), "
        "stopped once faces down to half the largest sure face are found (portraits); each "
        "scale's detections merged on their own, then across scales; middling ones checked "
        "again by the short-range model and MediaPipe's face-mesh presence score; in photos "
        "over 512 px each face re-read in a view of its own and its mirror image; each scale "
        "reads the coarsest JPEG decode it needs (benchmarks/group_photos.md)",
    },
    "blazeface_128": {
        "returns": "box + 6 landmarks; faces are aligned",
        "speed": "3.7 ms (448 px), 2.5 ms (89x109)",
        "notes": "MediaPipe BlazeFace short range on the whole photo at 128 px only (the "
        "default until 2026-12-07): faces under about 1/7 of the long side are missed",
    },
    "blazeface_full": {
        "returns": "box + 6 landmarks; faces are aligned",
        "speed": "10 ms (448 px)",
        "notes": "short + full range merged: a lone face of 64 px in a 640x480 photo found "
        "55 % of the time (short range alone: 0 %), 96 px 87 % (43 %), 48 px 23 % (0 %)",
    },
    "haar": {
        "returns": "box",
        "speed": "26 ms (448 px), 10 ms (89x109)",
        "notes": "OpenCV's frontal Haar cascade; misses turned, tilted and tightly cropped faces",
    },
    "none": {
        "returns": "the whole image",
        "speed": "0 ms",
        "notes": "for photos that are already face crops",
    },
}


def detection_side(detector: Detector) -> int | None:
    """The long side (px) a photo needs for ``detector`` to see all it looks at (None: the
    whole photo): the predictor decodes a large JPEG at the coarsest scale that keeps it
    (:mod:`agegender.infer.decode`)."""
    if isinstance(detector, NoneDetector):
        return None
    if isinstance(detector, HaarDetector):
        return max(detector.detect_size, detector.retry_size or 0)
    if getattr(detector, "pyramid", False):
        from agegender.infer.blazeface import FIRST_DECODE_SIDE

        # the first decode; a finer level decodes finer (BlazeFaceDetector.detect_scaled)
        return min(int(detector.detect_size), FIRST_DECODE_SIDE)  # type: ignore[union-attr]
    size = getattr(detector, "input_size", None)
    return 4 * int(size) if size else None


def check_detector(name: str) -> str:
    """``name`` if it is a registered detector, else a ValueError listing them."""
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; choose one of {', '.join(DETECTORS)}")
    return name


def make_detector(name: str | Detector = "haar", **kwargs: object) -> Detector:
    """Build a detector by name: ``haar`` (kwargs go to :class:`HaarDetector`),
    ``blazeface`` (the pyramid), ``blazeface_128`` (one 128 px pass) or ``blazeface_full``
    (short + full range), whose kwargs go to
    :class:`agegender.infer.blazeface.BlazeFaceDetector`, or ``none``."""
    if not isinstance(name, str):
        return name
    if name == "haar":
        return HaarDetector(**kwargs)  # type: ignore[arg-type]
    if name in ("blazeface", "blazeface_128", "blazeface_full"):
        from agegender.infer.blazeface import BlazeFaceDetector

        if name == "blazeface":
            kwargs = {"pyramid": True, **kwargs}
        elif name == "blazeface_full":
            kwargs = {"model": "auto", **kwargs}
        detector = BlazeFaceDetector(**kwargs)  # type: ignore[arg-type]
        detector.name = name
        return detector
    check_detector(name)
    return NoneDetector()


@functools.lru_cache(maxsize=8)
def shared_detector(name: str) -> Detector:
    """One detector per name in this process (detectors are thread-safe), for batch jobs
    such as evaluation and caching that call the face path image by image."""
    return make_detector(name)


def crop_face(
    rgb: np.ndarray,
    box: Box | tuple[int, int, int, int],
    margin: float = DEFAULT_MARGIN,
    shift: float = 0.0,
) -> np.ndarray:
    """A square crop around ``box`` grown by ``margin`` of its size on each side, its centre
    moved down by ``shift`` of the box height.

    The square is shifted to lie inside the image when it fits; parts that cannot fit are
    filled by repeating the edge pixels. Returns an ``(S, S, 3)`` uint8 array.
    """
    x, y, w, h = box.as_tuple() if isinstance(box, Box) else box
    ih, iw = rgb.shape[:2]
    side = max(1, round(max(w, h) * (1.0 + 2.0 * margin)))
    cx, cy = x + w / 2.0, y + h / 2.0 + shift * h
    x0, y0 = round(cx - side / 2.0), round(cy - side / 2.0)
    # Shift inside the image along each axis where the square fits.
    if side <= iw:
        x0 = min(max(x0, 0), iw - side)
    if side <= ih:
        y0 = min(max(y0, 0), ih - side)
    x1, y1 = x0 + side, y0 + side
    crop = rgb[max(y0, 0) : min(y1, ih), max(x0, 0) : min(x1, iw)]
    pad = (max(0, -y0), max(0, y1 - ih), max(0, -x0), max(0, x1 - iw))
    if any(pad):
        crop = cv2.copyMakeBorder(crop, *pad, borderType=cv2.BORDER_REPLICATE)
    return np.ascontiguousarray(crop)
