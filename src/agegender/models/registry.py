"""The model registry (shaped like timm's ``_registry.py`` + ``_factory.py``) and FaceModel.

Register a builder with :func:`register_model`; build any registered model with
:func:`create_model`. Every model is a :class:`FaceModel`: ``backbone -> neck -> heads``.
Look the registry up with :func:`list_models`, :func:`is_model` and :func:`get_model_entry`
(a read-only :class:`ModelEntry`: builder, ``default_cfg``, accepted options).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from agegender.models.heads import TaskSpec

__all__ = [
    "FaceModel",
    "ModelEntry",
    "create_model",
    "get_model_entry",
    "is_model",
    "list_models",
    "load_weights",
    "model_info",
    "keras_param_count",
    "register_model",
]

_logger = logging.getLogger(__name__)

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Keys every ``default_cfg`` has; ``register_model`` fills the ones left out.
_CFG_DEFAULTS: dict[str, Any] = {
    "input_size": 224,
    "resize": None,  # None -> input_size
    "min_input_size": 32,
    "mean": IMAGENET_MEAN,
    "std": IMAGENET_STD,
    "description": "",
    "family": None,  # None -> the defining module's name (levi_hassner, small_cnn, timm, ...)
    # the face framing its input expects (agegender.infer.align.FACE_TEMPLATES): training
    # faces and photos are cut to it
    "face_template": "utkface",
    # the values of model.pretrained its builder can load (none: no ``pretrained`` option)
    "pretrained_choices": (),
}

# Options create_model handles itself, never passed to a builder.
_FACTORY_KWARGS = ("input_size",)


class FaceModel(nn.Module):
    """A face classifier: ``backbone`` (feature extractor) -> ``neck`` (shared) -> ``heads``.

    ``forward(x)`` takes a normalised float batch ``(B, 3, H, W)`` and returns a dict with
    ``"gender"`` ``(B, 2)`` logits (0 = male, 1 = female) and/or ``"age"`` (see
    :class:`~agegender.models.heads.TaskSpec`). ``create_model`` sets ``name``,
    ``default_cfg`` (input_size, resize, mean, std, description, min_input_size, family)
    and ``tasks``.

    BatchNorm layers of the backbone whose parameters are frozen stay in eval mode even
    under ``model.train()`` (Keras ``trainable=False`` semantics), so a frozen backbone
    is a fixed feature extractor.
    """

    def __init__(
        self,
        backbone: nn.Module,
        neck: nn.Module,
        heads: nn.ModuleDict,
        tasks: TaskSpec,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.heads = heads
        self.tasks = tasks
        self.name = ""
        self.default_cfg: dict[str, Any] = {}
        self.load_report: dict[str, list[str]] | None = None  # set when weights were loaded

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone output (a spatial map ``(B, C, h, w)`` for every registered model)."""
        return self.backbone(x)

    def forward_head(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Shared neck then one output per task."""
        z = self.neck(features)
        return {task: head(z) for task, head in self.heads.items()}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_head(self.forward_features(x))

    def forward_from(self, block: int, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The outputs from the output ``x`` of the first ``block`` backbone blocks (a
        backbone that is an ``nn.Sequential`` of them: the frozen-prefix feature cache)."""
        for b in self.backbone_blocks()[block:]:
            x = b(x)
        return self.forward_head(x)

    def forward_prefix(self, block: int, x: torch.Tensor) -> torch.Tensor:
        """The output of the first ``block`` backbone blocks (``forward_from``'s input)."""
        if not isinstance(self.backbone, nn.Sequential):
            raise ValueError(f"model {self.name!r}: its backbone is not a sequence of blocks")
        for b in self.backbone_blocks()[:block]:
            x = b(x)
        return x

    def backbone_blocks(self) -> list[nn.Module]:
        """The backbone's layers ordered input -> output, for "train only the last N"."""
        if isinstance(self.backbone, nn.Sequential):
            return list(self.backbone.children())
        return [self.backbone]

    def freeze_backbone(self, trainable_last_n: int = 0) -> None:
        """Freeze the backbone except its last ``trainable_last_n`` blocks (0 = all frozen)."""
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        if trainable_last_n > 0:
            for block in self.backbone_blocks()[-trainable_last_n:]:
                for p in block.parameters():
                    p.requires_grad_(True)
        self.train(self.training)

    def unfreeze_backbone(self) -> None:
        """Make every backbone parameter trainable again."""
        for p in self.backbone.parameters():
            p.requires_grad_(True)
        self.train(self.training)

    def train(self, mode: bool = True) -> FaceModel:
        super().train(mode)
        if mode:
            for m in self.backbone.modules():
                if (
                    isinstance(m, nn.modules.batchnorm._BatchNorm)
                    and m.weight is not None
                    and not m.weight.requires_grad
                ):
                    m.eval()
        return self


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One registered model, as :func:`get_model_entry` returns it (read-only).

    ``name``: the registered name; ``fn``: its builder, ``fn(tasks, **options) ->
    FaceModel`` (use :func:`create_model` to build); ``cfg``: its ``default_cfg``
    (input_size, resize, min_input_size, mean, std, description, family), a read-only
    mapping; ``options``: the keyword options the builder takes (besides ``tasks``);
    ``takes_pretrained_file``: whether the builder loads ``pretrained_file`` itself.
    """

    name: str
    fn: Callable[..., FaceModel]
    cfg: Mapping[str, Any]
    options: tuple[str, ...]
    takes_pretrained_file: bool

    @classmethod
    def of(cls, name: str, fn: Callable[..., FaceModel], cfg: dict[str, Any]) -> ModelEntry:
        params = inspect.signature(fn).parameters
        kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        return cls(
            name=name,
            fn=fn,
            cfg=MappingProxyType(dict(cfg)),
            options=tuple(k for k, p in params.items() if k != "tasks" and p.kind in kinds),
            takes_pretrained_file="pretrained_file" in params,
        )


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, **default_cfg: Any) -> Callable[[Callable[..., FaceModel]], Any]:
    """Register ``fn(tasks, **options) -> FaceModel`` as ``name`` with its ``default_cfg``.

    ``default_cfg`` keys: ``input_size``, ``resize`` (defaults to input_size),
    ``min_input_size``, ``mean``, ``std``, ``description``, ``family``, ``face_template``,
    ``pretrained_choices``.
    A builder that accepts ``pretrained_file`` loads it itself; for the others
    :func:`create_model` loads the file as a FaceModel state dict.
    """

    def decorator(fn: Callable[..., FaceModel]) -> Callable[..., FaceModel]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        unknown = set(default_cfg) - set(_CFG_DEFAULTS)
        if unknown:
            raise ValueError(f"register_model({name!r}): unknown cfg keys {sorted(unknown)}")
        cfg = {**_CFG_DEFAULTS, **default_cfg}
        if cfg["resize"] is None:
            cfg["resize"] = cfg["input_size"]
        if cfg["family"] is None:
            cfg["family"] = fn.__module__.rsplit(".", 1)[-1]
        cfg["mean"], cfg["std"] = tuple(cfg["mean"]), tuple(cfg["std"])
        _REGISTRY[name] = ModelEntry.of(name, fn, cfg)
        return fn

    return decorator


def list_models() -> list[str]:
    """Every registered model name, sorted."""
    return sorted(_REGISTRY)


def is_model(name: str) -> bool:
    """Whether ``name`` is a registered model."""
    return name in _REGISTRY


def get_model_entry(name: str) -> ModelEntry:
    """The registered model ``name`` (:class:`ModelEntry`); ``ValueError`` naming close
    matches and every registered model when there is none."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown model {name!r}{hint} (available: {', '.join(list_models())})"
        ) from None


def create_model(
    name: str,
    tasks: TaskSpec | Mapping[str, Any] | None = None,
    *,
    pretrained_file: str | Path | None = None,
    **kwargs: Any,
) -> FaceModel:
    """Build the registered model ``name`` for ``tasks`` (default: gender + age groups).

    ``pretrained_file``: local weights, never the network. A FaceModel state dict (keys
    ``backbone.*``/``neck.*``/``heads.*``, or a checkpoint holding one under ``state_dict``
    / ``model``) loads into the whole model with ``strict=False``; missing, unexpected and
    shape-mismatched keys are logged and kept in ``model.load_report``. For timm
    backbones any other file is a timm/ImageNet backbone state dict, loaded through timm.

    ``input_size`` overrides ``default_cfg["input_size"]`` (and scales ``resize``); every
    other keyword goes to the model's builder (``dropout``, ``head_hidden``, ``head``, ...).
    Raises ``ValueError`` for an unknown model or age mode and ``TypeError`` for an
    option the model does not take.
    """
    entry = get_model_entry(name)
    if tasks is None:
        tasks = TaskSpec()
    elif isinstance(tasks, Mapping):
        tasks = TaskSpec(**tasks)
    tasks = dataclasses.replace(tasks)  # validates; the model keeps its own copy
    unknown = [k for k in kwargs if k not in entry.options and k not in _FACTORY_KWARGS]
    if unknown:
        accepted = [k for k in entry.options if k != "pretrained_file"] + list(_FACTORY_KWARGS)
        raise TypeError(
            f"model {name!r} got unknown option(s) {', '.join(map(repr, unknown))}; "
            f"accepted: {', '.join(accepted)}"
        )
    cfg = dict(entry.cfg)
    input_size = kwargs.pop("input_size", None)
    if input_size is not None:
        input_size = int(input_size)
        if input_size < cfg["min_input_size"]:
            raise ValueError(
                f"model {name!r} needs input_size >= {cfg['min_input_size']}, got {input_size}"
            )
        cfg["resize"] = round(cfg["resize"] * input_size / cfg["input_size"])
        cfg["input_size"] = input_size

    state = None
    if pretrained_file is not None:
        state = read_state_dict(pretrained_file)
        if entry.takes_pretrained_file and not _is_face_state(state):
            kwargs["pretrained_file"] = str(pretrained_file)
            state = None
    model = entry.fn(tasks=tasks, **kwargs)
    model.name, model.tasks, model.default_cfg = name, tasks, cfg
    if state is not None:
        model.load_report = load_weights(model, state, source=str(pretrained_file))
    return model


def keras_param_count(model: nn.Module) -> int:
    """Parameters as Keras's ``model.summary()`` counts them, to compare with the reports.

    Every weight, plus BatchNorm's moving mean and variance (Keras counts them as
    non-trainable parameters; PyTorch keeps them as buffers), with a binary gender output
    counted as the reports build it: one sigmoid unit, where our head has two logits (the
    same function, one ``in_features + 1`` more parameters).
    """
    count = sum(p.numel() for p in model.parameters())
    count += sum(
        b.numel()
        for key, b in model.named_buffers()
        if key.endswith(("running_mean", "running_var"))
    )
    heads = getattr(model, "heads", None)
    if heads is not None and "gender" in heads:
        last = [m for m in heads["gender"].modules() if isinstance(m, nn.Linear)][-1]
        count -= last.in_features + 1
    return int(count)


def model_info(name: str) -> dict[str, Any]:
    """``name``, ``description``, ``input_size``, ``params`` (default TaskSpec), ``family``.

    Also ``resize`` and ``min_input_size``. Built once on the meta device (no memory).
    """
    return dict(_model_info(get_model_entry(name).name))


@functools.cache
def _model_info(name: str) -> dict[str, Any]:
    entry = _REGISTRY[name]
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = entry.fn(tasks=TaskSpec())
    cfg = entry.cfg
    return {
        "name": name,
        "description": cfg["description"],
        "input_size": cfg["input_size"],
        "resize": cfg["resize"],
        "min_input_size": cfg["min_input_size"],
        "params": sum(p.numel() for p in model.parameters()),
        "family": cfg["family"],
    }


# ---------------------------------------------------------------------------- weights


def read_state_dict(path: str | Path, *, mmap: bool = False) -> dict[str, torch.Tensor]:
    """Tensors from a ``.pt``/``.pth``/``.ckpt``/``.safetensors`` file (weights only).

    A file that is not one raises :class:`~agegender.errors.ModelFileError` naming it;
    ``mmap``: map a zip-format ``.pt`` instead of reading it (a cheap up-front check).

    A checkpoint dict holding ``state_dict`` or ``model`` is unwrapped, and a common
    ``model.``/``module.`` prefix (Lightning, DDP) is stripped; when only some keys carry
    it (a LightningModule with more state than ``self.model``) and those keys form a
    FaceModel state dict, just those are kept.
    """
    from agegender.errors import ModelFileError, torch_load

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - safetensors' own error types
            raise ModelFileError(
                f"{path}: not a weights file we can load (not a safetensors file)"
            ) from exc
    else:
        obj = torch_load(path, mmap=mmap)
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelFileError(f"{path}: does not hold a state dict of tensors")
    state = dict(obj)
    for prefix in ("model.", "module."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
        elif not _is_face_state(state):  # e.g. a LightningModule holding `self.model`
            sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            if _is_face_state(sub):
                state = sub
    return state


def _is_face_state(state: Mapping[str, Any]) -> bool:
    return any(k.startswith(("backbone.", "neck.", "heads.")) for k in state)


def load_weights(
    module: nn.Module, state: Mapping[str, torch.Tensor], source: str = "state dict"
) -> dict[str, list[str]]:
    """Load matching tensors into ``module`` (``strict=False``) and report the rest.

    Returns ``{"missing", "unexpected", "mismatched"}`` key lists (mismatched = same key,
    other shape: skipped). Raises ``ValueError`` when no tensor matches at all.
    """
    own = module.state_dict()
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    usable = {k: v for k, v in state.items() if k in own and k not in mismatched}
    if not usable:
        raise ValueError(
            f"no weights in {source} match this model ({len(state)} keys in the file, "
            f"e.g. {list(state)[:3]}; the model has e.g. {list(own)[:3]})"
        )
    result = module.load_state_dict(usable, strict=False)
    report = {
        "missing": [k for k in result.missing_keys if k not in mismatched],
        "unexpected": [k for k in state if k not in own],
        "mismatched": mismatched,
    }
    if any(report.values()):
        _logger.warning(
            "loaded %d/%d tensors from %s; missing %d %s, unexpected %d %s, shape mismatch %d %s",
            len(usable),
            len(own),
            source,
            len(report["missing"]),
            report["missing"][:5],
            len(report["unexpected"]),
            report["unexpected"][:5],
            len(report["mismatched"]),
            report["mismatched"][:5],
        )
    return report
