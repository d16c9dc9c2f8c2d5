"""Loading a config: YAML files, ``--set key=value`` overrides, one-line error messages.

:func:`load_config` reads a YAML file (:func:`read_yaml`: a syntax error names
``file:line``), applies ``--set`` overrides (:func:`apply_overrides`; path values resolve
against the working directory) and validates (:func:`validate_config`). Every problem is
a :class:`ConfigError` whose message is one line naming each bad key, with a did-you-mean
for unknown keys (:func:`format_errors`).
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from agegender.config.paths import (
    PATH_KEYS,
    WEIGHTS_KEYS,
    DataRootError,
    expand_path,
    expand_weights_path,
)
from agegender.config.schema import AUGMENT_OPS, Config


class ConfigError(ValueError):
    """An invalid configuration; ``str()`` is one line naming each bad key."""


def _loc(loc: tuple) -> str:
    out = ""
    for i, x in enumerate(loc):
        if isinstance(x, int):
            out += f"[{x}]"
        elif x in AUGMENT_OPS and i > 0 and isinstance(loc[i - 1], int):
            continue  # the discriminated-union tag
        else:
            out += ("." if out else "") + str(x)
    return out


def _field_names(model: type[BaseModel], loc: tuple) -> list[str]:
    """Valid keys at ``loc`` (for did-you-mean on unknown keys)."""
    cls: Any = model
    for x in loc[:-1]:
        if isinstance(x, int) or cls is None:
            continue
        if x in AUGMENT_OPS:
            cls = AUGMENT_OPS[x]
            continue
        field = getattr(cls, "model_fields", {}).get(x)
        if field is None:
            return []
        ann = field.annotation
        cls = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return list(getattr(cls, "model_fields", {})) if cls is not None else []


def _message(err: dict) -> str:
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    num = {k: f"{v:g}" if isinstance(v, int | float) else v for k, v in ctx.items()}
    loc = _loc(err["loc"])
    if kind == "extra_forbidden":
        key = err["loc"][-1]
        close = difflib.get_close_matches(str(key), _field_names(Config, err["loc"]), n=1)
        return f"{loc}: unknown key" + (f"; did you mean {close[0]}?" if close else "")
    if kind == "missing":
        return f"{loc}: required"
    if kind == "value_error":
        msg = str(ctx.get("error", err["msg"]))
        # cross-field validators already name their key
        if re.match(r"^[a-z_]+(\.[a-z_]+)*:", msg):
            return msg
        if isinstance(ctx.get("error"), DataRootError):  # says what to do; no "(got ...)"
            return f"{loc}: {msg}"
    else:
        msg = {
            "greater_than": f"must be > {num.get('gt')}",
            "greater_than_equal": f"must be >= {num.get('ge')}",
            "less_than": f"must be < {num.get('lt')}",
            "less_than_equal": f"must be <= {num.get('le')}",
            "union_tag_not_found": "each op needs a name, e.g. '- hflip' or '- {op: hflip}'",
            "literal_error": f"must be one of {ctx.get('expected')}",
            "int_parsing": "must be an integer",
            "int_from_float": "must be an integer",
            "int_type": "must be an integer",
            "float_parsing": "must be a number",
            "float_type": "must be a number",
            "bool_parsing": "must be true or false",
            "bool_type": "must be true or false",
            "string_type": "must be a string",
            "list_type": "must be a list",
            "dict_type": "must be a mapping",
            "model_type": "must be a mapping of keys",
            "model_attributes_type": "must be a mapping of keys",
            "tuple_type": "must be a list of two numbers",
            "too_short": "must be a list of two numbers",
            "too_long": "must be a list of two numbers",
        }.get(kind, err["msg"])
    if kind not in ("model_type", "model_attributes_type", "dict_type") and not isinstance(
        value, dict | list
    ):
        shown = repr(value)
        if shown not in msg:
            msg += f" (got {shown})"
    return f"{loc}: {msg}" if loc else msg


def format_errors(exc: ValidationError) -> str:
    """One line: every error as ``key: message (got value)``, joined by ``; ``."""
    seen: list[str] = []
    for err in exc.errors():
        m = _message(err)
        if m not in seen:
            seen.append(m)
    return "; ".join(seen)


def validate_config(raw: dict, base_dir: str | Path | None = None) -> Config:
    """Validate a config mapping (paths relative to ``base_dir``) or raise ConfigError."""
    if not isinstance(raw, dict):
        raise ConfigError("config must be a mapping of sections (data:, model:, ...)")
    try:
        return Config.model_validate(raw, context={"base_dir": str(base_dir or Path.cwd())})
    except ValidationError as exc:
        raise ConfigError(format_errors(exc)) from None


def parse_override(text: str) -> tuple[list[str | int], Any]:
    """``"a.b=value"`` -> (["a", "b"], value parsed as a YAML scalar or list)."""
    if "=" not in text:
        raise ConfigError(f"--set {text}: expected key=value")
    key, value = text.split("=", 1)
    key = key.strip()
    if not key or not re.fullmatch(r"[A-Za-z_][\w]*(\.(\w+))*", key):
        raise ConfigError(f"--set {text}: bad key {key!r}")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: cannot parse value {value!r}: {exc.problem}") from None
    path: list[str | int] = [int(p) if p.isdigit() else p for p in key.split(".")]
    return path, parsed


def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Apply ``--set a.b=value`` overrides to a raw config dict (in place, returned).

    Path-valued keys given on the command line are resolved against the working directory.
    """
    for text in overrides:
        path, value = parse_override(text)
        dotted = ".".join(map(str, path))
        if tuple(map(str, path)) in PATH_KEYS and isinstance(value, str):
            weights = tuple(map(str, path)) in WEIGHTS_KEYS
            try:
                value = expand_weights_path(value) if weights else expand_path(value)
            except ValueError as exc:
                raise ConfigError(f"{dotted}: {exc}") from None
        node: Any = raw
        for i, part in enumerate(path[:-1]):
            where = ".".join(map(str, path[: i + 1]))
            if isinstance(node, list):
                if not isinstance(part, int) or part >= len(node):
                    raise ConfigError(f"--set {dotted}: {where} is not an item of the list")
                node = node[part]
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
            if not isinstance(node, dict | list):
                raise ConfigError(f"--set {dotted}: {where} is a value, not a section")
        last = path[-1]
        if isinstance(node, list) and (not isinstance(last, int) or last >= len(node)):
            raise ConfigError(f"--set {dotted}: no list item {last}")
        node[last] = value
    return raw


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; one-line errors naming the file and line."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: config must be a mapping of sections (data:, model:, ...)")
    return raw


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a YAML config, apply ``--set`` overrides and validate (raises ConfigError).

    The error message starts with the file name when the problem is in the file itself.
    """
    raw = read_yaml(path)
    apply_overrides(raw, overrides)
    try:
        return validate_config(raw, base_dir=Path(path).resolve().parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
