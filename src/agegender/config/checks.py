"""Pre-run checks: every file a run will read exists, before any work starts.

:func:`check_files` looks at the data, folds file and weights files of a validated
:class:`~agegender.config.schema.Config` and raises :class:`ConfigError` naming the key
(with the data root when a missing path is under it), so a typo fails at once rather
than after the data is read.
"""

from __future__ import annotations

import os
from pathlib import Path

from agegender.config.load import ConfigError
from agegender.config.paths import default_data_root
from agegender.config.schema import Config


def check_files(config: Config) -> None:
    """Check that every path the run will read exists, and that weights files
    (``model.pretrained_file``, ``model.init_from``, ``distill.teacher``) hold tensors,
    before any work starts."""
    checks = [
        ("data.path", config.data.path),
        ("data.folds_file", config.data.folds_file),
        ("model.pretrained_file", config.model.pretrained_file),
        ("model.init_from", config.model.init_from),
        ("distill.teacher", config.distill.teacher if config.distill else None),
    ]
    # a teacher per CV fold ({fold} in the path) is checked once the fold fills it in
    checks = [(k, v) for k, v in checks if v is None or "{fold}" not in v]
    root = default_data_root()
    for key, value in checks:
        if value is not None and not Path(value).exists():
            hint = ""
            if Path(value).is_relative_to(root):
                how = "from AGEGENDER_DATA" if os.environ.get("AGEGENDER_DATA") else "default"
                hint = f" (data root {root}, {how}; see README 'Data')"
            raise ConfigError(f"{key}: no such file or directory: {value}{hint}")
    for key, value in checks:  # weights files: loadable (a mapped, cheap read)
        if value is not None and key.split(".")[0] != "data":
            from agegender.models.registry import read_state_dict

            try:
                read_state_dict(value, mmap=True)
            except (ValueError, OSError) as exc:
                raise ConfigError(f"{key}: {str(exc).splitlines()[0]}") from None
