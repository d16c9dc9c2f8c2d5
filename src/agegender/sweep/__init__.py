"""Hyperparameter sweeps on Optuna: any config key, any validation metric, many workers.

``agegender sweep CONFIG.yaml --space SPACE.yaml`` runs trials of :func:`agegender.train.train`
with the config's keys overridden per trial, and records them in an Optuna study.

- :mod:`~agegender.sweep.space` — the SPACE.yaml format, its checks against the config, and
  the sampler (grid or TPE) and pruner it makes.
- :mod:`~agegender.sweep.storage` — study names, storage URLs, opening a study database.
- :mod:`~agegender.sweep.runner` — :func:`run_sweep`: trials, several workers, resume; the
  sweep directory's layout.
- :mod:`~agegender.sweep.summary` — progress lines, ``--summary``'s table, JSON and plots.

The Lightning callback that reports each epoch to Optuna, :class:`PruningCallback`, lives
with the other callbacks in :mod:`agegender.train.callbacks`.
"""

from __future__ import annotations

from agegender.sweep.runner import SweepResult, recover_dead_trials, run_sweep
from agegender.sweep.space import (
    Param,
    Space,
    SpaceError,
    check_space,
    format_value,
    infer_direction,
    parse_space,
    read_space,
    trial_overrides,
)
from agegender.sweep.storage import default_storage, default_study_name, load_study, make_storage
from agegender.sweep.summary import summarize
from agegender.train.callbacks import PruningCallback

__all__ = [
    "Param",
    "PruningCallback",
    "Space",
    "SpaceError",
    "SweepResult",
    "check_space",
    "default_study_name",
    "default_storage",
    "format_value",
    "infer_direction",
    "load_study",
    "make_storage",
    "parse_space",
    "read_space",
    "recover_dead_trials",
    "run_sweep",
    "summarize",
    "trial_overrides",
]
