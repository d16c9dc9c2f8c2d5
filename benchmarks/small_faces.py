"""Small faces: gender on the same validation faces shown at the sizes of a group photo.

    python benchmarks/small_faces.py --data runs/fold0_val.csv --models default \\
        runs/small/lowres.ckpt runs/small/plain.ckpt --limit 1000

The group-photo benchmark (``benchmarks/group_photos.py``) shows gender falling on faces
under 128 px against the same faces alone; this one asks how much of that is the model
(faces seen small) and lets two training recipes be compared on faces neither trained on.
Each labelled photo of ``--data`` (validation faces of a fold, e.g. the manifest
``benchmarks/gender_threshold.py --val-csv`` writes) is shrunk (area averaging, as a
camera's optics would) so its face is ``s`` px wide, pasted with soft edges in the middle
of a 640 x 480 background (``group_photos``'s backgrounds and paste), and the photo goes
through the model's own face path (``Predictor``: decode, the detector, alignment, the
model's gender decision). A face counts as found at IoU >= 0.5 with its carried box.
Reported per model and size: faces found, gender accuracy on the faces every size found
(the same faces in every column), and at full size the photo itself.

Writes ``benchmarks/small_faces.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

import group_photos  # noqa: E402  (the paste and backgrounds of the group photos)

REPO = Path(__file__).resolve().parents[1]
SIZES = (24, 32, 48, 64, 96)
CANVAS = (640, 480)


def _sources(data: Path, limit: int | None, seed: int) -> list[dict]:
    """The labelled photos with their face box (the single-pass detector on the photo)."""
    import cv2

    from agegender.infer.detector import make_detector
    from agegender.infer.faces import detect_faces

    table = pd.read_csv(data)
    table = table[table["gender"].notna()].reset_index(drop=True)
    order = np.random.default_rng(seed).permutation(len(table))
    if limit:
        order = order[:limit]
    det = make_detector("blazeface_128")
    out = []
    for i in order:
        path = str(table.loc[i, "path"])
        rgb = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
        boxes, _ = detect_faces(det, rgb)
        if not boxes:
            continue
        b = max(boxes, key=lambda b: b.w * b.h)
        out.append(
            {"path": path, "gender": int(table.loc[i, "gender"]), "box": [b.x, b.y, b.w, b.h]}
        )
    return out


def _scenes(sources: list[dict], sizes: tuple[int, ...], seed: int) -> dict:
    """For every source and size: the 640 x 480 photo with the face ``size`` px wide in
    its middle, and the face's box there."""
    rng = np.random.default_rng(seed)
    scenes: dict[tuple[int, int], tuple[np.ndarray, list[float]]] = {}
    w, h = CANVAS
    for i, src in enumerate(sources):
        bg = group_photos._background(w, h, rng)
        for s in sizes:
            canvas = bg.copy()
            # the soft edge inside the photo, as when small_faces.md was measured
            box, _, _ = group_photos._paste(canvas, src, float(s), w / 2, h / 2, 0.0, "inside")
            scenes[(i, s)] = (canvas, box)
    return scenes


def score(model: str, sources: list[dict], scenes: dict, sizes: tuple[int, ...]) -> dict:
    """Found share and gender accuracy by size for one model (its own face path)."""
    from agegender.infer import Predictor

    predictor = Predictor.load(model, workers=1, threads=1)
    n = len(sources)
    truth = np.array([s["gender"] for s in sources])
    said = {}  # size (0 = the photo itself) -> per source: 1 female, 0 male, -1 not found
    t0 = time.perf_counter()
    alone = predictor.predict([s["path"] for s in sources])
    said[0] = np.array(
        [
            -1 if not r.faces else int(max(r.faces, key=lambda f: f.box[2]).gender == "female")
            for r in alone
        ]
    )
    for s in sizes:
        said[s] = np.array([group_photos.gender_at(predictor, *scenes[(i, s)]) for i in range(n)])
    seconds = time.perf_counter() - t0
    every = np.all(np.stack(list(said.values())) >= 0, axis=0)
    rows = {}
    for s, g in said.items():
        rows["photo" if s == 0 else f"{s}px"] = {
            "found": float((g >= 0).mean()),
            "accuracy_all_found": float((g[g >= 0] == truth[g >= 0]).mean()),
            "accuracy_common": float((g[every] == truth[every]).mean()),
        }
    return {
        "model": model,
        "faces": n,
        "common_faces": int(every.sum()),
        "sizes": rows,
        "seconds": round(seconds, 1),
    }


def render(data: dict) -> str:
    lines = [
        "# Small faces",
        "",
        "Validation faces shown at the sizes of faces in group photos "
        "(`python benchmarks/small_faces.py`; method in its docstring): gender accuracy "
        "on the faces found at every size (the same faces in every column), and the share "
        "found at each size.",
        "",
    ]
    for entry in data.get("runs", []):
        sizes = list(entry["results"][0]["sizes"])
        lines += [
            f"Command: `{entry['command']}`",
            "",
            f"Machine: {entry['machine']}; {entry['note']}"
            if entry.get("note")
            else f"Machine: {entry['machine']}",
            "",
            "| model | faces (common) | " + " | ".join(sizes) + " |",
            "|---|---:|" + "---:|" * len(sizes),
        ]
        for r in entry["results"]:
            cells = [
                f"{100 * c['accuracy_common']:.1f}% (found {100 * c['found']:.1f}%)"
                for c in r["sizes"].values()
            ]
            lines.append(
                f"| `{r['model']}` | {r['faces']} ({r['common_faces']}) | "
                + " | ".join(cells)
                + " |"
            )
        if entry.get("verdict"):
            lines += ["", entry["verdict"]]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, help="labelled validation photos (CSV)")
    ap.add_argument("--models", nargs="+", default=["default"])
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--note", default="")
    ap.add_argument("--out-dir", type=Path, default=REPO / "benchmarks")
    ap.add_argument("--append", action="store_true", help="keep the stored runs")
    ap.add_argument("--render", action="store_true", help="rewrite the .md from the .json")
    args = ap.parse_args(argv)
    if args.render:
        data = json.loads((args.out_dir / "small_faces.json").read_text())
        (args.out_dir / "small_faces.md").write_text(render(data))
        return
    if args.data is None:
        ap.error("--data is required (a CSV of labelled validation photos)")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sizes = tuple(sorted(args.sizes))
    sources = _sources(args.data, args.limit, args.seed)
    scenes = _scenes(sources, sizes, args.seed)
    results = []
    for model in args.models:
        res = score(model, sources, scenes, sizes)
        print(json.dumps(res), flush=True)
        results.append(res)
    out_json = args.out_dir / "small_faces.json"
    data = json.loads(out_json.read_text()) if args.append and out_json.exists() else {}
    data.setdefault("runs", []).append(
        {
            "command": "python benchmarks/small_faces.py "
            + shlex.join(sys.argv[1:] if argv is None else argv),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "note": args.note,
            "results": results,
        }
    )
    out_json.write_text(json.dumps(data, indent=1))
    (args.out_dir / "small_faces.md").write_text(render(data))


if __name__ == "__main__":
    main()
