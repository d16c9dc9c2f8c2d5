"""Faces in videos: frames through the photo face path, faces tracked across frames, one
summary per tracked face.

>>> from agegender import Predictor
>>> from agegender.infer.video import predict_video
>>> video = predict_video(Predictor.load(), "clip.mp4", every=5, max_frames=1000)
>>> for frame in video:  # one FrameResult per predicted frame, in order
...     print(frame.frame, frame.time, list(zip(frame.track_ids, frame.faces)))
>>> [(t.track_id, t.gender, t.age, t.first_time, t.last_time) for t in video.tracks]
>>> video.error  # None, or why reading stopped early (a truncated or corrupt file)

**Frames** are read with OpenCV's FFmpeg (``cv2.VideoCapture(path, cv2.CAP_FFMPEG)``: mp4,
mkv, avi, mov, webm ... whatever its FFmpeg decodes), every ``every``-th frame and at most
``max_frames`` of them, and go as RGB arrays through :meth:`Predictor.predict_iter`: the
same detect -> align -> batched classifier path as photos. Times are the frames'
timestamps (seconds).

**Tracking** (:class:`FaceTracker`): each frame's faces are matched to the tracks of the
frames before by one optimal assignment (the Hungarian method, scipy's
``linear_sum_assignment``) on the overlap (IoU) of each face with where its track is
expected (its last box moved by its smoothed velocity), falling back to the distance of the
centres, in face sizes, for faces that moved further than their size between two predicted
frames (``every`` > 1, fast motion). A face that matches no track starts one; a track
unmatched for more than ``max_gap`` frames (1 s of video, and at least two predicted
frames) ends. Why not a library: supervision removed its ByteTrack in 0.31 (deprecated since
0.28), its successor (Roboflow's ``trackers``) needs the GUI build ``opencv-python``, which
clashes with the ``opencv-python-headless`` this package uses, and norfair pins numpy < 2;
and what ByteTrack adds (a second pass over low-score detections, a Kalman filter) buys
little here: the face detector keeps only confident faces, found in nearly every frame,
and faces seldom overlap.

**Per track** (:class:`TrackSummary`): first and last frame and time, frames seen, gender
from the mean log-odds of its frames' P(female) compared with the model's threshold as a
log-odds (through :func:`agegender.readout.gender_labels`, the one place the decision is
made), ``confidence``: the share of its frames whose own decision is the track's, and age
as the median of its frames' ages.

Rows (:func:`frame_rows`, :meth:`TrackSummary.to_row`, :func:`video_row`; columns
:func:`agegender.infer.outputs.video_columns`): ``kind`` ``frame`` (a face in a frame),
``track`` (one per track, when the video ends) and ``video`` (one per video: the frames
predicted and, when reading stopped early, the reason in ``error``).
:func:`predict_video_job` writes them (CSV, JSON, Parquet) for ``agegender predict
clip.mp4``.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from agegender.data.records import AGE_GROUP_NAMES, age_to_group
from agegender.infer.parquet import DEFAULT_PART_SIZE
from agegender.infer.predictor import Predictor, PredictorConfig
from agegender.infer.results import FaceResult, ImageResult
from agegender.readout import gender_labels

#: File names taken as videos by ``agegender predict`` (any other name is a photo).
VIDEO_SUFFIXES = frozenset(
    {
        ".mp4",
        ".m4v",
        ".mov",
        ".mkv",
        ".webm",
        ".avi",
        ".wmv",
        ".flv",
        ".mpg",
        ".mpeg",
        ".ts",
        ".mts",
        ".m2ts",
        ".3gp",
        ".ogv",
    }
)
#: ``--annotate`` video files: the OpenCV writer's codec for each suffix.
ANNOTATE_CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}
#: Faces per classifier pass for videos (see :class:`VideoPrediction`).
VIDEO_BATCH = 8
#: P(female) is clipped to [EPS, 1 - EPS] before its log-odds (|log-odds| <= 13.8).
EPS = 1e-6
_NO_FACE = "no face found"


class VideoError(ValueError):
    """A video that cannot be read (or an annotated video that cannot be written); ``str()``
    is one line that starts with the file."""


def is_video_name(path: str | os.PathLike) -> bool:
    """A file name with a video suffix (``.mp4``, ``.mkv``, ``.avi``, ``.mov`` ...)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def _capture(path: str | os.PathLike) -> Any:
    """``cv2.VideoCapture`` on FFmpeg. FFmpeg's and OpenCV's log lines (``moov atom not
    found``) are silenced, so a bad file is one line of ours (unless ``AGEGENDER_DEBUG`` or
    ``OPENCV_FFMPEG_LOGLEVEL`` is set; OpenCV reads it at its first FFmpeg capture)."""
    if os.environ.get("AGEGENDER_DEBUG"):
        return cv2.VideoCapture(os.fspath(path), cv2.CAP_FFMPEG)
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    logging = cv2.utils.logging
    level = logging.getLogLevel()
    logging.setLogLevel(logging.LOG_LEVEL_ERROR)  # "can't be used to capture by name"
    try:
        return cv2.VideoCapture(os.fspath(path), cv2.CAP_FFMPEG)
    finally:
        logging.setLogLevel(level)


@dataclass(frozen=True)
class VideoInfo:
    """What a video says about itself (``fps`` 0: unknown; ``frame_count``: as declared
    by its container, FFmpeg's estimate for some, 0 when unknown)."""

    path: str
    width: int
    height: int
    fps: float
    frame_count: int


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Open ``path`` and decode its first frame, or raise :class:`VideoError` (one line):
    a missing or empty file, a file that is no video FFmpeg reads (text, a photo), a video
    whose first frame does not decode."""
    name = os.fspath(path)
    p = Path(name)
    if not p.exists():
        raise VideoError(f"{name}: no such file")
    if p.is_dir():
        raise VideoError(f"{name}: is a folder, not a video")
    if p.stat().st_size == 0:
        raise VideoError(f"{name}: empty file (0 bytes), not a video")
    cap = _capture(name)
    try:
        if not cap.isOpened():
            raise VideoError(
                f"{name}: OpenCV's FFmpeg cannot open it as a video (not a video, or "
                "truncated or corrupt)"
            )
        ok, bgr = cap.read()
        if not ok or bgr is None:
            raise VideoError(f"{name}: no frame could be decoded (corrupt or not a video)")
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        count = float(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0.0)
    finally:
        cap.release()
    fps = fps if math.isfinite(fps) and 0 < fps < 1000 else 0.0
    count = int(count) if math.isfinite(count) and count > 0 else 0
    return VideoInfo(name, int(bgr.shape[1]), int(bgr.shape[0]), fps, count)


class VideoReader:
    """The frames to predict: ``(index, time in s or None, RGB array)`` for every
    ``every``-th frame from the first, at most ``max_frames`` of them. After iterating,
    ``frames_read`` (frames decoded), ``frames`` (frames yielded) and ``error`` (``None``,
    or why the video ended before its declared length: truncated or corrupt)."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        every: int = 1,
        max_frames: int | None = None,
        info: VideoInfo | None = None,
    ) -> None:
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"max_frames must be at least 1, got {max_frames}")
        self.info = info or probe_video(path)
        self.path = self.info.path
        self.every, self.max_frames = int(every), max_frames
        self.frames_read = self.frames = 0
        self.error: str | None = None

    def expected_frames(self) -> int | None:
        """How many frames :meth:`__iter__` will yield, as far as the container says."""
        n = self.info.frame_count
        todo = -(-n // self.every) if n else None
        if self.max_frames is None:
            return todo
        return self.max_frames if todo is None else min(todo, self.max_frames)

    def _time(self, cap: Any, index: int) -> float | None:
        ms = float(cap.get(cv2.CAP_PROP_POS_MSEC))
        if math.isfinite(ms) and (ms > 0 or index == 0):
            return round(ms / 1000.0, 6)
        return round(index / self.info.fps, 6) if self.info.fps else None

    def __iter__(self) -> Iterator[tuple[int, float | None, np.ndarray]]:
        cap = _capture(self.path)
        if not cap.isOpened():
            self.error = "the video could no longer be opened"
            return
        try:
            index = -1
            while self.max_frames is None or self.frames < self.max_frames:
                if not cap.grab():  # decodes; only the frames we keep are converted
                    self._check_length()
                    return
                index += 1
                self.frames_read = index + 1
                if index % self.every:
                    continue
                ok, bgr = cap.retrieve()
                if not ok or bgr is None:
                    self.error = f"frame {index} could not be decoded; stopped there"
                    return
                t = self._time(cap, index)
                self.frames += 1
                yield index, t, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        finally:
            cap.release()

    def _check_length(self) -> None:
        """At the end of the stream: an error when it came well before the declared end."""
        declared = self.info.frame_count
        if declared and self.frames_read < declared - max(2, declared // 100):
            self.error = (
                f"the video ends after {self.frames_read} of its {declared} frames "
                "(truncated or corrupt); the frames read are kept"
            )


# ------------------------------------------------------------------------------ tracking


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (m, 4) with every box in ``b`` (n, 4), boxes as x, y, w, h."""
    ax2, ay2 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3]
    bx2, by2 = b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.minimum(ax2[:, None], bx2[None]) - np.maximum(a[:, 0][:, None], b[:, 0][None])
    ih = np.minimum(ay2[:, None], by2[None]) - np.maximum(a[:, 1][:, None], b[:, 1][None])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None] - inter
    return inter / np.maximum(union, 1e-9)


@dataclass
class _Track:
    track_id: int
    box: np.ndarray  # x, y, w, h of its last face
    frame: int  # the frame of its last face
    velocity: np.ndarray | None = None  # its centre's motion per frame (smoothed)

    def expected(self, frame: int) -> np.ndarray:
        if self.velocity is None:
            return self.box
        box = self.box.copy()
        box[:2] += self.velocity * (frame - self.frame)
        return box


class FaceTracker:
    """Gives each face in a frame a track id: faces matched to the tracks of the frames
    before by one optimal assignment on IoU (``min_iou``) with each track's expected box,
    else on the distance of the centres (at most ``max_distance`` face sizes, sizes within
    ``max_scale``); a track unmatched for more than ``max_gap`` frames ends. Ids count
    from 1, in order of appearance, and are never reused."""

    def __init__(
        self,
        *,
        min_iou: float = 0.3,
        max_distance: float = 0.75,
        max_scale: float = 1.5,
        max_gap: int = 30,
        smoothing: float = 0.5,
    ) -> None:
        self.min_iou, self.max_distance, self.max_scale = min_iou, max_distance, max_scale
        self.max_gap = max(1, int(max_gap))
        self.smoothing = smoothing  # weight of the newest motion in the velocity
        self.tracks: dict[int, _Track] = {}
        self._next_id = 1

    def _cost(self, expected: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Matching cost, tracks x faces: 1 - IoU where they overlap enough, else 1 +
        the centre distance in face sizes where it is small enough, else infinity."""
        iou = box_iou(expected, boxes)
        size_e = np.sqrt(np.maximum(expected[:, 2] * expected[:, 3], 1e-9))
        size_b = np.sqrt(np.maximum(boxes[:, 2] * boxes[:, 3], 1e-9))
        centre_e = expected[:, :2] + expected[:, 2:] / 2
        centre_b = boxes[:, :2] + boxes[:, 2:] / 2
        dist = np.linalg.norm(centre_e[:, None] - centre_b[None], axis=2)
        dist = dist / ((size_e[:, None] + size_b[None]) / 2)
        scale = np.maximum(size_e[:, None] / size_b[None], size_b[None] / size_e[:, None])
        near = (dist <= self.max_distance) & (scale <= self.max_scale)
        return np.where(iou >= self.min_iou, 1 - iou, np.where(near, 1 + dist, np.inf))

    def update(self, frame: int, boxes: Sequence[Sequence[float]]) -> list[int]:
        """The track id of each box (x, y, w, h) found in ``frame`` (frames in order)."""
        from scipy.optimize import linear_sum_assignment

        for tid in [t for t, tr in self.tracks.items() if frame - tr.frame > self.max_gap]:
            del self.tracks[tid]
        found = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        ids = [0] * len(found)
        live = list(self.tracks.values())
        if live and len(found):
            expected = np.stack([t.expected(frame) for t in live])
            cost = self._cost(expected, found)
            big = 1e9  # linear_sum_assignment needs finite costs; these are never kept
            rows, cols = linear_sum_assignment(np.where(np.isfinite(cost), cost, big))
            for r, c in zip(rows, cols, strict=True):
                if np.isfinite(cost[r, c]):
                    self._move(live[r], frame, found[c])
                    ids[c] = live[r].track_id
        for c, box in enumerate(found):
            if not ids[c]:
                track = _Track(self._next_id, box.copy(), frame)
                self.tracks[track.track_id] = track
                ids[c] = track.track_id
                self._next_id += 1
        return ids

    def _move(self, track: _Track, frame: int, box: np.ndarray) -> None:
        step = (box[:2] + box[2:] / 2 - track.box[:2] - track.box[2:] / 2) / max(
            1, frame - track.frame
        )
        a = self.smoothing
        track.velocity = step if track.velocity is None else a * step + (1 - a) * track.velocity
        track.box, track.frame = box.copy(), frame


# -------------------------------------------------------------------------- per track


@dataclass
class TrackSummary:
    """One tracked face over the video. ``p_female``: the sigmoid of its frames' mean
    log-odds of P(female) (``gender`` is that mean against the model's threshold as a
    log-odds); ``confidence``: the share of its frames whose own gender is ``gender``;
    ``age``: the median of its frames' ages, ``age_group`` that age's group."""

    source: str
    track_id: int
    first_frame: int
    last_frame: int
    first_time: float | None
    last_time: float | None
    frames_seen: int
    p_female: float | None = None
    p_male: float | None = None
    gender: str | None = None
    confidence: float | None = None
    age: float | None = None
    age_group: str | None = None

    def to_row(self, ndigits: int = 6) -> dict[str, Any]:
        """The track's ``kind=track`` row."""

        def r(v: float | None) -> float | None:
            return None if v is None else round(float(v), ndigits)

        return {
            "path": self.source,
            "kind": "track",
            "track_id": self.track_id,
            "p_female": r(self.p_female),
            "p_male": r(self.p_male),
            "gender": self.gender,
            "age": r(self.age),
            "age_group": self.age_group,
            "first_frame": self.first_frame,
            "last_frame": self.last_frame,
            "first_time": r(self.first_time),
            "last_time": r(self.last_time),
            "frames_seen": self.frames_seen,
            "confidence": r(self.confidence),
            "error": None,
        }


@dataclass
class _TrackFrames:
    first_frame: int
    first_time: float | None
    last_frame: int = 0
    last_time: float | None = None
    frames: int = 0
    p_female: list[float] = field(default_factory=list)
    ages: list[float] = field(default_factory=list)

    def add(self, frame: int, t: float | None, face: FaceResult) -> None:
        self.last_frame, self.last_time = frame, t
        self.frames += 1
        if face.p_female is not None:
            self.p_female.append(face.p_female)
        if face.age is not None:
            self.ages.append(face.age)


def summarize_track(
    source: str, track_id: int, frames: _TrackFrames, threshold: float
) -> TrackSummary:
    """The summary of one track's frames (gender decided at the model's ``threshold``)."""
    s = TrackSummary(
        source,
        track_id,
        frames.first_frame,
        frames.last_frame,
        frames.first_time,
        frames.last_time,
        frames.frames,
    )
    if frames.p_female:
        from scipy.special import expit, logit

        p = np.clip(np.asarray(frames.p_female, dtype=np.float64), EPS, 1 - EPS)
        mean_log_odds = float(np.mean(logit(p)))
        # gender_labels compares a score with a threshold; here both are log-odds
        female = int(gender_labels(mean_log_odds, float(logit(threshold))))
        s.p_female = float(expit(mean_log_odds))
        s.p_male = 1.0 - s.p_female
        s.gender = "female" if female == 1 else "male"
        s.confidence = float(np.mean(gender_labels(p, threshold) == female))
    if frames.ages:
        s.age = float(np.median(frames.ages))
        s.age_group = AGE_GROUP_NAMES[age_to_group(s.age)]  # type: ignore[index]
    return s


# ----------------------------------------------------------------------- frames


@dataclass
class FrameResult:
    """One predicted frame: its faces (as for a photo) and each face's track id.
    ``image``: the RGB frame (only with ``keep_frames``, e.g. to draw on it)."""

    source: str
    frame: int
    time: float | None
    faces: list[FaceResult] = field(default_factory=list)
    track_ids: list[int] = field(default_factory=list)
    error: str | None = None
    image: np.ndarray | None = field(default=None, repr=False, compare=False)


def frame_rows(frame: FrameResult, ndigits: int = 6) -> list[dict[str, Any]]:
    """The ``kind=frame`` rows of one frame: one per face (none for a frame without one;
    one with ``error`` for a frame the face path failed on)."""
    t = None if frame.time is None else round(frame.time, ndigits)
    base = {"path": frame.source, "kind": "frame", "frame": frame.frame, "time": t}
    if frame.error is not None:
        return [{**base, "error": frame.error}]
    rows = []
    for face, track in zip(frame.faces, frame.track_ids, strict=True):
        d = face.to_dict(ndigits)
        x, y, w, h = face.box
        row = {
            **base,
            "track_id": track,
            "x": x,
            "y": y,
            "w": w,
            "h": h,
            "detector_score": d["detector_score"],
            "p_female": d["p_female"],
            "p_male": d["p_male"],
            "gender": face.gender,
            "age": d["age"],
            "age_group": face.age_group,
            "error": None,
        }
        for name, prob in (d["age_group_probs"] or {}).items():
            row[f"p_age_{name}"] = prob
        rows.append(row)
    return rows


class VideoPrediction:
    """Iterate it once for the :class:`FrameResult` of each predicted frame; then
    ``tracks`` holds one :class:`TrackSummary` per track (also when the iteration was
    stopped early: the frames seen so far), ``error`` why reading stopped early (``None``
    when the video was read to its end or to ``max_frames``), ``frames_read`` and
    ``frames``. Made by :func:`predict_video`.

    ``batch_size``: faces per classifier pass (default :data:`VIDEO_BATCH`, not the
    predictor's 64): a frame comes out once its faces are classified, so a small batch keeps
    few frames waiting (and held in memory with ``keep_frames``); the classifier's cost a
    face hardly changes with the batch (measured: 1.8 to 2.0 ms from 4 to 64 here)."""

    def __init__(
        self,
        predictor: Predictor,
        path: str | os.PathLike,
        *,
        every: int = 1,
        max_frames: int | None = None,
        tracker: FaceTracker | None = None,
        keep_frames: bool = False,
        info: VideoInfo | None = None,
        batch_size: int = 0,
    ) -> None:
        self.predictor = predictor
        self.batch_size = batch_size or VIDEO_BATCH
        self.reader = VideoReader(path, every=every, max_frames=max_frames, info=info)
        self.info = self.reader.info
        w, h = self.info.width, self.info.height
        if w * h > predictor.max_pixels:
            raise VideoError(
                f"{self.info.path}: frames of {w}x{h} = {w * h} pixels are over the limit "
                f"of {predictor.max_pixels}"
            )
        if tracker is None:  # a track ends after 1 s unseen, and at least 2 predicted frames
            gap = round(self.info.fps) if self.info.fps else 30
            tracker = FaceTracker(max_gap=max(gap, 2 * self.reader.every))
        self.tracker = tracker
        self.keep_frames = keep_frames
        self.tracks: list[TrackSummary] = []
        self._frames: dict[int, _TrackFrames] = {}
        self._started = False

    @property
    def source(self) -> str:
        return self.info.path

    @property
    def error(self) -> str | None:
        return self.reader.error

    @property
    def frames_read(self) -> int:
        return self.reader.frames_read

    @property
    def frames(self) -> int:
        return self.reader.frames

    def expected_frames(self) -> int | None:
        return self.reader.expected_frames()

    def __iter__(self) -> Iterator[FrameResult]:
        if self._started:
            raise RuntimeError("a VideoPrediction is iterated once; call predict_video again")
        self._started = True
        pending: deque[tuple[int, float | None, np.ndarray | None]] = deque()

        def arrays() -> Iterator[np.ndarray]:
            for index, t, rgb in self.reader:
                pending.append((index, t, rgb if self.keep_frames else None))
                yield rgb

        try:
            for result in self.predictor.predict_iter(arrays(), batch_size=self.batch_size):
                index, t, rgb = pending.popleft()
                yield self._track(result, index, t, rgb)
        finally:
            threshold = self.predictor.spec.gender_threshold
            self.tracks = [
                summarize_track(self.source, tid, frames, threshold)
                for tid, frames in sorted(self._frames.items())
            ]

    def _track(
        self, result: ImageResult, index: int, t: float | None, rgb: np.ndarray | None
    ) -> FrameResult:
        frame = FrameResult(self.source, index, t, image=rgb)
        if result.error is not None and result.error != _NO_FACE:
            frame.error = result.error
        frame.faces = list(result.faces)
        frame.track_ids = self.tracker.update(index, [f.box for f in frame.faces])
        for face, tid in zip(frame.faces, frame.track_ids, strict=True):
            self._frames.setdefault(tid, _TrackFrames(index, t)).add(index, t, face)
        return frame


def predict_video(
    predictor: Predictor,
    path: str | os.PathLike,
    *,
    every: int = 1,
    max_frames: int | None = None,
    tracker: FaceTracker | None = None,
    keep_frames: bool = False,
) -> VideoPrediction:
    """Predict the faces in every ``every``-th frame of a video (at most ``max_frames``
    frames) and track them: iterate the result for each frame's :class:`FrameResult`, then
    read its ``tracks``. Raises :class:`VideoError` (one line) at once for a file that is
    no readable video; a video that ends early (truncated) sets ``error`` and keeps the
    frames read."""
    return VideoPrediction(
        predictor,
        path,
        every=every,
        max_frames=max_frames,
        tracker=tracker,
        keep_frames=keep_frames,
    )


def video_row(
    video: VideoPrediction, first: FrameResult | None, last: FrameResult | None
) -> dict[str, Any]:
    """The ``kind=video`` row: frames predicted (``frames_seen``), the first and last of
    them, and ``error`` when reading stopped early."""
    return {
        "path": video.source,
        "kind": "video",
        "first_frame": None if first is None else first.frame,
        "last_frame": None if last is None else last.frame,
        "first_time": None if first is None or first.time is None else round(first.time, 6),
        "last_time": None if last is None or last.time is None else round(last.time, 6),
        "frames_seen": video.frames,
        "error": video.error,
    }


# ------------------------------------------------------------------------ annotated video


class VideoAnnotator:
    """Writes each predicted frame with its faces' boxes and labels (``<track id>: female
    93%, 27 y (25-32)``, a colour per track) to a video file (``.mp4``/``.m4v``/``.mov``:
    MPEG-4 Part 2, ``.avi``/``.mkv``: Motion JPEG), at ``fps``."""

    def __init__(self, path: str | os.PathLike, fps: float, size: tuple[int, int]) -> None:
        self.path = Path(path)
        code = ANNOTATE_CODECS.get(self.path.suffix.lower())
        if code is None:
            raise VideoError(
                f"{self.path}: --annotate for a video writes a video: the name must end in "
                + ", ".join(sorted(ANNOTATE_CODECS))
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.writer = cv2.VideoWriter(
            os.fspath(self.path), cv2.VideoWriter_fourcc(*code), float(fps), size
        )
        if not self.writer.isOpened():
            raise VideoError(f"{self.path}: cannot write a video there (OpenCV's {code} writer)")
        self.frames = 0

    def write(self, frame: FrameResult) -> None:
        from agegender.infer.drawing import draw_results

        if frame.image is None:
            raise ValueError("VideoAnnotator.write needs the frame's image (keep_frames=True)")
        # the drawing labels and colours faces by face_index: here, by track
        faces = [
            replace(f, face_index=t) for f, t in zip(frame.faces, frame.track_ids, strict=True)
        ]
        rgb = draw_results(frame.image, ImageResult(frame.source, faces))
        self.writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self) -> None:
        self.writer.release()


# ----------------------------------------------------------------------------- the job


@dataclass
class VideoJobSummary:
    """What :func:`predict_video_job` did: frames read and predicted, faces, tracks, and
    ``errors``: ``(video, reason)`` for each video read only in part."""

    run_id: str
    out: str | None
    videos: int = 0
    frames_read: int = 0
    frames: int = 0
    faces: int = 0
    tracks: list[TrackSummary] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    model: dict[str, Any] = field(default_factory=dict)

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def check_video_args(
    videos: Sequence[str | os.PathLike],
    *,
    every: int = 1,
    max_frames: int | None = None,
    annotate: str | os.PathLike | None = None,
) -> list[VideoInfo]:
    """Everything about the videos and options that can be checked before the model
    loads; raises a one-line ValueError naming the file. Returns each video's info."""
    from agegender.errors import check_writable

    if every < 1:
        raise ValueError(f"--every must be at least 1, got {every}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"--max-frames must be at least 1, got {max_frames}")
    if not videos:
        raise ValueError("no video given")
    infos = [probe_video(v) for v in videos]
    if annotate is not None:
        if len(infos) != 1:
            raise ValueError(
                f"{annotate}: --annotate writes one video; give one video, not {len(infos)}"
            )
        target = Path(annotate)
        if target.suffix.lower() not in ANNOTATE_CODECS:
            raise ValueError(
                f"{annotate}: --annotate for a video writes a video: the name must end in "
                + ", ".join(sorted(ANNOTATE_CODECS))
            )
        if target.exists() and target.resolve() == Path(infos[0].path).resolve():
            raise ValueError(f"{annotate}: --annotate would overwrite the input video")
        check_writable(target)
    return infos


def predict_video_job(
    videos: Sequence[str | os.PathLike],
    out: str | os.PathLike | None,
    config: PredictorConfig,
    *,
    every: int = 1,
    max_frames: int | None = None,
    annotate: str | os.PathLike | None = None,
    part_size: int = DEFAULT_PART_SIZE,
    progress: bool = False,
    console: Any = None,
    predictor: Predictor | None = None,
    on_frame: Callable[[FrameResult], None] | None = None,
) -> VideoJobSummary:
    """Predict and track the faces of ``videos`` into ``out`` (``.csv`` / ``.json`` /
    ``.parquet`` file or ``.parquet/`` folder of parts, ``-`` for CSV on stdout, None for
    no rows): each frame's faces as they come, each video's tracks and its ``video`` row
    when it ends (:func:`agegender.infer.outputs.video_columns`). ``annotate``: one
    video's frames with boxes and labels, as a video file.

    Everything the user can fix (a file that is no readable video, an empty one, a bad
    ``out`` or ``annotate``, a model that does not load) is a one-line ValueError or
    OSError before any frame is predicted. A video that ends early (truncated) keeps the
    rows of the frames read and is listed in ``errors``. ``on_frame`` sees each
    :class:`FrameResult`."""
    from agegender.errors import check_writable
    from agegender.infer.job import _progress, model_identity
    from agegender.infer.outputs import (
        ResultWriter,
        check_replaceable,
        output_format,
        video_columns,
    )
    from agegender.infer.parquet import ParquetOutput, new_run_id

    fmt = None if out is None else output_format(out)
    out_text = None if out is None else os.fspath(out)
    if out_text not in (None, "-"):
        check_writable(out_text, folder=out_text.endswith(("/", os.sep)))
        check_replaceable(out_text)
    infos = check_video_args(videos, every=every, max_frames=max_frames, annotate=annotate)
    run_id = new_run_id()
    if fmt == "parquet":
        ParquetOutput(out_text, [], {}, run_id).check_ours()  # type: ignore[arg-type]
    summary = VideoJobSummary(run_id, out_text, videos=len(infos))
    own = predictor is None
    if predictor is None:
        try:
            predictor = config.load()
        except (KeyError, RuntimeError) as exc:
            raise ValueError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc
    try:
        jobs = [
            VideoPrediction(
                predictor, i.path, every=every, max_frames=max_frames, keep_frames=bool(annotate)
            )
            for i in infos
        ]
        identity = {**model_identity(predictor, config), "every": every, "max_frames": max_frames}
        summary.model = identity
        columns = video_columns(predictor.spec)
        parquet = None
        if fmt == "parquet":
            parquet = ParquetOutput(out_text, columns, identity, run_id, part_size=part_size)  # type: ignore[arg-type]
        annotator = None
        if annotate is not None:
            info = infos[0]
            fps = (info.fps or 25.0) / every
            annotator = VideoAnnotator(annotate, fps, (info.width, info.height))
        if parquet is not None:  # nothing was written so far: from here on the output changes
            parquet.clear()
        writer = ResultWriter(out_text, predictor.spec, parquet=parquet, columns=columns)
        bar = _progress(progress, console, unit="frames")
        started = time.perf_counter()
        try:
            with writer, bar:
                for video in jobs:
                    _run_video(video, writer, summary, bar, annotator, on_frame)
        finally:
            if annotator is not None:
                annotator.close()
            summary.seconds = time.perf_counter() - started
    finally:
        if own:
            predictor.close()
    return summary


def _run_video(
    video: VideoPrediction,
    writer: Any,
    summary: VideoJobSummary,
    bar: Any,
    annotator: VideoAnnotator | None,
    on_frame: Callable[[FrameResult], None] | None,
) -> None:
    from agegender.infer.parquet import input_key

    size, mtime = input_key(video.source)
    key = {"file_size": size, "file_mtime_ns": mtime}
    task = bar.add_task(Path(video.source).name, total=video.expected_frames())
    first = last = None
    try:
        for frame in video:
            first = first or frame
            last = frame
            rows = frame_rows(frame)
            if rows:
                writer.write_rows([{**r, **key} for r in rows])
            summary.faces += len(frame.faces)
            if annotator is not None:
                annotator.write(frame)
            if on_frame is not None:
                on_frame(frame)
            bar.advance(task)
    finally:
        summary.frames += video.frames
        summary.frames_read += video.frames_read
    tracks = video.tracks
    summary.tracks.extend(tracks)
    for track in tracks:
        writer.write_rows([{**track.to_row(), **key}])
    writer.write_rows([{**video_row(video, first, last), **key}])
    if video.error is not None:
        summary.errors.append((video.source, video.error))


__all__ = [
    "ANNOTATE_CODECS",
    "VIDEO_SUFFIXES",
    "FaceTracker",
    "FrameResult",
    "TrackSummary",
    "VideoAnnotator",
    "VideoError",
    "VideoInfo",
    "VideoJobSummary",
    "VideoPrediction",
    "VideoReader",
    "box_iou",
    "check_video_args",
    "frame_rows",
    "is_video_name",
    "predict_video",
    "predict_video_job",
    "probe_video",
    "summarize_track",
    "video_row",
]
