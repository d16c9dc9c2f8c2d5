"""Prediction speed on this CPU: classifier throughput and end-to-end photos per second.

``agegender bench predict [--json] [--model M]`` reports

- ``faces_per_s_batch{1,64}_{torch,onnx}``: the classifier alone on preprocessed faces;
- ``photos_per_s_end_to_end`` (ONNX Runtime) and ``photos_per_s_end_to_end_torch``: file
  decode + detection (BlazeFace by default) + alignment + classification through
  :meth:`Predictor.predict_paths`,
  on 250x250 JPEG photos made from real UTKFace faces (resized to 90-160 px) pasted on a
  blurred background made from another UTKFace photo;
- ``detected_fraction``: photos where the detector found at least one face;
- ``photos_per_s_end_to_end_real`` and ``detected_fraction_real``: the same on real photos
  (FairFace-540's 448x448 JPEGs from ``AGEGENDER_DATA``, faces of every size and pose);
- ``ms_per_photo_phone_12mp`` and ``ms_per_photo_group``: one core (one decode/detect
  worker, one classifier thread), ONNX Runtime, on 4000x3000 JPEGs (quality 90, sensor
  noise) with one face of 15-35 % of the photo's height (a phone photo), and on 1600x1200
  JPEGs of 12 faces of 70-110 px in a 4 x 3 grid (a group photo); ``faces_found_*``:
  faces found per photo (of 1 and 12), ``with_face_*``: photos with a face found;
- ``cpu_ms_per_*``: CPU time of this process (all threads) per item, which stays
  meaningful when other processes share the cores (``load_average_1min``): divide
  ``1000 * cores`` by it for the rate on an otherwise idle machine.

Without a model it times a randomly initialised ``small_resnet`` (speed does not depend on
the weights); ``--model`` takes a model file, a bundled name, or a registered
architecture name (random weights).
"""

from __future__ import annotations

import contextlib
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from agegender.artifact import parse_meta
from agegender.infer.predictor import NoModelError, Predictor

DEFAULT_ARCH = "small_resnet"


def make_photos(
    face_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    n: int = 200,
    size: int = 250,
    seed: int = 0,
) -> list[Path]:
    """Write ``n`` ``size``x``size`` JPEG photos, one real face pasted in each."""
    rng = np.random.default_rng(seed)
    faces = sorted(Path(face_dir).glob("*.jpg"))
    if len(faces) < 2:
        raise FileNotFoundError(f"no face JPEGs in {face_dir}")
    picks = rng.choice(len(faces), size=(n, 2), replace=len(faces) < 2 * n)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (a, b) in enumerate(picks):
        bg = Image.open(faces[b]).convert("RGB").resize((size, size))
        bg = bg.filter(ImageFilter.GaussianBlur(12))
        side = int(rng.integers(90, 161))
        face = Image.open(faces[a]).convert("RGB").resize((side, side), Image.Resampling.BILINEAR)
        x, y = (int(v) for v in rng.integers(0, size - side + 1, 2))
        bg.paste(face, (x, y))
        p = out / f"photo_{i:04d}.jpg"
        bg.save(p, quality=90)
        paths.append(p)
    return paths


def _pasted(
    faces: list[Path], size: tuple[int, int], spots: list[tuple[int, int, int]], noise: float
) -> Image.Image:
    """``faces`` pasted at ``spots`` (x, y, side) on a smooth random background."""
    rng = np.random.default_rng(len(spots))
    field = rng.integers(40, 220, (6, 8, 3), dtype=np.uint8)
    bg = Image.fromarray(field).resize(size, Image.Resampling.BICUBIC)
    for face, (x, y, side) in zip(faces, spots, strict=False):
        bg.paste(
            Image.open(face).convert("RGB").resize((side, side), Image.Resampling.BICUBIC), (x, y)
        )
    if noise:
        arr = np.asarray(bg, dtype=np.float32) + rng.normal(0, noise, (size[1], size[0], 1))
        bg = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return bg


def make_phone_and_group_photos(
    face_dir: str | os.PathLike, out_dir: str | os.PathLike, n: int = 6, seed: int = 0
) -> tuple[list[Path], list[Path]]:
    """``n`` 12 MP phone photos (one face of 15-35 % of the height) and ``n`` 1600x1200
    group photos (12 faces of 70-110 px in a 4 x 3 grid), as JPEG quality 90."""
    rng = np.random.default_rng(seed)
    faces = sorted(Path(face_dir).glob("*.jpg"))
    if len(faces) < 12:
        raise FileNotFoundError(f"fewer than 12 face JPEGs in {face_dir}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    phone, group = [], []
    for i in range(n):
        side = int(3000 * rng.uniform(0.15, 0.35))
        x, y = int(rng.integers(0, 4000 - side)), int(rng.integers(0, 3000 - side))
        pick = [faces[int(j)] for j in rng.choice(len(faces), 12, replace=False)]
        p = out / f"phone_{i}.jpg"
        _pasted(pick[:1], (4000, 3000), [(x, y, side)], noise=3.0).save(p, quality=90)
        phone.append(p)
        spots = []
        for k in range(12):
            s = int(rng.integers(70, 111))
            cx, cy = 200 + 400 * (k % 4), 200 + 400 * (k // 4)
            spots.append((cx - s // 2, cy - s // 2, s))
        p = out / f"group_{i}.jpg"
        _pasted(pick, (1600, 1200), spots, noise=0.0).save(p, quality=90)
        group.append(p)
    return phone, group


def _rate(fn: Callable[[], int], seconds: float, min_runs: int = 3) -> tuple[float, float]:
    """``fn`` (returns items done) run repeatedly for ``seconds``: (items per wall-clock
    second, CPU milliseconds of this process, all threads, per item)."""
    fn()  # warm-up
    done, runs = 0, 0
    start, cpu = time.perf_counter(), time.process_time()
    while runs < min_runs or time.perf_counter() - start < seconds:
        done += fn()
        runs += 1
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return done / wall, 1000 * cpu / max(done, 1)


def _module_and_meta(model: str | None) -> tuple[Any, dict[str, Any], str]:
    """A torch module + meta for ``model``: a file/bundled model or a registered arch."""
    from agegender.models import create_model, list_models

    if model is not None and model in list_models():
        arch = model
    elif model is not None and str(model).lower().endswith(".onnx"):
        raise ValueError(
            f"{model}: bench predict needs a PyTorch model (.ckpt, .pt, a bundled name or a "
            "registered architecture): it times the torch and ONNX runtimes of one model"
        )
    else:
        try:
            p = Predictor.load(model, runtime="torch")
        except NoModelError:
            if model is not None:
                raise
            arch = DEFAULT_ARCH
        else:
            inner = p.backend.module.inner  # type: ignore[attr-defined]
            return inner, p.meta, p.name
    m = create_model(arch).eval()
    cfg = m.default_cfg
    meta = {
        "name": f"{arch} (random weights)",
        "arch": arch,
        "tasks": {"gender": True, "age": "groups"},
        "preprocessing": {k: cfg[k] for k in ("input_size", "resize", "mean", "std")},
    }
    return m, meta, meta["name"]


def bench_predict(
    model: str | None = None,
    face_dir: str | os.PathLike | None = None,
    photos: int = 200,
    seconds: float = 2.0,
    detector: str = "blazeface",
    real_photos: str | os.PathLike | None = None,
    tta: str = "none",
    onnx_file: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Measure classifier and end-to-end speed; returns a flat dict of figures (a face
    with ``tta="flip"`` costs the classifier two views).

    The ONNX figures time ``onnx_file`` when given, else a bundled model's own ``.onnx``
    (what ``predict`` runs: an int8 graph where the bundle ships one), else ``model``
    exported on the fly; ``onnx_file`` and ``onnx_weights`` in the result say which."""
    import torch

    from agegender.bundled import bundled_models, resolve_model

    module, meta, name = _module_and_meta(model)
    spec = parse_meta(meta)
    kw: dict[str, Any] = {"detector": detector, "tta": tta}
    torch_p = Predictor.from_module(module, meta, runtime="torch", **kw)
    if onnx_file is None and (model is None or model in bundled_models()):
        with contextlib.suppress(NoModelError, ValueError):
            shipped = resolve_model(model, "onnxruntime")
            onnx_file = shipped if shipped.suffix == ".onnx" else None
    if onnx_file is not None:
        onnx_p = Predictor.load(onnx_file, runtime="onnxruntime", **kw)
        if onnx_p.spec.input_size != spec.input_size:
            raise ValueError(
                f"{onnx_file}: input {onnx_p.spec.input_size} px, the model's is "
                f"{spec.input_size}: not the same model"
            )
    else:
        onnx_p = Predictor.from_module(module, meta, runtime="onnxruntime", **kw)
    quantized = (onnx_p.meta.get("weights") or {}).get("quantized")
    rng = np.random.default_rng(0)
    res: dict[str, Any] = {
        "model": name,
        "tta": tta,
        "arch": spec.arch,
        "input_size": spec.input_size,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "onnx_file": str(onnx_file) if onnx_file is not None else "exported from the model",
        "onnx_weights": quantized["dtype"] if quantized else "float32",
    }
    for bs in (1, 64):
        batch = rng.standard_normal((bs, 3, spec.input_size, spec.input_size)).astype(np.float32)
        for label, p in (("torch", torch_p), ("onnx", onnx_p)):
            rate, cpu_ms = _rate(
                lambda p=p, batch=batch: (p.classify(batch), len(batch))[1], seconds / 2
            )
            res[f"faces_per_s_batch{bs}_{label}"] = round(rate, 1)
            res[f"cpu_ms_per_face_batch{bs}_{label}"] = round(cpu_ms, 3)
    if face_dir is None:
        from agegender.config import default_data_root

        face_dir = default_data_root() / "utkface"
    with tempfile.TemporaryDirectory(prefix="agegender-bench-") as tmp:
        paths = make_photos(face_dir, tmp, n=photos)
        for label, p in (("", onnx_p), ("_torch", torch_p)):
            found = 0

            def run(p: Predictor = p) -> int:
                nonlocal found
                found = sum(1 for r in p.predict_paths(paths) if r.faces)
                return len(paths)

            rate, cpu_ms = _rate(run, seconds, min_runs=1)
            res[f"photos_per_s_end_to_end{label}"] = round(rate, 1)
            res[f"cpu_ms_per_photo_end_to_end{label}"] = round(cpu_ms, 2)
            if not label:
                res["detected_fraction"] = round(found / len(paths), 3)
        n_big = max(2, min(6, photos // 30))  # 6 of each for the default 200 photos
        phone, group = make_phone_and_group_photos(face_dir, Path(tmp) / "phone", n=n_big)
        one_core = {**kw, "workers": 1, "threads": 1}  # one decode/detect worker and thread
        if onnx_file is not None:
            one = Predictor.load(onnx_file, runtime="onnxruntime", **one_core)
        else:
            one = Predictor.from_module(module, meta, runtime="onnxruntime", **one_core)
        for label, items in (("phone_12mp", phone), ("group", group)):
            counts: list[int] = []

            def run_one(items: list[Path] = items, counts: list[int] = counts) -> int:
                counts[:] = [len(r.faces) for r in one.predict_paths(items)]
                return len(items)

            rate, _ = _rate(run_one, seconds, min_runs=1)
            res[f"ms_per_photo_{label}"] = round(1000 / rate, 1)
            res[f"faces_found_{label}"] = round(sum(counts) / len(items), 2)
            res[f"with_face_{label}"] = round(sum(c > 0 for c in counts) / len(items), 3)
        one.close()
    res["photos"] = photos
    res["photo_size"] = 250
    res["detector"] = onnx_p.detector.name
    if real_photos is None:
        from agegender.config import default_data_root

        real_photos = default_data_root() / "fairface-540" / "images"
    real = sorted(Path(real_photos).glob("*.jpg"))
    if real:  # real photos (FairFace-540: 448x448 JPEGs, faces of every size and pose)
        found = 0

        def run_real() -> int:
            nonlocal found
            found = sum(1 for r in onnx_p.predict_paths(real) if r.faces)
            return len(real)

        rate, cpu_ms = _rate(run_real, seconds, min_runs=1)
        res["photos_per_s_end_to_end_real"] = round(rate, 1)
        res["cpu_ms_per_photo_end_to_end_real"] = round(cpu_ms, 2)
        res["detected_fraction_real"] = round(found / len(real), 3)
        res["real_photos"] = f"{len(real)} from {real_photos}"
    return res
