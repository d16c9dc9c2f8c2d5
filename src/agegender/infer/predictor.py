"""Ready-to-use prediction: detect faces, crop, classify in batches, return typed results.

>>> from agegender.infer import Predictor
>>> predictor = Predictor.load("runs/best.ckpt")            # or model.onnx, or the bundled one
>>> result = predictor.predict("photo.jpg")                 # -> ImageResult
>>> [(f.gender, f.p_female, f.age, f.age_group) for f in result.faces]
>>> for r in predictor.predict_paths(paths, batch_size=64):  # stream many files, input order
...     print(r.source, r.error or len(r.faces))

Inputs may be file paths, encoded bytes, PIL images or numpy arrays (``(H, W, 3)`` RGB
uint8, ``(H, W)`` gray, ``(H, W, 4)`` RGBA, 16-bit or float in 0..1). Paths and bytes are
decoded with :func:`agegender.data.imageio.open_image` (EXIF rotation, odd colour modes,
pixel limit). An input that cannot be decoded, or holds no face, gives an
:class:`ImageResult` whose ``error`` says why; it never stops the others.

Age in years: a regression model predicts it directly; for a DEX model it is the
expectation of the distribution over 0..100; for an age-groups model it is the
probability-weighted mean of the group midpoints :data:`AGE_GROUP_MIDPOINTS` (a coarse
estimate: it can only lie between 1 and 70 years). ``age_group`` is the most probable
group (DEX: group probabilities are the summed probabilities of the ages each group
covers, with :func:`agegender.data.records.ages_to_groups`; regression: the group of the
predicted age, and ``age_group_probs`` is ``None``).
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageOps

from agegender.data.imageio import (
    DEFAULT_MAX_PIXELS,
    ImageError,
    PixelBudget,
    header_pixels,
    open_image,
)
from agegender.data.records import AGE_GROUP_NAMES, age_to_group, ages_to_groups
from agegender.infer.align import UTKFACE_TEMPLATE
from agegender.infer.detector import DEFAULT_DETECTOR, Detector, make_detector
from agegender.infer.faces import FoundFace, find_faces

#: Where the bundled default model lives: ``<name>.onnx`` (meta inside) or ``<name>.pt``.
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_MODEL_NAME = "default"

#: Representative age (years) of each Adience group, for the age estimate of a groups
#: model: the interval midpoints, and for 60+ the mean age of UTKFace faces aged 57 or
#: more (70 years, 3140 faces), i.e. of the faces the age-to-group rule puts in 60+.
AGE_GROUP_MIDPOINTS: tuple[float, ...] = (1.0, 5.0, 10.5, 17.5, 28.5, 40.5, 50.5, 70.0)

#: Output names shared by the torch path and the exported ONNX graph (probabilities).
GENDER_OUTPUT = "gender_probs"
AGE_OUTPUTS = {"groups": "age_group_probs", "regression": "age_years", "dex": "age_probs"}

Input = str | os.PathLike | bytes | bytearray | Image.Image | np.ndarray


class NoModelError(FileNotFoundError):
    """No model given and no bundled model installed (or a named one is missing)."""


# ------------------------------------------------------------------------------ results


@dataclass
class FaceResult:
    """One face: where it is and what the model says about it."""

    face_index: int
    box: tuple[int, int, int, int]  # x, y, w, h in the (EXIF-rotated) image's pixels
    detector_score: float
    p_female: float | None = None
    p_male: float | None = None
    gender: str | None = None  # "female" | "male" (None: model has no gender head)
    age: float | None = None  # years
    age_group: str | None = None  # Adience group name, e.g. "25-32"
    age_group_probs: dict[str, float] | None = None
    age_probs: list[float] | None = None  # DEX only: P(age = k) for k = 0..100
    face_source: str = "detected"  # detected | padded (found on a padded copy) | whole_image
    landmarks: list[list[float]] | None = None  # detector key points (x, y), if any
    aligned: bool = False  # crop aligned on the landmarks (else a square around the box)
    crop: np.ndarray | None = field(default=None, repr=False, compare=False)  # keep_crops

    def to_dict(self, ndigits: int = 6) -> dict[str, Any]:
        # every mutable value below is rebuilt, so a shallow copy is enough; the crop is an
        # array, not JSON (see crop_data_url)
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "crop"}
        d["box"] = list(self.box)
        for k in ("detector_score", "p_female", "p_male", "age"):
            if d[k] is not None:
                d[k] = round(float(d[k]), ndigits)
        if d["age_group_probs"] is not None:
            d["age_group_probs"] = {k: round(v, ndigits) for k, v in d["age_group_probs"].items()}
        if d["age_probs"] is not None:
            d["age_probs"] = [round(v, ndigits) for v in d["age_probs"]]
        if d["landmarks"] is not None:
            d["landmarks"] = [[round(v, 2) for v in pt] for pt in d["landmarks"]]
        return d


@dataclass
class ImageResult:
    """One input image: its faces, or ``error`` (one line) when it gave none."""

    source: str
    faces: list[FaceResult] = field(default_factory=list)
    error: str | None = None
    width: int | None = None
    height: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self, ndigits: int = 6) -> dict[str, Any]:
        return {
            "source": self.source,
            "width": self.width,
            "height": self.height,
            "error": self.error,
            "faces": [f.to_dict(ndigits) for f in self.faces],
        }


# --------------------------------------------------------------------------------- meta


@dataclass(frozen=True)
class ModelSpec:
    """What the predictor needs to know about a model, read from its meta dict."""

    name: str
    arch: str
    gender: bool
    age: str  # none | groups | regression | dex
    input_size: int
    resize: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    margin: float | None = None  # crop framing the model was trained for, if recorded
    shift: float | None = None
    template: tuple[tuple[float, float], ...] = UTKFACE_TEMPLATE  # landmarks in its crops

    @property
    def output_names(self) -> list[str]:
        names = [GENDER_OUTPUT] if self.gender else []
        if self.age != "none":
            names.append(AGE_OUTPUTS[self.age])
        return names


def _first(mappings: Sequence[Mapping[str, Any]], *keys: str, default: Any = None) -> Any:
    for m in mappings:
        for k in keys:
            if isinstance(m, Mapping) and m.get(k) is not None:
                return m[k]
    return default


def _side(value: Any) -> int:
    """An image side from an int or a timm-style ``(C, H, W)`` / ``(H, W)`` size."""
    if isinstance(value, (list, tuple)):
        value = value[-1]
    return int(value)


def parse_meta(meta: Mapping[str, Any], name: str | None = None) -> ModelSpec:
    """Read a checkpoint/ONNX meta dict into a :class:`ModelSpec`.

    Accepts the preprocessing under ``preprocessing``/``preprocess``/``default_cfg``/
    ``data`` or at the top level, and the tasks under ``tasks``/``task`` (a dict with
    ``gender`` and ``age``) or as top-level ``gender``/``age`` keys.
    """
    if not isinstance(meta, Mapping):
        raise ValueError(f"model meta must be a dict, got {type(meta).__name__}")
    pre_blocks = [meta.get(k) for k in ("preprocessing", "preprocess", "default_cfg", "data")]
    pre = [b for b in pre_blocks if isinstance(b, Mapping)] + [meta]
    task_blocks = [meta.get(k) for k in ("tasks", "task", "task_spec")]
    tasks = [b for b in task_blocks if isinstance(b, Mapping)] + [meta]
    input_size = _first(pre, "input_size", "image_size", "size")
    if input_size is None:
        raise ValueError("model meta has no preprocessing input_size")
    input_size = _side(input_size)
    resize = _side(_first(pre, "resize", default=input_size))
    mean = tuple(float(v) for v in _first(pre, "mean", default=(0.485, 0.456, 0.406)))
    std = tuple(float(v) for v in _first(pre, "std", default=(0.229, 0.224, 0.225)))
    if max(mean) > 1.5:  # given on the 0..255 scale
        mean, std = tuple(v / 255 for v in mean), tuple(v / 255 for v in std)
    gender = bool(_first(tasks, "gender", default=True))
    age = str(_first(tasks, "age", "age_mode", default="groups"))
    if age not in ("none", *AGE_OUTPUTS):
        raise ValueError(f"model meta has unknown age mode {age!r}")
    arch = str(_first([meta, *pre], "arch", "architecture", "model_name", "model", default="?"))
    margin = _first(pre, "crop_margin", "margin")
    shift = _first(pre, "crop_shift")
    face = meta.get("face_crop") if isinstance(meta.get("face_crop"), Mapping) else {}
    template = tuple(tuple(float(v) for v in p) for p in face.get("template", UTKFACE_TEMPLATE))
    if len(template) < 2 or any(len(p) != 2 for p in template):
        raise ValueError("model meta face_crop.template must be (x, y) points")
    return ModelSpec(
        name=str(name or meta.get("name") or arch),
        arch=arch,
        gender=gender,
        age=age,
        input_size=input_size,
        resize=max(resize, input_size),
        mean=mean,  # type: ignore[arg-type]
        std=std,  # type: ignore[arg-type]
        margin=None if margin is None else float(margin),
        shift=None if shift is None else float(shift),
        template=template,  # type: ignore[arg-type]
    )


# ----------------------------------------------------------------------------- backends

#: A classifier backend: a float32 batch ``(B, 3, H, W)`` -> ``{output name: array}``.
Backend = Callable[[np.ndarray], dict[str, np.ndarray]]


def probability_module(model: Any, spec: ModelSpec) -> Any:
    """Wrap a FaceModel so it returns a tuple of probabilities in ``spec.output_names`` order.

    Gender and age-group / DEX logits go through softmax; regression years pass through.
    This is the graph both the torch runtime and the ONNX export run.
    """
    import torch

    class ProbabilityModel(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            out = self.inner(x)
            probs = []
            if spec.gender:
                probs.append(torch.softmax(out["gender"].float(), dim=-1))
            if spec.age in ("groups", "dex"):
                probs.append(torch.softmax(out["age"].float(), dim=-1))
            elif spec.age == "regression":
                probs.append(out["age"].float().reshape(-1))
            return tuple(probs)

    return ProbabilityModel(model).eval()


class TorchModel:
    """The torch runtime: ``model(batch) -> {name: probabilities}`` under inference mode."""

    runtime = "torch"

    def __init__(
        self, model: Any, spec: ModelSpec, device: str = "cpu", threads: int | None = None
    ) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.spec = spec
        self.device = torch.device(device)
        self.module = probability_module(model, spec).to(self.device)
        self._torch = torch

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
            outs = self.module(x)
        return {
            k: v.detach().cpu().numpy() for k, v in zip(self.spec.output_names, outs, strict=True)
        }


# ------------------------------------------------------------------------------ helpers


class Cancelled(Exception):
    """:meth:`Predictor.predict_iter` stopped because its ``cancel`` callback said so."""


def _array_to_rgb(arr: np.ndarray, max_pixels: int) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ImageError(f"unsupported array shape {arr.shape}: expected (H, W), (H, W, 3|4)")
    h, w = arr.shape[:2]
    if h == 0 or w == 0:
        raise ImageError(f"image has no pixels ({w}x{h})")
    if h * w > max_pixels:
        raise ImageError(f"image too large: {w}x{h} = {w * h} pixels > limit {max_pixels}")
    if arr.dtype != np.uint8:
        a = arr.astype(np.float64)
        hi = float(np.nanmax(a)) if a.size else 0.0
        scale = 255.0 if hi <= 1.0 else (255.0 / 65535.0 if hi > 255 else 1.0)
        arr = np.clip(np.nan_to_num(a) * scale, 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        return np.ascontiguousarray(np.repeat(arr[:, :, None], 3, axis=2))
    if arr.shape[2] == 4:  # composite over white, like imageio does for RGBA files
        alpha = arr[:, :, 3:4].astype(np.float32) / 255.0
        rgb = arr[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        return np.ascontiguousarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8))
    return np.ascontiguousarray(arr)


def to_rgb_array(item: Input, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode any supported input to an ``(H, W, 3)`` uint8 RGB array (raises ImageError)."""
    if isinstance(item, np.ndarray):
        return _array_to_rgb(item, max_pixels)
    if isinstance(item, Image.Image):
        w, h = item.size
        if w * h > max_pixels:
            raise ImageError(f"image too large: {w}x{h} = {w * h} pixels > limit {max_pixels}")
        img = ImageOps.exif_transpose(item)
        if img.mode in ("RGBA", "LA", "PA", "P") or "transparency" in img.info:
            return _array_to_rgb(np.asarray(img.convert("RGBA")), max_pixels)
        if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            return _array_to_rgb(np.asarray(img), max_pixels)
        return np.ascontiguousarray(np.asarray(img.convert("RGB")))
    if isinstance(item, bytearray):
        item = bytes(item)
    if isinstance(item, (bytes, str, os.PathLike)):
        return np.asarray(open_image(item, max_pixels=max_pixels))
    raise ImageError(f"unsupported input type {type(item).__name__}")


def _source_name(item: Input, index: int) -> str:
    if isinstance(item, (str, os.PathLike)):
        return str(item)
    kind = {bytes: "bytes", bytearray: "bytes"}.get(type(item), "image")
    return f"<{kind} {index}>"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    msg = text[0] if text else ""
    if isinstance(exc, ImageError):
        return msg or "cannot decode image"
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


@dataclass
class _Prepared:
    """An image after decode + detection + preprocessing (made in a worker thread)."""

    source: str
    found: list[FoundFace] = field(default_factory=list)
    faces: np.ndarray | None = None  # (n, 3, S, S) float32, normalised
    error: str | None = None
    width: int | None = None
    height: int | None = None


# ---------------------------------------------------------------------------- predictor


class Predictor:
    """Face detector + batched classifier. Thread-safe: ``predict`` may run concurrently."""

    def __init__(
        self,
        backend: Backend,
        spec: ModelSpec,
        meta: Mapping[str, Any] | None = None,
        *,
        detector: str | Detector = DEFAULT_DETECTOR,
        runtime: str = "torch",
        margin: float | None = None,
        shift: float | None = None,
        align: bool = True,
        keep_crops: bool = False,
        batch_size: int = 64,
        workers: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        decode_pixels: int | None = None,
        source: str | None = None,
    ) -> None:
        self.backend = backend
        self.spec = spec
        self.meta = dict(meta or {})
        self.detector = make_detector(detector)
        self.runtime = runtime
        # crop framing: the argument, else the model's meta, else the detector's default
        # (the "none" detector always uses the whole image)
        none = self.detector.name == "none"
        if margin is None:
            margin = self.detector.margin if none or spec.margin is None else spec.margin
        if shift is None:
            shift = self.detector.shift if none or spec.shift is None else spec.shift
        self.margin, self.shift = float(margin), float(shift)
        self.align = bool(align)
        self.keep_crops = bool(keep_crops)  # FaceResult.crop: the face the model saw
        self.batch_size = max(1, int(batch_size))
        self.workers = max(1, workers or min(4, os.cpu_count() or 1))
        self.max_pixels = max_pixels
        # pixels decoded at once by all threads (and all concurrent callers) together
        self.budget = PixelBudget(decode_pixels or max(max_pixels, DEFAULT_MAX_PIXELS))
        self.source = source  # where the model came from (path or bundled name)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        s = np.asarray(spec.std, dtype=np.float32)
        self._scale = (1.0 / (255.0 * s)).astype(np.float32)
        self._offset = (-np.asarray(spec.mean, dtype=np.float32) / s).astype(np.float32)
        groups = ages_to_groups(np.arange(101, dtype=float))
        self._dex_groups = np.eye(len(AGE_GROUP_NAMES), dtype=np.float64)[groups]  # (101, 8)

    # ------------------------------------------------------------------ construction
    @property
    def name(self) -> str:
        return self.spec.name

    @classmethod
    def from_module(
        cls,
        model: Any,
        meta: Mapping[str, Any],
        *,
        runtime: str = "torch",
        device: str = "cpu",
        threads: int | None = None,
        **kwargs: Any,
    ) -> Predictor:
        """A predictor over an ``nn.Module`` (FaceModel) and its meta dict.

        ``runtime="onnxruntime"`` exports the module to an in-memory ONNX graph first.
        ``threads``: the classifier's intra-op threads (ONNX Runtime: per session; torch:
        ``torch.set_num_threads``, which is process-wide). Default: the runtime's own.
        """
        spec = parse_meta(meta)
        model.eval()
        if runtime == "onnxruntime":
            from agegender.infer.onnx import OnnxModel, export_onnx_bytes

            backend: Backend = OnnxModel(export_onnx_bytes(model, meta), intra_op_threads=threads)
        elif runtime in ("torch", "auto"):
            backend, runtime = TorchModel(model, spec, device, threads=threads), "torch"
        else:
            raise ValueError(f"unknown runtime {runtime!r}; choose torch or onnxruntime")
        return cls(backend, spec, meta, runtime=runtime, **kwargs)

    @classmethod
    def load(
        cls,
        model: str | os.PathLike | None = None,
        *,
        runtime: str = "auto",
        detector: str | Detector = DEFAULT_DETECTOR,
        device: str = "cpu",
        **kwargs: Any,
    ) -> Predictor:
        """Load a model and build a predictor.

        ``model``: ``None`` (the bundled default), a bundled model's name, a Lightning
        ``.ckpt`` (via :func:`agegender.train.load_model`), a ``.onnx`` file exported by
        :func:`agegender.infer.onnx.export_onnx`, or a ``.pt`` saved by
        :func:`save_torch_model`. ``runtime``: ``auto`` (ONNX Runtime for .onnx files,
        torch otherwise), ``torch`` or ``onnxruntime``.
        """
        if runtime not in ("auto", "torch", "onnxruntime"):
            raise ValueError(f"unknown runtime {runtime!r}; choose auto, torch or onnxruntime")
        path = _resolve_model(model, runtime)
        kwargs.setdefault("source", str(model) if model is not None else DEFAULT_MODEL_NAME)
        if path.suffix == ".onnx":
            if runtime == "torch":
                raise ValueError(f"{path}: an .onnx model runs with --runtime onnxruntime")
            from agegender.infer.onnx import OnnxModel

            backend = OnnxModel(path, intra_op_threads=kwargs.pop("threads", None))
            spec = parse_meta(backend.meta, name=backend.meta.get("name") or path.stem)
            return cls(
                backend, spec, backend.meta, runtime="onnxruntime", detector=detector, **kwargs
            )
        if path.suffix == ".ckpt":
            try:
                from agegender.train import load_model
            except ImportError as exc:  # pragma: no cover - the engine ships with the package
                raise NoModelError(f"{path}: cannot load checkpoints ({exc})") from exc
            module, meta = load_model(path)
        elif path.suffix in (".pt", ".pth"):
            module, meta = load_torch_model(path)
        else:
            raise ValueError(f"{path}: unknown model file type (expected .ckpt, .onnx or .pt)")
        meta = dict(meta)
        meta.setdefault("name", path.stem)
        rt = "torch" if runtime == "auto" else runtime
        return cls.from_module(module, meta, runtime=rt, device=device, detector=detector, **kwargs)

    # ------------------------------------------------------------------- preprocessing
    def preprocess(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Square uint8 RGB crops -> normalised float32 batch ``(n, 3, S, S)``."""
        s, r = self.spec.input_size, self.spec.resize
        out = np.empty((len(crops), 3, s, s), dtype=np.float32)
        for i, crop in enumerate(crops):
            interp = cv2.INTER_AREA if crop.shape[0] > r else cv2.INTER_LINEAR
            img = cv2.resize(crop, (r, r), interpolation=interp)
            if r != s:  # centre crop, like evaluation on the cached ``resize`` images
                o = (r - s) // 2
                img = img[o : o + s, o : o + s]
            x = img.astype(np.float32) * self._scale + self._offset
            out[i] = x.transpose(2, 0, 1)
        return out

    def _prepare(
        self, item: Input, source: str, cancel: Callable[[], bool] | None = None
    ) -> _Prepared:
        if cancel is not None and cancel():
            return _Prepared(source, error="cancelled")
        if isinstance(item, np.ndarray):
            pixels: int | None = int(item.shape[0] * item.shape[1]) if item.ndim >= 2 else 0
        elif isinstance(item, Image.Image):
            pixels = item.size[0] * item.size[1]
        else:
            pixels = header_pixels(os.fspath(item) if isinstance(item, os.PathLike) else item)
        if pixels is not None and pixels > self.max_pixels:  # refused before any decoding
            return _Prepared(
                source, error=f"image too large: {pixels} pixels > limit {self.max_pixels}"
            )
        with self.budget.hold(pixels):
            return self._decode_and_find(item, source)

    def _decode_and_find(self, item: Input, source: str) -> _Prepared:
        try:
            rgb = to_rgb_array(item, self.max_pixels)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a one-line error
            return _Prepared(source, error=_one_line(exc))
        h, w = rgb.shape[:2]
        try:
            found = find_faces(
                rgb,
                self.detector,
                self.spec.resize,
                margin=self.margin,
                shift=self.shift,
                align=self.align,
                template=self.spec.template,
            )
            if not found:
                return _Prepared(source, error="no face found", width=w, height=h)
            faces = self.preprocess([f.crop for f in found])
        except Exception as exc:  # noqa: BLE001
            return _Prepared(source, error=_one_line(exc), width=w, height=h)
        return _Prepared(source, found, faces, width=w, height=h)

    # ---------------------------------------------------------------------- inference
    def classify(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run the classifier on a preprocessed batch ``(B, 3, S, S)`` float32."""
        return self.backend(batch)

    def _faces(self, probs: dict[str, np.ndarray], found: Sequence[FoundFace]) -> list[FaceResult]:
        out = []
        g = probs.get(GENDER_OUTPUT)
        for i, face in enumerate(found):
            box = face.box
            f = FaceResult(face_index=i, box=box.as_tuple(), detector_score=box.score)
            f.face_source, f.aligned = face.source, face.aligned
            if self.keep_crops:
                f.crop = face.crop
            if box.landmarks is not None:
                f.landmarks = [[float(x), float(y)] for x, y in box.landmarks]
            if g is not None:
                f.p_male, f.p_female = float(g[i, 0]), float(g[i, 1])
                f.gender = "female" if f.p_female > 0.5 else "male"
            if self.spec.age == "groups":
                p = probs[AGE_OUTPUTS["groups"]][i].astype(np.float64)
                f.age = float(p @ np.asarray(AGE_GROUP_MIDPOINTS))
                f.age_group_probs = dict(zip(AGE_GROUP_NAMES, map(float, p), strict=True))
                f.age_group = AGE_GROUP_NAMES[int(p.argmax())]
            elif self.spec.age == "dex":
                p = probs[AGE_OUTPUTS["dex"]][i].astype(np.float64)
                f.age = float(p @ np.arange(len(p)))
                f.age_probs = [float(v) for v in p]
                gp = p @ self._dex_groups[: len(p)]
                f.age_group_probs = dict(zip(AGE_GROUP_NAMES, map(float, gp), strict=True))
                f.age_group = AGE_GROUP_NAMES[int(gp.argmax())]
            elif self.spec.age == "regression":
                years = float(probs[AGE_OUTPUTS["regression"]][i])
                f.age = max(0.0, years) if math.isfinite(years) else None
                if f.age is not None:
                    f.age_group = AGE_GROUP_NAMES[age_to_group(f.age)]
            out.append(f)
        return out

    def predict(
        self, x: Input | Sequence[Input], *, sources: Sequence[str] | None = None
    ) -> ImageResult | list[ImageResult]:
        """Predict one input (-> ImageResult) or a list of inputs (-> list, same order)."""
        if isinstance(x, (list, tuple)):
            return list(self.predict_iter(x, sources=sources))
        return next(iter(self.predict_iter([x], sources=sources)))

    def predict_paths(
        self, paths: Iterable[str | os.PathLike], batch_size: int | None = None
    ) -> Iterator[ImageResult]:
        """Stream many image files; results come in input order, one per path."""
        return self.predict_iter(paths, batch_size=batch_size)

    def predict_iter(
        self,
        items: Iterable[Input],
        *,
        batch_size: int | None = None,
        sources: Sequence[str] | None = None,
        cancel: Callable[[], bool] | None = None,
        pool: ThreadPoolExecutor | None = None,
    ) -> Iterator[ImageResult]:
        """Decode + detect in a thread pool, classify faces in batches across images.

        Yields one :class:`ImageResult` per input, in input order, as soon as all of its
        faces are classified. At most ``batch_size`` faces go through one forward pass.
        Images are decoded under the predictor's pixel budget (:class:`PixelBudget`), so
        peak memory is bounded whatever the inputs. ``cancel`` (e.g. a deadline or a client
        that went away) is polled between images and batches: once it returns True, no new
        image is decoded and :class:`Cancelled` is raised. ``pool``: decode/detect threads to
        use instead of the predictor's shared ones (the service keeps heavy requests apart).
        """

        def check() -> None:
            if cancel is not None and cancel():
                raise Cancelled("prediction cancelled")

        bs = max(1, batch_size or self.batch_size)
        lookahead = max(2 * self.workers, 8)
        pool = pool or self._executor()
        futures: deque[Future[_Prepared]] = deque()
        queue: list[tuple[int, int]] = []  # (pending position key, face index) awaiting forward
        store: dict[int, tuple[_Prepared, dict[str, list[np.ndarray]]]] = {}
        next_key = 0
        done_key = 0  # keys < done_key have been yielded

        def run_batch(n: int) -> None:
            nonlocal queue
            take, queue = queue[:n], queue[n:]
            batch = np.stack([store[k][0].faces[j] for k, j in take])  # type: ignore[index]
            outs = self.backend(batch)
            for row, (k, _j) in enumerate(take):
                acc = store[k][1]
                for name, arr in outs.items():
                    acc.setdefault(name, []).append(arr[row])

        def finished(key: int) -> bool:
            prep, acc = store[key]
            n = 0 if prep.faces is None else len(prep.faces)
            got = len(next(iter(acc.values()))) if acc else 0
            return got >= n

        def result(key: int) -> ImageResult:
            prep, acc = store.pop(key)
            r = ImageResult(prep.source, error=prep.error, width=prep.width, height=prep.height)
            if prep.faces is not None and len(prep.faces):
                probs = {k: np.stack(v) for k, v in acc.items()}
                r.faces = self._faces(probs, prep.found)
            return r

        try:
            it = iter(items)
            index = 0
            exhausted = False
            while True:
                check()
                while not exhausted and len(futures) < lookahead:
                    try:
                        item = next(it)
                    except StopIteration:
                        exhausted = True
                        break
                    src = sources[index] if sources is not None else _source_name(item, index)
                    futures.append(pool.submit(self._prepare, item, src, cancel))
                    index += 1
                if not futures:
                    break
                prep = futures.popleft().result()
                check()
                store[next_key] = (prep, {})
                if prep.faces is not None:
                    queue.extend((next_key, j) for j in range(len(prep.faces)))
                next_key += 1
                while len(queue) >= bs:
                    run_batch(bs)
                if not futures and exhausted and queue:
                    run_batch(len(queue))
                while done_key < next_key and finished(done_key):
                    yield result(done_key)
                    done_key += 1
            while queue:
                check()
                run_batch(min(bs, len(queue)))
            while done_key < next_key:
                yield result(done_key)
                done_key += 1
        finally:
            for f in futures:
                f.cancel()

    def _executor(self) -> ThreadPoolExecutor:
        """The decode/detect threads, shared by every call (and by concurrent callers)."""
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="agegender")
            return self._pool

    def close(self) -> None:
        """Stop the worker threads (a later call starts new ones)."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def __del__(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def info(self) -> dict[str, Any]:
        """Model name, architecture, runtime, tasks and preprocessing (for /healthz)."""
        s = self.spec
        return {
            "model": s.name,
            "arch": s.arch,
            "runtime": self.runtime,
            "source": self.source,
            "tasks": {"gender": s.gender, "age": s.age},
            "input_size": s.input_size,
            "detector": self.detector.name,
        }


# ------------------------------------------------------------------- model files/bundle


def bundled_models() -> list[str]:
    """Names of the models shipped in the package (``default`` first)."""
    names = {p.stem for p in WEIGHTS_DIR.glob("*") if p.suffix in (".onnx", ".pt")}
    return sorted(names, key=lambda n: (n != DEFAULT_MODEL_NAME, n))


def _resolve_model(model: str | os.PathLike | None, runtime: str = "auto") -> Path:
    if model is None:
        name = DEFAULT_MODEL_NAME
    else:
        path = Path(model)
        if path.suffix in (".ckpt", ".onnx", ".pt", ".pth"):
            if not path.is_file():
                raise NoModelError(f"model file not found: {path}")
            return path
        if path.exists():
            raise ValueError(f"{path}: not a model file (expected .ckpt, .onnx or .pt)")
        name = str(model)
    # a bundled model may ship both files: torch runtime -> .pt, otherwise ONNX first
    order = (".pt", ".onnx") if runtime == "torch" else (".onnx", ".pt")
    for suffix in order:
        candidate = WEIGHTS_DIR / f"{name}{suffix}"
        if candidate.is_file():
            return candidate
    if model is None:
        raise NoModelError(
            f"no bundled model is installed (looked for {DEFAULT_MODEL_NAME}.onnx / "
            f"{DEFAULT_MODEL_NAME}.pt in {WEIGHTS_DIR}); pass a model: a .ckpt from "
            "'agegender train', or an .onnx from 'agegender export'"
        )
    raise NoModelError(
        f"model {name!r} is neither a file nor a bundled model (none in {WEIGHTS_DIR})"
    )


def save_torch_model(model: Any, meta: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Save ``{"meta", "state_dict"}`` to ``.pt``; :func:`load_torch_model` rebuilds it.

    ``meta`` must name the registered architecture (``arch``), its tasks, preprocessing
    and builder options (``model_options``), as :func:`agegender.train.load_model` gives.
    """
    import torch

    parse_meta(meta)  # validate
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {
        "meta": json.loads(json.dumps(dict(meta), default=str)),
        "state_dict": model.state_dict(),
    }
    torch.save(blob, path)
    return path


def load_torch_model(path: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
    """Rebuild a model saved by :func:`save_torch_model` -> ``(model, meta)``."""
    from agegender.errors import ModelFileError, torch_load
    from agegender.models import create_model

    blob = torch_load(path)  # tensors only; a file that is not one: ModelFileError
    if not isinstance(blob, dict) or "meta" not in blob or "state_dict" not in blob:
        raise ModelFileError(f"{path}: not a model saved by agegender (needs meta + state_dict)")
    meta = blob["meta"]
    try:
        spec = parse_meta(meta)
        kwargs = dict(meta.get("model_options") or {})  # builder options, as training saves
        kwargs["input_size"] = spec.input_size
        model = create_model(spec.arch, {"gender": spec.gender, "age": spec.age}, **kwargs)
        model.load_state_dict(blob["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelFileError(f"{path}: not a model we can load ({first})") from exc
    return model.eval(), meta


# ------------------------------------------------------------------ inputs and drawing


def _read_list(list_file: Path) -> list[str]:
    """Paths from a ``.txt`` (one per line, ``#`` comments) or ``.csv`` (``path`` column,
    else the first column) list; relative paths are relative to the list's folder."""
    import csv

    base = list_file.parent
    text = list_file.read_text(encoding="utf-8-sig", errors="replace")
    if list_file.suffix.lower() == ".csv":
        rows = list(csv.reader(text.splitlines()))
        if not rows:
            return []
        header = [h.strip().lower() for h in rows[0]]
        col, body = (header.index("path"), rows[1:]) if "path" in header else (0, rows)
        values = [r[col].strip() for r in body if len(r) > col and r[col].strip()]
    else:
        values = [ln.strip() for ln in text.splitlines()]
        values = [v for v in values if v and not v.startswith("#")]
    return [v if Path(v).is_absolute() else str(base / v) for v in values]


def collect_image_paths(inputs: Iterable[str | os.PathLike]) -> list[str]:
    """Expand image files, folders (recursive, image names only) and ``.csv``/``.txt``
    lists of paths into one list, in the order given (folders sorted).

    A missing argument is kept, like a missing path inside a list file: it becomes a
    per-image error row and the other inputs are still predicted. Raises ``ValueError``
    only when none of the arguments exists (most likely a typo in the command).
    """
    from agegender.data.imageio import is_image_name

    out: list[str] = []
    missing: list[str] = []
    inputs = list(inputs)
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out.extend(str(f) for f in sorted(p.rglob("*")) if f.is_file() and is_image_name(f))
        elif p.is_file() and p.suffix.lower() in (".csv", ".txt"):
            out.extend(_read_list(p))
        elif p.is_file():
            out.append(str(p))
        else:
            missing.append(str(p))
            out.append(str(p))  # predicted as a per-image "file not found" result
    if missing and len(missing) == len(inputs):
        raise ValueError(f"no such file or folder: {missing[0]}")
    return out


def crop_data_url(crop: np.ndarray) -> str:
    """A face crop as a ``data:image/png;base64,...`` URL (for the web page)."""
    import base64

    ok, buf = cv2.imencode(".png", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("cannot encode the face crop")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def face_label(face: FaceResult) -> str:
    """A short label such as ``female 93%, 27 y (25-32)``."""
    parts = []
    if face.gender is not None and face.p_female is not None and face.p_male is not None:
        parts.append(f"{face.gender} {100 * max(face.p_female, face.p_male):.0f}%")
    if face.age is not None:
        parts.append(f"{face.age:.0f} y" + (f" ({face.age_group})" if face.age_group else ""))
    return ", ".join(parts)


def draw_results(rgb: np.ndarray, result: ImageResult) -> np.ndarray:
    """A copy of ``rgb`` with each face's box and label drawn on it."""
    img = np.ascontiguousarray(rgb.copy())
    h, w = img.shape[:2]
    thick = max(1, round(max(h, w) / 300))
    scale = max(0.4, max(h, w) / 800)
    colors = [(230, 25, 75), (60, 180, 75), (67, 99, 216), (245, 130, 49), (145, 30, 180)]
    for face in result.faces:
        x, y, bw, bh = face.box
        color = colors[face.face_index % len(colors)]
        cv2.rectangle(img, (x, y), (x + bw, y + bh), color, thick)
        for px, py in face.landmarks or []:
            cv2.circle(img, (round(px), round(py)), max(2, 2 * thick), color, -1, cv2.LINE_AA)
        text = f"{face.face_index}: {face_label(face)}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        ty = y - 4 if y - th - base - 4 >= 0 else min(h - 1, y + bh + th + 4)
        lx = max(0, min(x, w - tw - 4))  # keep the label inside the image
        cv2.rectangle(img, (lx, ty - th - base), (lx + tw + 4, ty + base), color, -1)
        cv2.putText(
            img,
            text,
            (lx + 2, ty),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (255, 255, 255),
            thick,
            cv2.LINE_AA,
        )
    return img


def result_rows(result: ImageResult) -> list[dict[str, Any]]:
    """Flat rows (one per face, or one with ``error`` when there is none) for CSV/JSON."""
    base = {"path": result.source}
    if not result.faces:
        return [
            {
                **base,
                "face_index": None,
                "x": None,
                "y": None,
                "w": None,
                "h": None,
                "detector_score": None,
                "p_female": None,
                "p_male": None,
                "gender": None,
                "age": None,
                "age_group": None,
                "face_source": None,
                "error": result.error,
            }
        ]
    rows = []
    for f in result.faces:
        d = f.to_dict()
        x, y, bw, bh = f.box
        row = {
            **base,
            "face_index": f.face_index,
            "x": x,
            "y": y,
            "w": bw,
            "h": bh,
            "detector_score": d["detector_score"],
            "p_female": d["p_female"],
            "p_male": d["p_male"],
            "gender": f.gender,
            "age": d["age"],
            "age_group": f.age_group,
            "face_source": f.face_source,
            "error": None,
        }
        for name, prob in (d["age_group_probs"] or {}).items():
            row[f"p_age_{name}"] = prob
        rows.append(row)
    return rows
