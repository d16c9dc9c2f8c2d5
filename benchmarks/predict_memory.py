"""Peak memory of ``agegender predict`` on huge images (decompression-bomb-like PNGs).

Writes ``--n`` PNGs of ``--side`` x ``--side`` pixels (a dark gradient with one example face
pasted in; a few hundred KB each) and runs the real command on all of them in a child
process, reporting its peak RSS (``ru_maxrss``) and wall time. The predictor decodes under a
shared pixel budget (:class:`agegender.data.imageio.PixelBudget`), so the peak should stay
near one image's worth of memory however many such images are given.

    python benchmarks/predict_memory.py                  # eight 8000 x 8000 (64 MP) PNGs
    python benchmarks/predict_memory.py --n 2 --side 4000
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def make_pngs(folder: Path, n: int, side: int) -> list[Path]:
    ramp = np.linspace(20, 60, side, dtype=np.uint8)
    base = Image.fromarray(np.broadcast_to(ramp[None, :, None], (side, side, 3)).copy())
    face = Image.open(REPO / "examples" / "man_40-49.jpg").convert("RGB")
    face = face.resize((side // 3, side // 3))  # a face BlazeFace's short range can see
    base.paste(face, (side // 3, side // 3))
    paths = []
    for i in range(n):
        p = folder / f"huge_{i}.png"
        base.save(p, format="PNG", compress_level=1)
        paths.append(p)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--side", type=int, default=8000)
    ap.add_argument("--model", default="default")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_pngs(Path(tmp), args.n, args.side)
        out = Path(tmp) / "out.csv"
        cmd = [sys.executable, "-m", "agegender", "predict", *map(str, paths)]
        cmd += ["--model", args.model, "--out", str(out)]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        rows = list(csv.DictReader(out.open())) if out.exists() else []
        result = {
            "images": args.n,
            "side": args.side,
            "megapixels_each": round(args.side * args.side / 1e6, 1),
            "png_kb_each": round(paths[0].stat().st_size / 1024),
            "exit_code": proc.returncode,
            "result_rows": len(rows),
            "faces_found": sum(1 for r in rows if r.get("gender") in ("male", "female")),
            "peak_rss_mb": round(peak_mb),
            "seconds": round(wall, 1),
        }
    print(json.dumps(result))
    if proc.returncode not in (0, 1):
        print(proc.stderr[-2000:], file=sys.stderr)


if __name__ == "__main__":
    main()
