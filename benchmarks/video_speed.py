"""Video speed: frames/s of ``agegender predict clip.mp4`` on a 720p and a 1080p video,
every frame and every 5th.

    python benchmarks/video_speed.py                  # 150 frames a video (6 s at 25 fps)
    python benchmarks/video_speed.py --frames 300 --rounds 3

The videos are made here (mp4, MPEG-4 Part 2, 25 fps): two people talking, the man's and
the woman's photo from ``examples/`` moving slowly across a background, each face about a
quarter of the frame's height (180 px at 720p, 270 px at 1080p). Each configuration runs
the job the CLI runs (:func:`agegender.infer.video.predict_video_job`: read -> the photo
face path -> tracker -> CSV rows) with the CLI's defaults (the bundled ``default`` model,
BlazeFace, ONNX Runtime, 2 decode/detect threads), ``--rounds`` times, interleaved, and the
median round is reported. For each: frames predicted per second (what the CLI prints),
video frames per second (how fast it moves through the video: with ``--every 5`` five
frames are read for each one predicted) and that against real time at 25 fps, the faces
found of those shown; the decode alone (OpenCV's FFmpeg, BGR -> RGB) for comparison. The
cores are shared: the load average and the CPU time other processes took during the runs
are written beside the figures, and the commit measured.

Writes ``benchmarks/video_speed.json`` and ``benchmarks/video_speed.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import psutil
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from agegender.infer.predictor import PredictorConfig  # noqa: E402
from agegender.infer.video import predict_video_job  # noqa: E402

FPS = 25.0
SIZES = {"720p": (1280, 720), "1080p": (1920, 1080)}
EVERY = (1, 5)
NAMES = ("man_40-49", "woman_30-39")


def make_video(path: Path, width: int, height: int, frames: int) -> Path:
    """Two photos (a face each, side half the frame's height) moving right at 2 px a
    frame, the second lower and to the right of the first."""
    side = height // 2
    photos = [
        np.asarray(Image.open(REPO / "examples" / f"{n}.jpg").convert("RGB").resize((side, side)))
        for n in NAMES
    ]
    yy, xx = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(0)
    bg = np.stack([60 + 0.1 * xx, 80 + 0.12 * yy, np.full_like(xx, 110.0)], -1)
    bg = np.clip(bg + rng.normal(0, 6, bg.shape), 0, 255).astype(np.uint8)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (width, height))
    for k in range(frames):
        img = bg.copy()
        for i, photo in enumerate(photos):
            x = min(width - side, width // 10 + i * (width // 2) + 2 * k)
            y = height // 8 + i * (height // 4)
            img[y : y + side, x : x + side] = photo
        writer.write(cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def decode_fps(path: Path) -> float:
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    n, started = 0, time.perf_counter()
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        n += 1
    cap.release()
    return n / (time.perf_counter() - started)


def others_cpu() -> dict[int, float]:
    """CPU seconds used so far by each other process (those that can be read)."""
    me, seen = os.getpid(), {}
    for p in psutil.process_iter(["pid"]):
        if p.info["pid"] == me:
            continue
        try:
            t = p.cpu_times()
            seen[p.info["pid"]] = t.user + t.system
        except (psutil.Error, OSError):
            pass
    return seen


def others_cpu_since(before: dict[int, float]) -> float:
    """CPU seconds other processes used since ``before`` (processes that ended in between
    are not counted: a lower bound)."""
    now = others_cpu()
    return sum(max(0.0, t - before.get(pid, 0.0)) for pid, t in now.items())


def run_once(video: Path, every: int, out: Path, config: PredictorConfig) -> dict[str, Any]:
    me = psutil.Process()
    others, wall, mine = others_cpu(), time.perf_counter(), me.cpu_times()
    s = predict_video_job([video], out, config, every=every)
    wall = time.perf_counter() - wall
    mine_now = me.cpu_times()
    cpu = (mine_now.user + mine_now.system) - (mine.user + mine.system)
    others_s = others_cpu_since(others)
    return {
        "frames": s.frames,
        "frames_read": s.frames_read,
        "faces": s.faces,
        "faces_shown": s.frames * len(NAMES),
        "tracks": len(s.tracks),
        "seconds": round(s.seconds, 3),
        "frames_per_second": round(s.frames_per_second, 2),
        "video_frames_per_second": round(s.frames_read / s.seconds, 2),
        "realtime": round(s.frames_read / s.seconds / FPS, 3),
        "job_seconds": round(wall, 3),  # with the model's load
        # CPU seconds this process spent per predicted frame (model load included): what
        # a frame costs whatever else shares the cores
        "cpu_seconds_per_frame": round(cpu / max(1, s.frames), 4),
        "other_processes_cores": round(others_s / wall, 2),
    }


def git_commit() -> str | None:
    """The commit of the code measured (``-dirty``: with changes not committed)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except OSError:
        return None
    return out.stdout.strip() or None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=150, help="frames per video")
    ap.add_argument("--rounds", type=int, default=1, help="runs per configuration")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "video_speed")
    args = ap.parse_args()
    config = PredictorConfig()  # the CLI's defaults
    load_before = os.getloadavg()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        videos = {
            name: make_video(Path(tmp) / f"clip_{name}.mp4", w, h, args.frames)
            for name, (w, h) in SIZES.items()
        }
        decode = {name: round(decode_fps(v), 1) for name, v in videos.items()}
        runs: dict[str, list[dict[str, Any]]] = {}
        for _ in range(args.rounds):
            for name, video in videos.items():
                for every in EVERY:
                    key = f"{name}_every{every}"
                    out = Path(tmp) / f"{key}.csv"
                    runs.setdefault(key, []).append(run_once(video, every, out, config))
                    print(key, runs[key][-1], flush=True)
        for key, rs in runs.items():
            fps = [r["frames_per_second"] for r in rs]
            med = rs[fps.index(statistics.median_low(fps))]
            results[key] = {**med, "rounds_frames_per_second": fps}
    load_after = os.getloadavg()
    record = {
        "command": "python benchmarks/video_speed.py"
        + (f" --frames {args.frames}" if args.frames != 150 else "")
        + (f" --rounds {args.rounds}" if args.rounds != 1 else ""),
        "when": time.strftime("%Y-%m-%d %H:%M", time.localtime()),
        "commit": git_commit(),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "opencv": cv2.__version__,
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in load_after],
        },
        "video": {"frames": args.frames, "fps": FPS, "codec": "mp4v", "faces": len(NAMES)},
        "settings": "bundled default model, BlazeFace, ONNX Runtime, 2 decode/detect threads",
        "decode_only_frames_per_second": decode,
        "results": results,
    }
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(render(record))
    print(f"wrote {args.out.with_suffix('.md')}")


def render(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        "# Video speed",
        "",
        f"`{r['command']}` ({r['when']}, commit {r['commit']}): {r['video']['frames']} "
        "frames a video, "
        f"{r['video']['faces']} faces in each frame, {r['settings']}; {m['cores']} cores, "
        f"OpenCV {m['opencv']}.",
        "",
        "| video | frames | predicted frames/s | video frames/s | x real time (25 fps) | "
        "faces found / shown | tracks | CPU s a frame | other processes (cores busy) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, x in r["results"].items():
        name, every = key.split("_every")
        which = "every frame" if every == "1" else f"every {every}th"
        lines.append(
            f"| {name} | {which} | {x['frames_per_second']:.1f} | "
            f"{x['video_frames_per_second']:.1f} | {x['realtime']:.2f} | "
            f"{x['faces']} / {x['faces_shown']} | "
            f"{x['tracks']} | {x['cpu_seconds_per_frame']:.3f} | "
            f"{x['other_processes_cores']:.2f} |"
        )
    d = r["decode_only_frames_per_second"]
    lines += [
        "",
        "Decoding alone (OpenCV's FFmpeg, BGR to RGB): "
        + ", ".join(f"{k} {v:.0f} frames/s" for k, v in d.items())
        + ": the face path (the detector on the whole frame, then each face aligned and "
        "classified), not the decoding, sets the pace.",
        "",
        f"Load average (1, 5, 15 min) before: {m['load_average_before']}, after: "
        f"{m['load_average_after']}. The cores were shared: 'other processes' is the CPU "
        "time that other processes took during each run, in cores (of "
        f"{m['cores']}; a lower bound: processes that ended during a run are not counted); "
        "'CPU s a frame' is what this process spent per predicted frame, on all its threads "
        "(the model's load included), a cost that does not depend on what else runs.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
