"""What a paste costs a face's gender, apart from its size: the same validation faces at
their own size, in their own photo and pasted into a bigger photo.

    python benchmarks/paste_context.py --data runs/fold0_val.csv --limit 400

Each photo of ``--data`` (labelled validation faces) goes through the bundled ``default``
model's face path five more ways: pasted with ``group_photos``'s former soft edges (inside
the photo) onto one of its backgrounds in a 640x480 and a 512x384 photo (``bg640``,
``bg512``: a photo over 512 px takes the pyramid and the re-read face views, one of 512 px or
less the single pass), pasted as group photos paste it since 2026-12-08 (``out640``: the
soft edge in a border of repeated edge pixels, the photo whole), and with its own edge
pixels repeated outward to those sizes (``rep640``, ``rep512``: the same face path, no
foreign background). Prints the share found and the gender accuracy on the
faces found every way (its figures are quoted in ``benchmarks/small_faces.md``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import group_photos as g  # noqa: E402
import small_faces as sf  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    from agegender.infer import Predictor

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--limit", type=int, default=400)
    ap.add_argument("--model", default="default")
    args = ap.parse_args(argv)
    src = sf._sources(args.data, args.limit, 1)
    p = Predictor.load(args.model, workers=1, threads=1)
    rng = np.random.default_rng(0)
    truth = np.array([s["gender"] for s in src])

    def said(rgb: np.ndarray, box: list[float] | None) -> int:
        if box is not None:
            return g.gender_at(p, rgb, box)
        faces = p.predict(rgb).faces  # the photo itself: its largest face
        return int(max(faces, key=lambda f: f.box[2]).gender == "female") if faces else -1

    def run(make) -> np.ndarray:
        return np.array([said(*make(s)) for s in src])

    def alone(s: dict):
        return cv2.cvtColor(cv2.imread(s["path"]), cv2.COLOR_BGR2RGB), None

    def canvas(w: int, h: int, kind: str):
        def make(s: dict):
            if kind == "replicate":
                img = cv2.cvtColor(cv2.imread(s["path"]), cv2.COLOR_BGR2RGB)
                ih, iw = img.shape[:2]
                top, left = (h - ih) // 2, (w - iw) // 2
                c = cv2.copyMakeBorder(
                    img, top, h - ih - top, left, w - iw - left, cv2.BORDER_REPLICATE
                )
                b = s["box"]
                return c, [b[0] + left, b[1] + top, b[2], b[3]]
            return g.pasted_alone(s, float(max(s["box"][2:])), rng, (w, h), kind)

        return make

    res = {"photo": run(alone)}
    for name, (w, h, kind) in {
        "bg640": (640, 480, "inside"),
        "bg512": (512, 384, "inside"),
        "out640": (640, 480, "outside"),
        "rep640": (640, 480, "replicate"),
        "rep512": (512, 384, "replicate"),
    }.items():
        res[name] = run(canvas(w, h, kind))
    every = np.all(np.stack(list(res.values())) >= 0, axis=0)
    for k, v in res.items():
        print(
            f"{k}: found {(v >= 0).mean():.1%}, gender {(v[every] == truth[every]).mean():.1%} "
            f"on the {int(every.sum())} faces found every way"
        )


if __name__ == "__main__":
    main()
