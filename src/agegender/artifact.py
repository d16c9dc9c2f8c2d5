"""The model artifact, written once: what a trained model is and how to use it.

Like torchvision's ``Weights`` (weights that carry their transforms and metadata), every
model file this project writes carries a **meta** dict, and this module is the only place
that writes it, reads it and acts on it:

- **meta** — :func:`make_meta` writes it at training time (architecture, builder options,
  tasks, preprocessing, labels, face framing, where the starting weights came from);
  :func:`parse_meta` reads the part inference needs into a :class:`ModelSpec`. The reader
  accepts exactly the keys the writer writes.
- **rebuild** — :func:`build_model` makes the network a meta describes;
  :func:`make_ensemble` / :func:`ensemble_meta`: several trained models averaged as one.
- **outputs → probabilities** — :func:`output_probabilities` (softmax for gender, age
  groups and DEX; years for regression) and :func:`probability_module` (the same as the
  graph the torch runtime and the ONNX export run, outputs named
  :data:`~agegender.readout.GENDER_OUTPUT` / :data:`~agegender.readout.AGE_OUTPUTS`). What
  the probabilities mean (the gender decision a meta's ``gender_decision`` holds, the
  P(female) reported, the DEX years) is read out in :mod:`agegender.readout`, below this
  module.
- **preprocessing** — :func:`preprocess_crops`: face crops → the normalised batch.
- **files** — :func:`load_model` reads a Lightning ``.ckpt`` (without Lightning) or a
  ``.pt``; :func:`save_torch_model` writes a ``.pt``; ONNX files (meta inside) are
  written and run by :mod:`agegender.infer.onnx`. Every ``torch.load`` is
  ``weights_only=True`` (tensors and plain types only), so a file from someone else cannot
  run code.

Neither this module nor the predictor imports the training package or Lightning.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from agegender.data.records import AGE_GROUP_CUTS, AGE_GROUP_NAMES, GENDERS
from agegender.infer.align import UTKFACE_TEMPLATE
from agegender.readout import (
    AGE_MODES,
    AGE_OUTPUTS,
    GENDER_OUTPUT,
    GENDER_THRESHOLD,
    NO_DECISION,
    GenderDecision,
    parse_decision,
)

if TYPE_CHECKING:
    import torch

    from agegender.config import Config
    from agegender.models import FaceModel

#: The ``format`` of the meta written by :func:`make_meta`.
CHECKPOINT_FORMAT = "agegender-checkpoint/1"


# --------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class ModelSpec:
    """What inference needs to know about a model, read from its meta."""

    name: str
    arch: str
    gender: bool
    age: str  # none | groups | regression | dex
    input_size: int
    resize: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    template: tuple[tuple[float, float], ...] = UTKFACE_TEMPLATE  # landmarks in its crops
    gender_decision: GenderDecision = NO_DECISION  # the network's P(female) -> label, report

    @property
    def gender_threshold(self) -> float:
        """The threshold on the *reported* P(female): 0.5 for every model, since
        :func:`~agegender.readout.gender_probability` moves a calibrated model's
        probabilities so its decision falls there (the thresholds on the network's own
        output: ``gender_decision``)."""
        return GENDER_THRESHOLD

    @property
    def output_names(self) -> list[str]:
        names = [GENDER_OUTPUT] if self.gender else []
        if self.age != "none":
            names.append(AGE_OUTPUTS[self.age])
        return names


def parse_meta(meta: Mapping[str, Any], name: str | None = None) -> ModelSpec:
    """Read the meta written by :func:`make_meta` into a :class:`ModelSpec`.

    Needs ``arch``, ``tasks`` {gender, age} and ``preprocessing`` {input_size, resize,
    mean, std}; ``face_crop.template`` (newer models) says where the landmarks fall in the
    training crops (else UTKFace's); ``gender_decision`` (calibrated models: the
    threshold on the network's P(female), per predicted-age band when it has bands, and
    the slope of the reported probability) is read by
    :func:`~agegender.readout.parse_decision` (else the network's output at 0.5). Raises
    ``ValueError`` naming what is missing.
    """
    if not isinstance(meta, Mapping):
        raise ValueError(f"model meta must be a dict, got {type(meta).__name__}")
    pre, tasks = meta.get("preprocessing"), meta.get("tasks")
    if not isinstance(pre, Mapping) or pre.get("input_size") is None:
        raise ValueError("model meta has no preprocessing input_size")
    if not isinstance(tasks, Mapping):
        raise ValueError("model meta has no tasks")
    input_size = int(pre["input_size"])
    age = str(tasks.get("age", "none"))
    if age not in AGE_MODES:
        raise ValueError(f"model meta has unknown age mode {age!r}")
    face = meta.get("face_crop") if isinstance(meta.get("face_crop"), Mapping) else {}
    template = tuple(tuple(float(v) for v in p) for p in face.get("template", UTKFACE_TEMPLATE))
    if len(template) < 2 or any(len(p) != 2 for p in template):
        raise ValueError("model meta face_crop.template must be (x, y) points")
    arch = str(meta.get("arch") or "?")
    decision = parse_decision(meta.get("gender_decision"))
    return ModelSpec(
        name=str(name or meta.get("name") or arch),
        arch=arch,
        gender=bool(tasks.get("gender", False)),
        age=age,
        input_size=input_size,
        resize=max(int(pre.get("resize") or input_size), input_size),
        mean=tuple(float(v) for v in pre["mean"]),  # type: ignore[arg-type]
        std=tuple(float(v) for v in pre["std"]),  # type: ignore[arg-type]
        template=template,  # type: ignore[arg-type]
        gender_decision=decision,
    )


# --------------------------------------------------------------------------- writing
def model_options(config: Config) -> dict[str, Any]:
    """create_model keyword options from the ``model`` section (only those that are set)."""
    from agegender.models.registry import get_model_entry

    m = config.model
    opts: dict[str, Any] = dict(m.options)
    for key in ("head", "head_hidden", "dropout"):
        value = getattr(m, key)
        if value is not None:
            opts[key] = value
    if "freeze_backbone" in get_model_entry(m.name).options:
        opts.setdefault("freeze_backbone", m.freeze_backbone)
    return opts


def _builder_defaults(name: str) -> dict[str, Any]:
    """The builder's keyword defaults, so a checkpoint survives later default changes."""
    from agegender.models.registry import get_model_entry

    out: dict[str, Any] = {}
    for key, param in inspect.signature(get_model_entry(name).fn).parameters.items():
        if (
            key in ("tasks", "pretrained_file", "pretrained")
            or param.default is inspect.Parameter.empty
        ):
            continue
        value = param.default
        if isinstance(value, tuple):
            value = list(value)
        if value is None or isinstance(value, bool | int | float | str | list):
            out[key] = value
    return out


def make_meta(
    config: Config,
    *,
    size: int,
    input_size: int,
    code_version: str,
    template: Sequence[Sequence[float]] | None = None,
) -> dict:
    """Everything needed to rebuild and feed the model, as plain JSON-able types;
    ``template``: where the landmarks fall in its training crops (default UTKFace's)."""
    from agegender.models.heads import DEX_MAX_AGE
    from agegender.models.registry import get_model_entry

    cfg = get_model_entry(config.model.name).cfg
    return {
        "format": CHECKPOINT_FORMAT,
        "arch": config.model.name,
        "model_options": {**_builder_defaults(config.model.name), **model_options(config)},
        "tasks": {"gender": config.task.gender, "age": config.task.age},
        "preprocessing": {
            "resize": int(size),
            "input_size": int(input_size),
            "crop": "center",
            "interpolation": "bilinear",
            "color": "RGB",
            "mean": [float(x) for x in cfg["mean"]],
            "std": [float(x) for x in cfg["std"]],
            "note": "resize the face crop to resize x resize, take the centre input_size "
            "window, scale to [0, 1], subtract mean, divide by std",
        },
        "labels": {
            "gender": list(GENDERS),
            "gender_codes": {"male": 0, "female": 1},
            "age": config.task.age,
            "age_groups": list(AGE_GROUP_NAMES),
            "age_group_cuts": [float(c) for c in AGE_GROUP_CUTS],
            "dex_ages": [0, DEX_MAX_AGE] if config.task.age == "dex" else None,
        },
        "face_crop": face_crop_meta(template),
        "weights": weights_origin(config),
        "code_version": code_version,
    }


def face_crop_meta(template: Sequence[Sequence[float]] | None = None) -> dict[str, Any]:
    """The face geometry the model is trained on, for the predictor's alignment: where the
    eyes, nose tip and mouth fall in a training crop (fractions of its side)."""
    points = [[float(v) for v in p] for p in (template or UTKFACE_TEMPLATE)]
    utk = points == [list(p) for p in UTKFACE_TEMPLATE]
    return {
        "template": points,
        "landmarks": ["right_eye", "left_eye", "nose_tip", "mouth_center"],
        "framing": "UTKFace aligned crops (other datasets are cut to match: data crop / align)"
        if utk
        else "data.crop: a box other than UTKFace's (the predictor cuts photos the same way)",
    }


def weights_origin(config: Config) -> dict[str, Any]:
    """Where the starting weights came from (the model card and ``summary.json`` say it)."""
    from agegender.models.pretrained import packaged_for
    from agegender.models.registry import get_model_entry

    m = config.model
    out: dict[str, Any] = {
        "init": "init_from" if m.init_from else "file" if m.pretrained_file else m.pretrained,
        "pretrained": m.pretrained,
        "pretrained_file": m.pretrained_file,
        "init_from": m.init_from,
    }
    if m.pretrained == "imagenet":
        timm_name = getattr(get_model_entry(m.name).fn, "timm_name", m.name)
        packaged = packaged_for(timm_name)
        if packaged is not None:
            out["source"] = packaged.source()
            out["license"] = packaged.license
    if m.pretrained == "face":
        from agegender.models.dlib_resnet import FACE_LICENSE, face_weights_source

        out["source"] = face_weights_source()
        out["license"] = FACE_LICENSE
    if out["init"] is None:
        out["init"] = "random"
    return out


# --------------------------------------------------------------------------- ensembles
#: The ``arch`` of a meta that holds several models (:class:`agegender.models.ensemble.Ensemble`).
ENSEMBLE_ARCH = "ensemble"
#: What the members of an ensemble must share: they see one batch and answer one question.
_SHARED = ("input_size", "resize", "mean", "std")


def ensemble_meta(metas: Sequence[Mapping[str, Any]], name: str = ENSEMBLE_ARCH) -> dict:
    """The meta of an ensemble of models with these metas (each member's own meta kept
    under ``members``, the order of the state dict's ``members.<i>``). Members must share
    tasks, input size, normalisation and face framing; a ``ValueError`` names the first
    difference. The ensemble decides gender at 0.5 until it is calibrated itself."""
    if len(metas) < 2:
        raise ValueError(f"an ensemble needs at least 2 models, got {len(metas)}")
    specs = [parse_meta(m) for m in metas]
    first = specs[0]
    for i, s in enumerate(specs[1:], start=1):
        for key in ("gender", "age", *_SHARED, "template"):
            if getattr(s, key) != getattr(first, key):
                raise ValueError(
                    f"model {i + 1} differs from model 1 in {key} "
                    f"({getattr(s, key)!r} vs {getattr(first, key)!r}): an ensemble's "
                    "members must see the same input and predict the same outputs"
                )
    members = [
        {k: v for k, v in m.items() if k not in ("config", "gender_decision")} for m in metas
    ]
    head = members[0]
    return {
        "format": CHECKPOINT_FORMAT,
        "name": name,
        "arch": ENSEMBLE_ARCH,
        "tasks": dict(head["tasks"]),
        "preprocessing": dict(head["preprocessing"]),
        "labels": head.get("labels"),
        "face_crop": head.get("face_crop") or face_crop_meta(first.template),
        "weights": {
            "init": "ensemble",
            "combine": "mean of the members' probabilities",
            "members": [m.get("weights") for m in members],
        },
        "code_version": head.get("code_version"),
        "members": members,
    }


def make_ensemble(
    loaded: Sequence[tuple[Any, Mapping[str, Any]]], name: str = ENSEMBLE_ARCH
) -> tuple[Any, dict]:
    """``(model, meta)`` pairs (as :func:`load_model` returns them) -> the ensemble and its
    meta, with the leading blocks the members share (identical weights) tied and run once
    (``shared_blocks``). A ``ValueError`` from :func:`ensemble_meta` when they do not fit."""
    from agegender.models.ensemble import Ensemble, shared_prefix

    meta = ensemble_meta([m for _, m in loaded], name=name)
    members = [m for m, _ in loaded]
    meta["shared_blocks"] = shared_prefix(members)
    return Ensemble(members, meta["tasks"]["age"], meta["shared_blocks"]).eval(), meta


def interpolate_models(
    start: tuple[Any, Mapping[str, Any]], end: tuple[Any, Mapping[str, Any]], alpha: float
) -> tuple[Any, dict]:
    """Weight-space interpolation of two models of one network (WiSE-FT, Wortsman et al.
    2022): every tensor ``(1 - alpha) * start + alpha * end``. ``start`` is typically the
    model before fine-tuning (e.g. the heads trained on the frozen backbone), ``end`` the
    fine-tuned one; in WiSE-FT's experiments a model between the two kept most of the
    fine-tuned accuracy and more robustness to data unlike the training set (measured on
    our face recipe in ``benchmarks/wise_ft.md``: it did not help there).

    Both are ``(model, meta)`` as :func:`load_model` returns them. They must be the same
    network (architecture, options, tasks, input, framing) with the same tensors; a
    ``ValueError`` names the first difference. The result has ``end``'s meta, the
    interpolation recorded under ``weights``, and decides gender at 0.5 until it is
    calibrated itself (``agegender calibrate``)."""
    import copy

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    (model_a, meta_a), (model_b, meta_b) = start, end
    ensemble_meta([meta_a, meta_b])  # same tasks, input, normalisation and framing
    for key in ("arch", "model_options"):
        if meta_a.get(key) != meta_b.get(key):
            raise ValueError(
                f"model 2 differs from model 1 in {key} ({meta_b.get(key)!r} vs "
                f"{meta_a.get(key)!r}): only two states of one network can be interpolated"
            )
    sa, sb = model_a.state_dict(), model_b.state_dict()
    if sa.keys() != sb.keys():
        missing = sorted(set(sa) ^ set(sb))[0]
        raise ValueError(f"the two models' tensors differ: {missing} is in only one")
    mixed = {}
    for k, a in sa.items():
        b = sb[k]
        if a.shape != b.shape:
            raise ValueError(f"{k}: shape {tuple(a.shape)} vs {tuple(b.shape)}")
        mixed[k] = (1 - alpha) * a + alpha * b if a.is_floating_point() else b.clone()
    model = copy.deepcopy(model_b)
    model.load_state_dict(mixed, strict=True)
    meta = {k: v for k, v in meta_b.items() if k != "gender_decision"}
    meta["weights"] = {
        **dict(meta_b.get("weights") or {}),
        "interpolated": {
            "alpha": alpha,
            "rule": "(1 - alpha) * start + alpha * end, every tensor (WiSE-FT)",
            "start": meta_a.get("name"),
            "end": meta_b.get("name"),
        },
    }
    return model.eval(), meta


# --------------------------------------------------------------------------- rebuilding
def build_model(
    meta: Mapping[str, Any], pretrained_file: str | None = None, pretrained: str | None = None
) -> FaceModel:
    """The FaceModel a meta describes (an :class:`~agegender.models.ensemble.Ensemble` of
    them for an ensemble's meta); starting weights from ``pretrained_file`` or
    ``pretrained`` (``imagenet``/``hub``) for a fresh run only."""
    from agegender.models import TaskSpec, create_model

    if meta.get("arch") == ENSEMBLE_ARCH:
        from agegender.models.ensemble import Ensemble

        members = meta.get("members")
        if not isinstance(members, list) or len(members) < 2:
            raise ValueError("ensemble meta needs a list of at least 2 members")
        return Ensemble(
            [build_model(m) for m in members],
            str(meta["tasks"].get("age")),
            shared_blocks=int(meta.get("shared_blocks", 0)),
        )
    pre = meta["preprocessing"]
    extra = {} if pretrained is None else {"pretrained": pretrained}
    return create_model(
        meta["arch"],
        TaskSpec(**meta["tasks"]),
        pretrained_file=pretrained_file,
        input_size=pre["input_size"],
        **meta.get("model_options", {}),
        **extra,
    )


# --------------------------------------------------------------- outputs and inputs
def output_probabilities(out: Mapping[str, torch.Tensor], age_mode: str) -> dict[str, Any]:
    """Model outputs -> ``gender`` (B, 2) [male, female] and ``age`` probabilities (B, 8
    groups or 101 DEX years) or years (B,) for regression."""
    probs: dict[str, Any] = {}
    if "gender" in out:
        probs["gender"] = out["gender"].float().softmax(-1)
    if "age" in out and age_mode != "none":
        age = out["age"].float()
        probs["age"] = age.reshape(-1) if age_mode == "regression" else age.softmax(-1)
    return probs


def probability_module(model: Any, spec: ModelSpec) -> Any:
    """Wrap a FaceModel so it returns a tuple of probabilities in ``spec.output_names``
    order: the graph both the torch runtime and the ONNX export run."""
    import torch

    class ProbabilityModel(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            probs = output_probabilities(self.inner(x), spec.age)
            return tuple(probs[k] for k in ("gender", "age") if k in probs)

    return ProbabilityModel(model).eval()


def preprocess_crops(crops: Sequence[np.ndarray], spec: ModelSpec) -> np.ndarray:
    """Square uint8 RGB face crops -> the model's normalised float32 batch ``(n, 3, S, S)``:
    resize to ``spec.resize`` (area when shrinking, bilinear when enlarging), centre
    ``spec.input_size`` window, ``(x / 255 - mean) / std``."""
    s, r = spec.input_size, spec.resize
    std = np.asarray(spec.std, dtype=np.float32)
    scale = (1.0 / (255.0 * std)).astype(np.float32)
    offset = (-np.asarray(spec.mean, dtype=np.float32) / std).astype(np.float32)
    out = np.empty((len(crops), 3, s, s), dtype=np.float32)
    for i, crop in enumerate(crops):
        interp = cv2.INTER_AREA if crop.shape[0] > r else cv2.INTER_LINEAR
        img = cv2.resize(crop, (r, r), interpolation=interp)
        if r != s:  # centre crop, like evaluation on the cached ``resize`` images
            o = (r - s) // 2
            img = img[o : o + s, o : o + s]
        out[i] = (img.astype(np.float32) * scale + offset).transpose(2, 0, 1)
    return out


# --------------------------------------------------------------------------- files
def read_checkpoint(path: str | os.PathLike) -> dict:
    """``torch.load`` a Lightning checkpoint, tensors only (``weights_only=True``); a file
    that is not one raises :class:`~agegender.errors.ModelFileError` naming it."""
    from agegender.errors import ModelFileError, torch_load

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    ckpt = torch_load(p)
    if not isinstance(ckpt, dict):
        raise ModelFileError(f"{path}: not a training checkpoint (holds a {type(ckpt).__name__})")
    return ckpt


def _rebuilt(path: str | os.PathLike, meta: Mapping[str, Any], state: dict) -> FaceModel:
    from agegender.errors import ModelFileError

    try:
        parse_meta(meta)
        model = build_model(meta)
        model.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelFileError(
            f"{path}: the weights do not fit the model it describes ({first})"
        ) from exc
    return model.eval()


def load_model(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[FaceModel, dict]:
    """Rebuild a trained model from a ``.ckpt`` (training checkpoint; Lightning is not
    needed) or a ``.pt`` (:func:`save_torch_model`) -> ``(model in eval mode, meta)``.

    A checkpoint's meta also carries ``config``, ``epoch`` and ``global_step``.
    """
    from agegender.errors import ModelFileError, torch_load

    if Path(path).suffix in (".pt", ".pth"):
        blob = torch_load(path)  # tensors only; a file that is not one: ModelFileError
        if not isinstance(blob, dict) or "meta" not in blob or "state_dict" not in blob:
            raise ModelFileError(
                f"{path}: not a model saved by agegender (needs meta + state_dict)"
            )
        meta = dict(blob["meta"])
        state = {  # a file stored in float16 (save_torch_model) computes in float32
            k: v.float() if v.is_floating_point() else v for k, v in blob["state_dict"].items()
        }
        return _rebuilt(path, meta, state).to(map_location), meta
    ckpt = read_checkpoint(path)
    hparams = ckpt.get("hyper_parameters")
    meta = ckpt.get("agegender") or (hparams.get("meta") if isinstance(hparams, dict) else None)
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(f"{path}: not an agegender training checkpoint (no metadata)")
    if not isinstance(ckpt.get("state_dict"), dict):
        raise ModelFileError(f"{path}: not an agegender training checkpoint (no state_dict)")
    meta = dict(meta)
    meta["config"] = hparams.get("config") if isinstance(hparams, dict) else None
    meta["epoch"] = ckpt.get("epoch")
    meta["global_step"] = ckpt.get("global_step")
    state = {k[len("model.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    return _rebuilt(path, meta, state).to(map_location), meta


def plain_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """``meta`` as plain JSON types (anything else as its ``str``), as every model file
    stores it."""
    return json.loads(json.dumps(dict(meta), default=str))


def save_torch_model(
    model: Any, meta: Mapping[str, Any], path: str | os.PathLike, *, dtype: str = "float32"
) -> Path:
    """Save ``{"meta", "state_dict"}`` to ``.pt`` (tensors and plain types only, loadable
    with ``weights_only=True``); :func:`load_model` rebuilds it.

    ``dtype="float16"`` stores the floating-point tensors in half precision: half the file,
    cast back to float32 on load (the bundled models ship so; what that changes in their
    predictions is measured in ``benchmarks/weights_float16.md``)."""
    import torch

    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be float32 or float16, got {dtype!r}")
    parse_meta(meta)  # validate
    state = model.state_dict()
    if dtype == "float16":
        too_big = [k for k, v in state.items() if v.is_floating_point() and v.abs().gt(65504).any()]
        if too_big:
            raise ValueError(f"{too_big[0]}: values beyond float16's range (65504)")
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"meta": plain_meta(meta), "state_dict": state}, path)
    return path
