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

import math
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from agegender.artifact import (
    ModelSpec,
    load_model,
    parse_meta,
    preprocess_crops,
    probability_module,
)
from agegender.bundled import (  # NoModelError, bundled_models: re-exported here too
    DEFAULT_MODEL_NAME,
    NoModelError,  # noqa: F401
    bundled_models,  # noqa: F401
    resolve_model,
)
from agegender.data.imageio import (
    DEFAULT_MAX_PIXELS,
    PixelBudget,
    header_pixels,
)
from agegender.data.records import AGE_GROUP_NAMES, age_to_group
from agegender.evaluate.tta import check_mode
from agegender.infer.decode import Decoded, crop_scale, decode_photo, finer, scale_box
from agegender.infer.detector import (
    DEFAULT_DETECTOR,
    Detector,
    detection_side,
    make_detector,
)
from agegender.infer.faces import FoundFace, crop_faces, detect_faces, largest_face, padded_retry
from agegender.infer.inputs import Input, one_line, source_name
from agegender.infer.results import FaceResult, ImageResult
from agegender.readout import (
    AGE_GROUP_MIDPOINTS,
    AGE_OUTPUTS,
    GENDER_OUTPUT,
    dex_group_matrix,
    dex_years,
    gender_labels,
    gender_probability,
)

#: Test-time views the predictor offers (aligned face chips: no over-sampling crops).
PREDICT_TTA: tuple[str, ...] = ("none", "flip")


# ----------------------------------------------------------------------------- backends

#: A classifier backend: a float32 batch ``(B, 3, H, W)`` -> ``{output name: array}``.
Backend = Callable[[np.ndarray], dict[str, np.ndarray]]


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
        tta: str = "none",
    ) -> None:
        self.tta = check_mode(tta, PREDICT_TTA)  # flip: each face and its mirror, averaged
        self.backend = backend
        self.spec = spec
        self.meta = dict(meta or {})
        self.detector = make_detector(detector)
        self.runtime = runtime
        # crop framing of boxes without landmarks: the argument, else the detector's own
        if margin is None:
            margin = self.detector.margin
        if shift is None:
            shift = self.detector.shift
        self.margin, self.shift = float(margin), float(shift)
        self.align = bool(align)
        self.keep_crops = bool(keep_crops)  # FaceResult.crop: the face the model saw
        self.batch_size = max(1, int(batch_size))
        self.workers = max(1, workers or min(4, os.cpu_count() or 1))
        self.max_pixels = max_pixels
        # pixels decoded at once by all threads (and all concurrent callers) together
        self.budget = PixelBudget(decode_pixels or max(max_pixels, DEFAULT_MAX_PIXELS))
        self.source = source  # where the model came from (path or bundled name)
        self.model_file: Path | None = None  # the file load() read (None: from_module)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._dex_groups = dex_group_matrix(101).astype(np.float64)  # (101, 8)

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

        ``model``: ``None`` (the bundled default), a bundled model's name, a training
        ``.ckpt`` or a ``.pt`` (both via :func:`agegender.artifact.load_model`, without
        Lightning), or an ``.onnx`` file exported by :func:`agegender.infer.onnx.export_onnx`.
        ``runtime``: ``auto`` (ONNX Runtime for .onnx files, torch otherwise), ``torch`` or
        ``onnxruntime``.
        """
        if runtime not in ("auto", "torch", "onnxruntime"):
            raise ValueError(f"unknown runtime {runtime!r}; choose auto, torch or onnxruntime")
        path = resolve_model(model, runtime)
        kwargs.setdefault("source", str(model) if model is not None else DEFAULT_MODEL_NAME)
        if path.suffix == ".onnx":
            if runtime == "torch":
                raise ValueError(f"{path}: an .onnx model runs with --runtime onnxruntime")
            from agegender.infer.onnx import OnnxModel

            backend = OnnxModel(path, intra_op_threads=kwargs.pop("threads", None))
            spec = parse_meta(backend.meta, name=backend.meta.get("name") or path.stem)
            predictor = cls(
                backend, spec, backend.meta, runtime="onnxruntime", detector=detector, **kwargs
            )
        elif path.suffix in (".ckpt", ".pt", ".pth"):
            module, meta = load_model(path)
            meta = dict(meta)
            meta.setdefault("name", path.stem)
            rt = "torch" if runtime == "auto" else runtime
            predictor = cls.from_module(
                module, meta, runtime=rt, device=device, detector=detector, **kwargs
            )
        else:
            raise ValueError(f"{path}: unknown model file type (expected .ckpt, .onnx or .pt)")
        predictor.model_file = path
        return predictor

    # ------------------------------------------------------------------- preprocessing
    def preprocess(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Square uint8 RGB crops -> the model's normalised float32 batch (see
        :func:`agegender.artifact.preprocess_crops`)."""
        return preprocess_crops(crops, self.spec)

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
            photo = decode_photo(item, detection_side(self.detector), max_pixels=self.max_pixels)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a one-line error
            return _Prepared(source, error=one_line(exc))
        w, h = photo.width, photo.height
        try:
            found = self._find(photo)
            if not found:
                return _Prepared(source, error="no face found", width=w, height=h)
            faces = self.preprocess([f.crop for f in found])
        except Exception as exc:  # noqa: BLE001
            return _Prepared(source, error=one_line(exc), width=w, height=h)
        return _Prepared(source, found, faces, width=w, height=h)

    def _find(self, photo: Decoded) -> list[FoundFace]:
        """The faces of ``photo``: found at its decoded scale, cut from a finer decode when
        one is too small there for the model's input, boxes in the photo's own pixels."""
        detect_scaled = getattr(self.detector, "detect_scaled", None)
        if getattr(self.detector, "pyramid", False) and detect_scaled is not None:
            # the pyramid reads the photo at the scales its levels need: a finer decode
            # only when a finer level runs (a group photo), kept for the crops
            held = [photo]

            def image(side: int) -> np.ndarray:
                p = held[0]
                if p.reduced and side > max(p.rgb.shape[:2]):
                    scale = side / max(p.width, p.height)
                    p = held[0] = finer(p, scale, max_pixels=self.max_pixels)
                return p.rgb

            boxes, source = detect_scaled(image, photo.width, photo.height), "detected"
            photo = held[0]
            sx, sy = photo.scale
            if not boxes:
                retry = padded_retry(self.detector, photo.rgb)
                boxes, source = [scale_box(b, 1 / sx, 1 / sy) for b in retry], "padded"
        else:
            boxes, source = detect_faces(self.detector, photo.rgb)
            sx, sy = photo.scale
            boxes = [scale_box(b, 1 / sx, 1 / sy) for b in boxes]  # photo pixels
        if photo.reduced and boxes:
            need = max(crop_scale(b, self.spec.resize, self.spec.template) for b in boxes)
            if need > 1.05 * sx:
                photo = finer(photo, need, max_pixels=self.max_pixels)
                sx, sy = photo.scale
        found = crop_faces(
            photo.rgb,
            [scale_box(b, sx, sy) for b in boxes],
            source,
            self.spec.resize,
            margin=self.margin,
            shift=self.shift,
            align=self.align,
            template=self.spec.template,
        )
        for f, b in zip(found, boxes, strict=True):
            f.box = b
        return found

    def face_batch(
        self, items: Sequence[Input], *, largest: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """The faces found in ``items`` (paths, arrays, PIL images), through the same
        decode -> detect -> align -> preprocess path as :meth:`predict`, as one normalised
        batch ``(n, 3, S, S)``, and for each face the index of its item. ``largest``: only
        each item's largest face (the one a per-photo label belongs to). Items that cannot
        be read or hold no face add nothing (e.g. the calibration faces of ``agegender
        export --quantize int8``, or the faces a benchmark scores several models on)."""
        batches, owners = [], []
        for i, item in enumerate(items):
            prepared = self._prepare(item, source_name(item, i))
            if prepared.faces is None or not len(prepared.faces):
                continue
            faces = prepared.faces
            if largest:
                k = prepared.found.index(largest_face(prepared.found))
                faces = faces[k : k + 1]
            batches.append(faces)
            owners.extend([i] * len(faces))
        s = self.spec.input_size
        if not batches:
            return np.zeros((0, 3, s, s), np.float32), np.zeros(0, int)
        return np.concatenate(batches), np.asarray(owners, int)

    # ---------------------------------------------------------------------- inference
    def classify(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run the classifier on a preprocessed batch ``(B, 3, S, S)`` float32.

        ``tta="flip"``: the batch and its horizontal mirror in one forward pass, every
        output (probabilities, or years) averaged over the two views, as
        :func:`agegender.evaluate.tta.average_views` does in evaluation."""
        if self.tta == "none":
            return self.backend(batch)
        n = len(batch)
        both = self.backend(np.concatenate([batch, batch[..., ::-1]]))
        return {k: (v[:n] + v[n:]) / 2 for k, v in both.items()}

    def _faces(self, probs: dict[str, np.ndarray], found: Sequence[FoundFace]) -> list[FaceResult]:
        out = []
        for i, face in enumerate(found):
            box = face.box
            f = FaceResult(face_index=i, box=box.as_tuple(), detector_score=box.score)
            f.face_source, f.aligned = face.source, face.aligned
            if self.keep_crops:
                f.crop = face.crop
            if box.landmarks is not None:
                f.landmarks = [[float(x), float(y)] for x, y in box.landmarks]
            if self.spec.age == "groups":
                p = probs[AGE_OUTPUTS["groups"]][i].astype(np.float64)
                f.age = float(p @ np.asarray(AGE_GROUP_MIDPOINTS))
                f.age_group_probs = dict(zip(AGE_GROUP_NAMES, map(float, p), strict=True))
                f.age_group = AGE_GROUP_NAMES[int(p.argmax())]
            elif self.spec.age == "dex":
                p = probs[AGE_OUTPUTS["dex"]][i].astype(np.float64)
                f.age = float(dex_years(p))
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
        g = probs.get(GENDER_OUTPUT)
        if g is not None:
            self._decide_gender(out, g)
        return out

    def _decide_gender(self, faces: Sequence[FaceResult], g: np.ndarray) -> None:
        """Each face's gender, through the model's decision (:func:`gender_labels`, at the
        threshold of the face's predicted-age band when the model has bands), and the
        P(female) / P(male) of that decision (:func:`gender_probability`), so the label is
        always the more probable one; ``p_female_raw`` keeps the network's own output."""
        decision = self.spec.gender_decision
        raw = g[:, 1].astype(np.float64)
        ages = np.array([np.nan if f.age is None else f.age for f in faces], np.float64)
        female = gender_labels(raw, decision, ages)
        p_female = gender_probability(raw, decision, ages)
        for i, f in enumerate(faces):
            f.p_female_raw = float(g[i, 1])
            if decision.identity:  # the network's own pair, exactly as it gave them
                f.p_male, f.p_female = float(g[i, 0]), float(g[i, 1])
            else:
                f.p_female = float(p_female[i])
                f.p_male = 1.0 - f.p_female
            f.gender = "female" if female[i] == 1 else "male"

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
            outs = self.classify(batch)
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
                    src = sources[index] if sources is not None else source_name(item, index)
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
        """Model name, architecture, runtime, tasks, the gender threshold on the reported
        P(female) (0.5: female above it) with the decision behind it (the thresholds on the
        network's output, by predicted-age band, and the slope) and preprocessing (for
        /healthz)."""
        s = self.spec
        return {
            "model": s.name,
            "arch": s.arch,
            "runtime": self.runtime,
            "source": self.source,
            "tasks": {"gender": s.gender, "age": s.age},
            "gender_threshold": s.gender_threshold if s.gender else None,
            "gender_decision": s.gender_decision.describe() if s.gender else None,
            "input_size": s.input_size,
            "detector": self.detector.name,
            "tta": self.tta,
        }


# ------------------------------------------------------------------------- config


@dataclass(frozen=True)
class PredictorConfig:
    """How to build a predictor, as plain values (what ``agegender predict``'s options say).

    Picklable, so every engine builds the same predictor from it: the CLI and the local
    engine call :meth:`load` in this process, each Ray actor calls it once in its own
    (:mod:`agegender.infer.distributed`). ``detect_size`` applies to ``blazeface`` (its
    pyramid's finest level) and ``haar``.
    """

    model: str | None = None
    runtime: str = "auto"
    detector: str = DEFAULT_DETECTOR
    detect_size: int | None = None
    margin: float | None = None
    batch_size: int = 64
    workers: int | None = None
    threads: int | None = None
    tta: str = "none"

    def load(self, model_file: str | os.PathLike | None = None) -> Predictor:
        """The predictor; ``model_file``: a local copy of ``model`` to read instead (an
        actor on another machine gets the driver's file this way)."""
        from agegender.infer.detector import HaarDetector

        det: str | Detector = self.detector
        if self.detector == "haar" and self.detect_size:
            det = HaarDetector(detect_size=self.detect_size)
        elif self.detector == "blazeface" and self.detect_size:
            det = make_detector("blazeface", detect_size=self.detect_size)
        predictor = Predictor.load(
            model_file if model_file is not None else self.model,
            runtime=self.runtime,
            detector=det,
            margin=self.margin,
            workers=self.workers,
            batch_size=self.batch_size,
            threads=self.threads,
            tta=self.tta,
            source=self.model if self.model is not None else DEFAULT_MODEL_NAME,
        )
        return predictor
