"""Where a study lives: study names, storage URLs (``sqlite:///OUT/study.db`` by default,
any database Optuna supports for several workers), opening an ``RDBStorage`` with heartbeats
and a retry of trials whose worker died, and loading an existing study.

Workers that start together race to create a new database's tables: opening is retried a
few times before the error is reported in one line.
"""

from __future__ import annotations

import re
import time
import warnings
from pathlib import Path
from typing import Any

from agegender.config import ConfigError, read_yaml
from agegender.sweep.space import SpaceError

#: Seconds between a running trial's heartbeats, and without one before it counts as dead.
HEARTBEAT_S = 30
GRACE_S = 120


def default_study_name(config_path: str | Path, space_path: str | Path) -> str:
    """``<config name or stem>-<space file stem>``."""
    try:
        name = read_yaml(config_path).get("name")
    except ConfigError:
        name = None
    return f"{name or Path(config_path).stem}-{Path(space_path).stem}"


def default_storage(out: str | Path) -> str:
    return f"sqlite:///{(Path(out) / 'study.db').resolve()}"


def masked(url: str) -> str:
    """The storage URL without its password."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def _sqlite_file(url: str) -> Path | None:
    if not url.startswith("sqlite:///"):
        return None
    name = url[len("sqlite:///") :].split("?", 1)[0]
    return Path(name) if name and name != ":memory:" else None


def retry_callback() -> Any:
    """Optuna's callback that queues a dead worker's trial again (same params, user attrs
    and epoch values); ``RetryHeartbeatStaleTrialCallback`` from Optuna 4.9 on."""
    import optuna
    from optuna import storages

    cls = getattr(storages, "RetryHeartbeatStaleTrialCallback", None)
    cls = cls or storages.RetryFailedTrialCallback  # Optuna < 4.9
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return cls(max_retry=3, inherit_intermediate_values=True)


def make_storage(
    url: str,
    *,
    heartbeat_interval: int | None = HEARTBEAT_S,
    grace_period: int | None = GRACE_S,
    create: bool = True,
) -> Any:
    """An RDBStorage for ``url`` with heartbeats and a retry of trials whose worker died."""
    import inspect

    import optuna
    from optuna.storages import RDBStorage

    file = _sqlite_file(url)
    if file is not None:
        if create:
            file.parent.mkdir(parents=True, exist_ok=True)
        elif not file.is_file():
            raise SpaceError(f"--storage: no study database at {file}")
    kwargs: dict[str, Any] = {}
    if heartbeat_interval:
        retry = retry_callback()
        params = inspect.signature(RDBStorage.__init__).parameters
        cb = (
            "heartbeat_stale_trial_callback"
            if "heartbeat_stale_trial_callback" in params
            else "failed_trial_callback"
        )
        kwargs = {"heartbeat_interval": heartbeat_interval, "grace_period": grace_period, cb: retry}
    engine = {"connect_args": {"timeout": 120}} if file is not None else None
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, engine_kwargs=engine, **kwargs)
        except Exception as exc:  # sqlalchemy / driver errors: one line
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            # workers starting together race to create a new database's tables
            racing = type(exc).__name__ == "IntegrityError" or any(
                w in first for w in ("locked", "already exists")
            )
            if not racing or attempt == 4:
                raise SpaceError(f"--storage {masked(url)}: cannot open: {first}") from None
            time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")


def load_study(storage: str, study_name: str | None = None) -> Any:
    """Open an existing study (the only one in ``storage`` when no name is given)."""
    import optuna

    st = make_storage(storage, heartbeat_interval=None, create=False)
    names = [s.study_name for s in optuna.get_all_study_summaries(st, include_best_trial=False)]
    if study_name is None:
        if len(names) != 1:
            have = ", ".join(names) if names else "none"
            raise SpaceError(f"--study: {masked(storage)} holds studies {have}; name one")
        study_name = names[0]
    if study_name not in names:
        have = ", ".join(names) if names else "none"
        raise SpaceError(f"--study: no study {study_name!r} in {masked(storage)} (it has {have})")
    return optuna.load_study(study_name=study_name, storage=st)


def trial_id(storage: Any, study: Any, number: int) -> int:
    """The id of trial ``number`` of ``study`` in ``storage`` (which it was opened with):
    the storage API gives it publicly, Optuna's study and trial objects keep it private."""
    study_id = storage.get_study_id_from_name(study.study_name)
    return storage.get_trial_id_from_study_id_trial_number(study_id, number)
