"""Where a config's files are: the repository and default data root, and path expansion.

:func:`expand_path` turns a config value into an absolute path: ``$VAR`` / ``${VAR}``
from the environment (``AGEGENDER_DATA`` falls back to :func:`default_data_root`, which
raises :class:`DataRootError` saying how to set it), ``~``, and relative paths against a
base folder. :data:`PATH_KEYS` names the config keys that hold paths.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

#: Repository root (src layout): the default data root is ``<repo>/../shared/data``.
REPO_ROOT = Path(__file__).resolve().parents[3]

#: Config keys holding file-system paths (resolved relative to the config file).
PATH_KEYS: tuple[tuple[str, str], ...] = (
    ("data", "path"),
    ("data", "folds_file"),
    ("data", "cache_dir"),
    ("model", "pretrained_file"),
    ("model", "init_from"),
    ("distill", "teacher"),
)

#: The path keys that hold a trained model's weights: a file, or a bundled model's name
#: (:func:`expand_weights_path`).
WEIGHTS_KEYS: tuple[tuple[str, str], ...] = (("model", "init_from"), ("distill", "teacher"))


#: Where the data is when ``AGEGENDER_DATA`` is not set (a checkout beside ``shared/``).
DEFAULT_DATA_ROOT = REPO_ROOT.parent / "shared" / "data"


class DataRootError(ValueError):
    """``${AGEGENDER_DATA}`` is used, not set, and the default data root does not exist."""


def default_data_root(*, must_exist: bool = False) -> Path:
    """``$AGEGENDER_DATA`` (when set and not empty), else :data:`DEFAULT_DATA_ROOT`.

    ``must_exist``: raise :class:`DataRootError`, which says how to set it, when the
    variable is not set and the default folder does not exist."""
    env = os.environ.get("AGEGENDER_DATA")
    if env:
        return Path(env)
    if must_exist and not DEFAULT_DATA_ROOT.is_dir():
        raise DataRootError(
            f"${{AGEGENDER_DATA}} is not set and {DEFAULT_DATA_ROOT} does not exist; "
            "set AGEGENDER_DATA=/path/to/data (see README 'Data')"
        )
    return DEFAULT_DATA_ROOT


_VAR = re.compile(r"\$\{([^}]+)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def expand_path(value: str, base_dir: Path | None = None) -> str:
    """Expand ``$VAR``/``${VAR}``/``~`` and make ``value`` absolute against ``base_dir``."""

    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name == "AGEGENDER_DATA":  # set (not empty), else the default, which must exist
            return str(default_data_root(must_exist=True))
        if name in os.environ:
            return os.environ[name]
        raise ValueError(f"environment variable {name} is not set (in {value!r})")

    text = os.path.expanduser(_VAR.sub(sub, str(value)))
    p = Path(text)
    if not p.is_absolute():
        p = (base_dir or Path.cwd()) / p
    return os.path.normpath(str(p))


def expand_weights_path(value: str, base_dir: Path | None = None) -> str:
    """A weights key's value: a bundled model's name (``default``, ``accurate``) becomes its
    PyTorch file (:func:`agegender.bundled.weights_file`), anything else a path through
    :func:`expand_path`."""
    from agegender.bundled import weights_file

    return weights_file(value) or expand_path(value, base_dir)
