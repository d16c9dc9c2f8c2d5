"""``agegender predict clip.mp4`` and :mod:`agegender.infer.video`: faces tracked across
frames, one summary per track, the bad videos the issue names.

The videos are made here (``cv2.VideoWriter``, 320x240, 40 frames) from the real photos in
``examples/`` moving across a background along known paths, so every face's true track is
known; the bundled model and detector, no other data."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from agegender.cli import app
from agegender.infer.outputs import VIDEO_BASE_COLUMNS
from agegender.infer.predictor import Predictor, PredictorConfig
from agegender.infer.video import (
    FaceTracker,
    VideoError,
    _TrackFrames,
    predict_video,
    predict_video_job,
    probe_video,
    summarize_track,
)

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
LABELS = {"man_40-49": "male", "woman_30-39": "female", "girl_3-9": "female"}
W, H, FPS = 320, 240, 25.0
SIDE = 110  # the photos' side in the video (their faces: about 50 px)
OPEN_ERROR = "OpenCV's FFmpeg cannot open it as a video (not a video, or truncated or corrupt)"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@dataclass(frozen=True)
class Actor:
    """A photo moving in a straight line from ``start`` by ``step`` pixels a frame, shown
    in frames ``first`` to ``last``."""

    name: str
    start: tuple[float, float]
    step: tuple[float, float]
    first: int = 0
    last: int = 10**9

    def where(self, frame: int) -> tuple[int, int] | None:
        if not self.first <= frame <= self.last:
            return None
        return (
            round(self.start[0] + self.step[0] * frame),
            round(self.start[1] + self.step[1] * frame),
        )


def _background() -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    rng = np.random.default_rng(0)
    bg = np.stack([60 + 0.3 * xx, 80 + 0.4 * yy, np.full_like(xx, 110.0)], -1)
    return np.clip(bg + rng.normal(0, 6, bg.shape), 0, 255).astype(np.uint8)


def make_video(
    path: Path, actors: list[Actor], frames: int = 40, fourcc: str = "mp4v", size: int = SIDE
) -> Path:
    photos = {
        a.name: np.asarray(
            Image.open(EXAMPLES / f"{a.name}.jpg").convert("RGB").resize((size,) * 2)
        )
        for a in actors
    }
    bg = _background()
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), FPS, (W, H))
    assert writer.isOpened()
    for k in range(frames):
        img = bg.copy()
        for a in actors:
            xy = a.where(k)
            if xy is not None:
                x, y = xy
                img[y : y + size, x : x + size] = photos[a.name]
        writer.write(cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


#: Three faces that never overlap: the man left to right along the top, the woman right to
#: left along the bottom, the girl in the top right corner from frame 10 to 29 only.
LANES = [
    Actor("man_40-49", (0, 5), (2.5, 0)),
    Actor("woman_30-39", (205, 125), (-4.5, 0)),
    Actor("girl_3-9", (210, 0), (-0.5, 0.5), first=10, last=29),
]


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    p = Predictor.load(threads=1, workers=1)
    yield p
    p.close()


@pytest.fixture(scope="module")
def lanes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video(tmp_path_factory.mktemp("video") / "lanes.mp4", LANES)


def _owner(box: tuple[int, ...], frame: int, actors: list[Actor]) -> str:
    """The actor whose photo holds the centre of a face box in ``frame``."""
    cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
    hits = []
    for a in actors:
        xy = a.where(frame)
        if xy is not None and xy[0] <= cx < xy[0] + SIDE and xy[1] <= cy < xy[1] + SIDE:
            hits.append(a.name)
    assert len(hits) == 1, (frame, box, hits)
    return hits[0]


@pytest.mark.parametrize("every", [1, 5])
def test_every_track_found_once_without_identity_switches(
    predictor: Predictor, lanes: Path, every: int
) -> None:
    video = predict_video(predictor, lanes, every=every)
    frames = list(video)
    assert [f.frame for f in frames] == list(range(0, 40, every))
    assert video.error is None and video.frames_read == 40
    ids: dict[str, set[int]] = {a.name: set() for a in LANES}
    found: dict[str, list[int]] = {a.name: [] for a in LANES}
    for f in frames:
        assert math.isclose(f.time, f.frame / FPS, abs_tol=1e-6)
        for face, tid in zip(f.faces, f.track_ids, strict=True):
            name = _owner(face.box, f.frame, LANES)
            ids[name].add(tid)
            found[name].append(f.frame)
    # every face was found in (nearly) every frame it is in, always under one track id,
    # and no two faces share one
    for a in LANES:
        shown = [f.frame for f in frames if a.where(f.frame) is not None]
        assert len(found[a.name]) >= 0.9 * len(shown), (a.name, found[a.name])
        assert len(ids[a.name]) == 1, (a.name, ids[a.name])
    assert len(set.union(*ids.values())) == 3
    tracks = {t.track_id: t for t in video.tracks}
    assert sorted(tracks) == sorted(set.union(*ids.values()))  # no other track
    for a in LANES:
        (tid,) = ids[a.name]
        t = tracks[tid]
        assert t.frames_seen == len(found[a.name])
        assert (t.first_frame, t.last_frame) == (found[a.name][0], found[a.name][-1])
        assert math.isclose(t.first_time, t.first_frame / FPS, abs_tol=1e-6)
        assert math.isclose(t.last_time, t.last_frame / FPS, abs_tol=1e-6)
        assert 0 < t.confidence <= 1 and t.age is not None and t.age_group is not None
    girl = tracks[next(iter(ids["girl_3-9"]))]
    assert girl.first_frame >= 10 and girl.last_frame <= 29
    assert girl.first_frame <= 10 + every and girl.last_frame >= 29 - every


def test_track_gender_is_the_photos_where_the_photo_alone_is_right(
    predictor: Predictor, lanes: Path
) -> None:
    video = predict_video(predictor, lanes)
    frames = list(video)
    track_of = {}
    for f in frames:
        for face, tid in zip(f.faces, f.track_ids, strict=True):
            track_of[_owner(face.box, f.frame, LANES)] = tid
    tracks = {t.track_id: t for t in video.tracks}
    checked = 0
    for name, label in LABELS.items():
        alone = predictor.predict(str(EXAMPLES / f"{name}.jpg")).faces
        # right, and not by a hair: the girl's photo alone reads P(female) 0.52 with the
        # bundled default run unfused on a CPU without int8 dot products, 0.45 on her
        # 50 px copies in the video, a coin toss either way
        sure = len(alone) == 1 and abs(alone[0].p_female - 0.5) >= 0.1
        if sure and alone[0].gender == label:
            assert tracks[track_of[name]].gender == label, (name, tracks[track_of[name]])
            checked += 1
    assert checked >= 2  # the man and the woman at least


def test_track_gender_is_the_mean_log_odds_at_the_models_threshold() -> None:
    def track(p: list[float], threshold: float, ages: list[float] | None = None):
        frames = _TrackFrames(3, 0.12, 9, 0.36, len(p), list(p), list(ages or []))
        return summarize_track("v.mp4", 7, frames, threshold)

    # mean P(female) 0.47, but the mean log-odds (6.91 - 1.39 - 1.39) / 3 > 0: female
    t = track([0.999, 0.2, 0.2], 0.5, [30, 31, 60])
    assert t.gender == "female"
    mean = (math.log(0.999 / 0.001) + 2 * math.log(0.2 / 0.8)) / 3
    assert math.isclose(t.p_female, 1 / (1 + math.exp(-mean)), rel_tol=1e-9)
    assert math.isclose(t.p_female + t.p_male, 1.0)
    assert math.isclose(t.confidence, 1 / 3)  # one frame of three says female on its own
    assert (t.age, t.age_group) == (31.0, "25-32")  # the median, not the mean (40.3)
    # and the other way: mean P(female) 0.53, mean log-odds below 0: male
    assert track([0.8, 0.8, 0.001], 0.5).gender == "male"
    # the model's own threshold decides (the bundled model's is below 0.5)
    assert track([0.45, 0.45], 0.4265).gender == "female"
    assert track([0.45, 0.45], 0.5).gender == "male"
    # probabilities of exactly 0 and 1 stay finite
    t = track([1.0, 0.0, 1.0], 0.5)
    assert t.gender == "female" and 0.5 < t.p_female < 1
    t = summarize_track("v.mp4", 7, _TrackFrames(3, 0.12, 9, 0.36, 2), 0.5)  # no heads
    assert t.gender is None and t.confidence is None and t.age is None
    assert t.to_row()["kind"] == "track" and t.to_row()["frames_seen"] == 2


def test_tracker_keeps_ids_through_reordering_jumps_and_short_gaps() -> None:
    tr = FaceTracker(max_gap=10)
    a, b = (10, 10, 50, 50), (200, 120, 50, 50)
    assert tr.update(0, [a, b]) == [1, 2]
    assert tr.update(1, [(204, 120, 50, 50), (14, 10, 50, 50)]) == [2, 1]  # order swapped
    # --every 5 at 4 px a frame: the expected box (last box + velocity) still overlaps
    assert tr.update(6, [(34, 10, 50, 50), (224, 120, 50, 50)]) == [1, 2]
    # 38 px in one frame, 34 more than expected (IoU 0.19): the centre distance finds it
    assert tr.update(7, [(38, 10, 50, 50), (262, 121, 51, 51)]) == [1, 2]
    # a jump of a whole face size beyond the expected place is somebody else
    assert tr.update(8, [(42, 10, 50, 50), (330, 121, 50, 50)]) == [1, 3]
    assert tr.update(10, [(50, 10, 50, 50)]) == [1]  # 2 and 3 unseen for 2 frames: kept
    assert tr.update(12, [(58, 10, 50, 50), (340, 121, 50, 50)]) == [1, 3]
    assert tr.update(30, [(130, 10, 50, 50)]) == [4]  # 18 frames unseen: a new track
    assert tr.update(31, [(130, 10, 50, 50), (10, 200, 20, 20)]) == [4, 5]  # ids not reused


def _cli(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, ["predict", *args, "--threads", "1", "--workers", "1"])
    return res.exit_code, res.output


def test_cli_rows_csv_json_parquet_and_annotated_video(lanes: Path, tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    ann = tmp_path / "ann" / "out.mp4"
    code, out = _cli(str(lanes), "--out", str(tmp_path / "v.csv"), "--annotate", str(ann))
    assert code == 0, out
    assert "1 video: 40 frames predicted of 40 read (every 1)" in out and "3 tracks" in out
    rows = list(csv.DictReader((tmp_path / "v.csv").open()))
    assert list(rows[0])[: len(VIDEO_BASE_COLUMNS)] == list(VIDEO_BASE_COLUMNS)
    kinds = [r["kind"] for r in rows]
    assert kinds.count("track") == 3 and kinds[-1] == "video" and kinds.count("video") == 1
    assert kinds.index("track") == kinds.count("frame")  # frames first, then tracks
    video = rows[-1]
    assert (video["frames_seen"], video["first_frame"], video["last_frame"]) == ("40", "0", "39")
    assert video["error"] == ""
    cap = cv2.VideoCapture(str(ann))
    assert cap.get(cv2.CAP_PROP_FRAME_COUNT) == 40
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (W, H)
    cap.release()

    # the same rows in JSON and Parquet; --every 4 --max-frames 5: frames 0, 4, ..., 16
    code, out = _cli(str(lanes), "--out", str(tmp_path / "v.json"), "--every", "4")
    assert code == 0, out
    data = json.loads((tmp_path / "v.json").read_text())
    assert {r["kind"] for r in data} == {"frame", "track", "video"}
    assert sorted({r["frame"] for r in data if r["kind"] == "frame"}) == list(range(0, 40, 4))
    args = ("--every", "4", "--max-frames", "5")
    code, out = _cli(str(lanes), "--out", str(tmp_path / "v.parquet"), *args)
    assert code == 0 and "5 frames predicted of 17 read (every 4)" in out, out
    table = pq.read_table(tmp_path / "v.parquet").to_pylist()
    frames = sorted({r["frame"] for r in table if r["kind"] == "frame"})
    assert frames == [0, 4, 8, 12, 16]
    assert table[-1]["kind"] == "video" and table[-1]["frames_seen"] == 5
    assert all(r["file_size"] == lanes.stat().st_size for r in table)
    meta = json.loads(pq.read_schema(tmp_path / "v.parquet").metadata[b"agegender"])
    assert (meta["every"], meta["max_frames"]) == (4, 5)

    # an earlier video CSV of ours is replaced; somebody else's file is not
    code, out = _cli(str(lanes), "--out", str(tmp_path / "v.csv"), "--max-frames", "2")
    assert code == 0, out
    (tmp_path / "labels.csv").write_text("file,label\na.jpg,1\n")
    code, out = _cli(str(lanes), "--out", str(tmp_path / "labels.csv"))
    assert code == 2 and "is not an output of agegender predict" in out
    assert (tmp_path / "labels.csv").read_text() == "file,label\na.jpg,1\n"


def test_truncated_video_one_line_error_frames_read_kept(tmp_path: Path) -> None:
    """An AVI cut in half: the frames before the cut are predicted and written, the
    tracks summarise them, one error line, exit 1."""
    full = make_video(tmp_path / "full.avi", LANES[:2], fourcc="MJPG")
    cut = tmp_path / "cut.avi"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    out = tmp_path / "cut.csv"
    code, text = _cli(str(cut), "--out", str(out))
    assert code == 1, text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text
    assert errors[0].startswith(f"error: {cut}: the video ends after ")
    assert "of its 40 frames (truncated or corrupt)" in errors[0]
    rows = list(csv.DictReader(out.open()))
    video = rows[-1]
    assert video["kind"] == "video" and "truncated" in video["error"]
    n = int(video["frames_seen"])
    assert 10 <= n < 40
    frames = {int(r["frame"]) for r in rows if r["kind"] == "frame"}
    assert frames == set(range(n))  # two faces found in every frame read
    tracks = [r for r in rows if r["kind"] == "track"]
    assert len(tracks) == 2 and all(int(t["last_frame"]) == n - 1 for t in tracks)


def test_bad_videos_fail_before_work_and_leave_outputs_alone(lanes: Path, tmp_path: Path) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    cut = tmp_path / "cut.mp4"  # an mp4 cut in half loses its index (moov atom, at the end)
    cut.write_bytes(lanes.read_bytes()[: lanes.stat().st_size // 2])
    out = tmp_path / "earlier.csv"
    code, _ = _cli(str(lanes), "--out", str(out), "--max-frames", "3")
    assert code == 0
    before = out.read_bytes()
    cases = {
        text: OPEN_ERROR,
        empty: "empty file (0 bytes), not a video",
        cut: OPEN_ERROR,
        tmp_path / "missing.mp4": "no such file",
    }
    for bad, reason in cases.items():
        code, output = _cli(str(lanes), str(bad), "--out", str(out))
        assert code == 2, output
        assert output.strip() == f"error: {bad}: {reason}"
        assert out.read_bytes() == before  # nothing written, nothing lost
    for args, message in [
        ((str(lanes), str(EXAMPLES / "man_40-49.jpg")), "videos or photos, not both"),
        ((str(lanes), "--annotate", str(tmp_path / "a.jpg")), "the name must end in .avi"),
        ((str(lanes), "--annotate", str(lanes)), "would overwrite the input video"),
        ((str(lanes), "--resume", "--out", str(tmp_path / "r.parquet")), "--resume is for"),
        ((str(EXAMPLES), "--every", "2"), "--every and --max-frames are for videos"),
        ((str(lanes), "--every", "0"), "Invalid value for '--every'"),
    ]:
        code, output = _cli(*args)
        assert code == 2 and message in output, (args, output)
    with pytest.raises(VideoError, match="notes.mp4: OpenCV's FFmpeg cannot open"):
        probe_video(text)

    # the installed command: exactly one line on stderr (FFmpeg's and OpenCV's own log
    # lines, "moov atom not found", would show here), before the model loads
    for bad in (text, cut):
        res = subprocess.run(
            [sys.executable, "-m", "agegender", "predict", str(bad)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode == 2 and res.stdout == ""
        assert res.stderr.splitlines() == [f"error: {bad}: {OPEN_ERROR}"], res.stderr


def test_max_frames_bounds_a_50000_frame_video(predictor: Predictor, tmp_path: Path) -> None:
    long = tmp_path / "long.mp4"
    writer = cv2.VideoWriter(str(long), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (64, 48))
    frame = np.full((48, 64, 3), 120, np.uint8)
    for _ in range(50_000):
        writer.write(frame)
    writer.release()
    assert probe_video(long).frame_count == 50_000
    out = tmp_path / "long.parquet"
    started = time.perf_counter()
    s = predict_video_job(
        [long], out, PredictorConfig(), every=7, max_frames=100, predictor=predictor
    )
    assert time.perf_counter() - started < 30
    assert (s.frames, s.frames_read, s.faces, s.errors) == (100, 694, 0, [])
    pq = pytest.importorskip("pyarrow.parquet")
    rows = pq.read_table(out).to_pylist()
    assert [r["kind"] for r in rows] == ["video"]
    assert (rows[0]["frames_seen"], rows[0]["last_frame"], rows[0]["error"]) == (100, 693, None)


def test_interrupted_video_keeps_the_parts_written(
    predictor: Predictor, lanes: Path, tmp_path: Path
) -> None:
    """Ctrl-C after 10 frames (Parquet parts of 4 frames): the rows of all 10 are there."""
    from agegender.infer.parquet import read_output

    out = tmp_path / "v.parquet"
    seen = []

    def interrupt(frame) -> None:
        seen.append(frame.frame)
        if len(seen) == 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        predict_video_job(
            [lanes], out, PredictorConfig(), part_size=4, predictor=predictor, on_frame=interrupt
        )
    rows = read_output(out).to_pylist()
    assert {r["frame"] for r in rows} == set(range(10)) == set(seen)
    assert {r["kind"] for r in rows} == {"frame"}  # the tracks and video rows come at the end


@pytest.mark.skipif(shutil.which("script") is None, reason="util-linux `script` (a pty) absent")
def test_terminal_shows_a_table_of_the_tracks(lanes: Path) -> None:
    cmd = f"{sys.executable} -m agegender predict {lanes} --threads 1 --every 2"
    out = subprocess.run(
        ["script", "-qfec", cmd, "/dev/null"], capture_output=True, text=True, timeout=300
    ).stdout
    assert "tracked faces" in out and "lanes.mp4" in out
    assert "0.0-1.5" in out  # the man and the woman: the whole video (frames 0 to 38)
    assert "female" in out and "male" in out
    # (the summary line on stderr is checked in-process above: two detect threads that
    # silence LiteRT at once can leave file descriptor 2 on /dev/null)
