"""JPEG decoding for the face path: Pillow against simplejpeg, at every libjpeg scale.

    python benchmarks/jpeg_decode.py      # the 12 MP portraits of group_photos' test split
    python benchmarks/jpeg_decode.py --files a.jpg b.jpg

Both decoders are libjpeg-turbo; what differs is how the pixels reach NumPy: Pillow decodes
into its own image and ``np.asarray`` copies it out, simplejpeg decodes into the array. Each
photo is decoded at 1/8, 1/4, 1/2 and full scale by each decoder, in turn (so both share
whatever else runs), on one core; reported as the median ms per photo, with the largest
pixel difference between the two decodes (0: identical). Writes
``benchmarks/jpeg_decode.{json,md}``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
FACTORS = (8, 4, 2, 1)


def _pillow(data: bytes, factor: int) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        w, h = im.size
        if factor > 1:
            im.draft("RGB", (w // factor, h // factor))
        return np.asarray(im.convert("RGB"))


def _simplejpeg(data: bytes, factor: int) -> np.ndarray:
    import simplejpeg

    w, h = Image.open(io.BytesIO(data)).size
    return simplejpeg.decode_jpeg(
        data,
        colorspace="RGB",
        min_factor=factor,
        min_width=-(-w // factor),
        min_height=-(-h // factor),
    )


def measure(files: list[Path], rounds: int = 3) -> dict:
    datas = [f.read_bytes() for f in files]
    times: dict[str, list[float]] = {}
    diff: dict[str, int] = {}
    for _ in range(rounds):
        for data in datas:
            for f in FACTORS:
                got = {}
                for name, fn in (("pillow", _pillow), ("simplejpeg", _simplejpeg)):
                    t0 = time.perf_counter()
                    got[name] = fn(data, f)
                    times.setdefault(f"{name}_1/{f}", []).append(time.perf_counter() - t0)
                a, b = got["pillow"], got["simplejpeg"]
                d = int(np.abs(a.astype(np.int16) - b).max()) if a.shape == b.shape else -1
                diff[f"1/{f}"] = max(diff.get(f"1/{f}", 0), d)
    shape = Image.open(io.BytesIO(datas[0])).size
    return {
        "photos": len(files),
        "size": list(shape),
        "mb_per_photo": round(float(np.mean([len(d) for d in datas])) / 1e6, 2),
        "rounds": rounds,
        "ms": {k: round(1000 * float(np.median(v)), 1) for k, v in times.items()},
        "max_pixel_difference": diff,
    }


def render(res: dict) -> str:
    w, h = res["size"]
    lines = [
        "# JPEG decoding: Pillow and simplejpeg",
        "",
        f"Command: `{res['command']}`",
        "",
        f"Machine: {res['machine']}; one core; {res['photos']} photos of {w}x{h} "
        f"({res['mb_per_photo']} MB each), each decoded {res['rounds']} times per scale and "
        "decoder, in turn. Median ms per photo; the largest difference of one pixel value "
        "between the two decodes (0: identical).",
        "",
        "| scale | Pillow (`draft` + `np.asarray`) | simplejpeg | largest pixel difference |",
        "|---|---:|---:|---:|",
    ]
    for f in FACTORS:
        k = f"1/{f}"
        lines.append(
            f"| {k if f > 1 else 'full'} | {res['ms'][f'pillow_{k}']} | "
            f"{res['ms'][f'simplejpeg_{k}']} | {res['max_pixel_difference'][k]} |"
        )
    if res.get("note"):
        lines += ["", res["note"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", nargs="+", type=Path)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--note", default="", help="a line for the .md (what else was running)")
    ap.add_argument("--out-dir", type=Path, default=REPO / "benchmarks")
    args = ap.parse_args(argv)
    files = args.files or sorted(
        (REPO / "runs" / "group_photos" / "test").glob("portrait_*_12mp.jpg")
    )
    if not files:
        sys.exit(
            "no photos: build them with python benchmarks/group_photos.py --split test, or "
            "pass --files"
        )
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    res = measure(files, args.rounds)
    res["command"] = "python benchmarks/jpeg_decode.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    res["machine"] = f"{platform.machine()}, {os.cpu_count()} cores"
    res["note"] = args.note
    (args.out_dir / "jpeg_decode.json").write_text(json.dumps(res, indent=1))
    (args.out_dir / "jpeg_decode.md").write_text(render(res))
    print(render(res))


if __name__ == "__main__":
    main()
