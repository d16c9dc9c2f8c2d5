"""The models shipped in the package, by name: one resolver for every command.

``default`` and ``accurate`` live in ``infer/weights/`` as ``<name>.onnx`` (meta inside)
and ``<name>.pt`` (state dict + meta), each with its model card (``MODEL_CARD.md`` for
``default``, ``MODEL_CARD_<name>.md`` otherwise). Wherever a model file is accepted a
bundled model's name is too: ``predict``/``evaluate``/``calibrate``/``bench``
(:func:`resolve_model`), and the config keys ``model.init_from`` and ``distill.teacher``
(:func:`weights_file`, which needs the PyTorch file). ``finetune`` starts from a bundled
model's own training recipe, the YAML block of its card (:func:`bundled_recipe`).

This module imports nothing heavy: the config schema calls it while validating.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

#: Where the bundled models live: ``<name>.onnx`` (meta inside) and/or ``<name>.pt``.
WEIGHTS_DIR = Path(__file__).resolve().parent / "infer" / "weights"
DEFAULT_MODEL_NAME = "default"
#: Suffixes of the model files the project reads.
MODEL_SUFFIXES = (".ckpt", ".onnx", ".pt", ".pth")


class NoModelError(FileNotFoundError):
    """No model given and no bundled model installed (or a named one is missing)."""


def bundled_models() -> list[str]:
    """Names of the models shipped in the package (``default`` first)."""
    names = {p.stem for p in WEIGHTS_DIR.glob("*") if p.suffix in (".onnx", ".pt")}
    return sorted(names, key=lambda n: (n != DEFAULT_MODEL_NAME, n))


def is_bundled_name(value: str | os.PathLike) -> bool:
    """``value`` is a bare name (no folder, no model suffix) of a bundled model."""
    text = str(value)
    return (
        bool(text)
        and os.sep not in text
        and "/" not in text
        and Path(text).suffix not in MODEL_SUFFIXES
        and text in bundled_models()
    )


def resolve_model(model: str | os.PathLike | None, runtime: str = "auto") -> Path:
    """The model file of ``model``: a ``.ckpt``/``.onnx``/``.pt``/``.pth`` path as it is,
    else a bundled model's file (``runtime="torch"``: its ``.pt`` first, otherwise its
    ``.onnx`` first); None: the bundled ``default``. Raises :class:`NoModelError` (a file
    or name that is not there) or ValueError (an existing file of another kind)."""
    if model is None:
        name = DEFAULT_MODEL_NAME
    else:
        path = Path(model)
        if path.suffix in MODEL_SUFFIXES:
            if not path.is_file():
                raise NoModelError(f"model file not found: {path}")
            return path
        if path.exists():
            raise ValueError(f"{path}: not a model file (expected .ckpt, .onnx or .pt)")
        name = str(model)
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


def weights_file(value: str) -> str | None:
    """The bundled model's PyTorch file when ``value`` is a bundled model's name, else
    None (``value`` is a path). For keys that read weights (``model.init_from``,
    ``distill.teacher``): a name with no ``.pt`` shipped (ONNX only) is an error."""
    if not is_bundled_name(value):
        return None
    pt = WEIGHTS_DIR / f"{value}.pt"
    if not pt.is_file():
        raise ValueError(
            f"bundled model {value!r} ships no PyTorch file ({pt.name}) to read weights from"
        )
    return str(pt)


def model_card(name: str) -> Path:
    """The model card of bundled model ``name`` (``MODEL_CARD.md`` for ``default``)."""
    card = "MODEL_CARD.md" if name == DEFAULT_MODEL_NAME else f"MODEL_CARD_{name}.md"
    return WEIGHTS_DIR / card


_RECIPE = re.compile(r"^Training recipe \(`([^`]*)`\):\s*\n+```yaml\n(.*?)^```", re.M | re.S)


def bundled_recipe(name: str) -> tuple[dict[str, Any], str]:
    """``(config dict, config file named in the card)``: the training recipe of bundled
    model ``name``, the YAML block under its card's "Training recipe" line."""
    import yaml

    card = model_card(name)
    if not card.is_file():
        raise NoModelError(f"bundled model {name!r} has no model card ({card})")
    m = _RECIPE.search(card.read_text(encoding="utf-8"))
    if m is None:
        raise ValueError(f"{card}: no 'Training recipe (`FILE`):' YAML block")
    recipe = yaml.safe_load(m.group(2))
    if not isinstance(recipe, dict):
        raise ValueError(f"{card}: its training recipe is not a YAML mapping")
    return recipe, m.group(1)
