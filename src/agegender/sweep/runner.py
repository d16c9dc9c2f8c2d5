"""Running a sweep: :func:`run_sweep` creates or joins the study, then runs one trial of
:func:`agegender.train.train` at a time until the study holds ``--trials`` finished trials.

A trial's value is the best per-epoch value of the metric (max or min over epochs); the
pruner sees every epoch. Layout of a sweep directory (``runs/sweeps/STUDY`` by default)::

    study.db                    the Optuna study (default storage sqlite:///OUT/study.db)
    trial_<N>/                  a normal run directory per trial (config.yaml, metrics.csv,
                                checkpoints/, summary.json, train.log)
    summary.json, *.png         written by ``agegender sweep --summary``

Workers: any database URL Optuna supports (``--storage postgresql://...``) lets several
``agegender sweep`` processes on several machines share one study (same ``--study``); the
grid is split without repeats and ``--trials N`` is the total of finished (complete or
pruned) trials over all workers. Re-running the same command resumes: finished trials are
kept, a trial whose worker died (heartbeat older than the grace period, or a dead process on
this host) is marked FAIL and queued again, continuing from its last checkpoint.
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agegender.sweep.space import Space, SpaceError, check_space, read_space, trial_overrides
from agegender.sweep.storage import (
    GRACE_S,
    HEARTBEAT_S,
    default_storage,
    default_study_name,
    make_storage,
    masked,
    retry_callback,
    trial_id,
)
from agegender.sweep.summary import finished_states, trial_line

#: Consecutive failed trials after which a worker gives up.
MAX_CONSECUTIVE_FAILURES = 3


@dataclass
class SweepResult:
    """What :func:`run_sweep` returns."""

    study_name: str
    storage: str
    out_dir: Path
    n_trials: int  # the requested total of finished trials
    finished: int  # COMPLETE + PRUNED trials in the study now
    ran: list[int]  # trial numbers this worker ran (any final state)
    best: dict | None  # {"number", "value", "params"} of the best complete trial
    study: Any = None


class _Skipped(Exception):
    """A claimed trial this worker does not run (a duplicate grid point or over --trials)."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _params_key(params: dict) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def _frozen(study: Any, number: int) -> Any:
    """Trial ``number`` of ``study`` as stored now (a ``FrozenTrial``)."""
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def _retry(study: Any, number: int) -> None:
    """Queue failed trial ``number`` again."""
    retry_callback()(study, _frozen(study, number))


def _fail(storage: Any, study: Any, number: int, error: str) -> bool:
    """Mark RUNNING trial ``number`` FAIL with the user attr ``error``; False when it has
    finished meanwhile (another worker got there first).

    Writes through ``storage``, the RDBStorage this worker opened the study with: Optuna has
    no public call for it outside ``study.optimize`` (``study.tell`` would also run the
    sampler's ``after_trial``, and a GridSampler there stops a study that is not optimizing).
    """
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    tid = trial_id(storage, study, number)
    try:
        storage.set_trial_user_attr(tid, "error", error)
        return bool(storage.set_trial_state_values(tid, state=TrialState.FAIL))
    except UpdateFinishedTrialError:
        return False


def recover_dead_trials(
    study: Any, storage: Any, printer: Callable[[str], Any] = print
) -> list[int]:
    """FAIL (and queue again) RUNNING trials whose worker process on this host is gone,
    and those whose heartbeat is older than the grace period. Returns the failed numbers.

    ``storage``: the RDBStorage ``study`` was opened with (:func:`make_storage`).
    """
    import optuna
    from optuna.trial import TrialState

    host = socket.gethostname()
    failed: list[int] = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker") or {}
        if worker.get("host") != host or _pid_alive(int(worker.get("pid", -1))):
            continue
        if not _fail(storage, study, t.number, "worker process died"):
            continue  # another worker got there first
        _retry(study, t.number)
        failed.append(t.number)
        printer(f"trial {t.number}: its worker (pid {worker.get('pid')}) is gone; queued again")
    before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if t.number not in before:
            failed.append(t.number)
            printer(f"trial {t.number}: no heartbeat from its worker; queued again")
    return failed


def _requeue_failed_grid_points(study: Any, printer: Callable[[str], Any]) -> int:
    """GridSampler counts a failed grid point as visited: queue such points once more
    (on every start of a worker), unless a live or finished trial has the same params."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    alive = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    live = {_params_key(t.params) for t in trials if t.state in alive}
    queued = 0
    for t in trials:
        if t.state != TrialState.FAIL or not t.params:
            continue
        key = _params_key(t.params)
        if key in live:
            continue
        live.add(key)
        study.enqueue_trial(t.params, user_attrs={"requeued_from": t.number})
        queued += 1
    if queued:
        printer(f"queued {queued} failed grid point(s) again")
    return queued


def _check_claim(study: Any, trial: Any, n_trials: int, space: Space) -> None:
    """Resolve races between workers: the lower trial number wins."""
    from optuna.trial import TrialState

    live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    others = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number]
    ahead = sum(t.state in live for t in others)
    if ahead >= n_trials:
        raise _Skipped(f"over --trials {n_trials}: another worker took the last trial")
    if space.is_grid:
        mine = _params_key(trial.params)
        for t in others:
            if (t.state in live or t.state == TrialState.WAITING) and _params_key(t.params) == mine:
                raise _Skipped(f"duplicate of trial {t.number}")


def _trial_dir(trial: Any, out: Path) -> tuple[Path, bool]:
    """``(run dir, resume)``: a retried trial continues in its first run's dir."""
    prev = trial.user_attrs.get("run_dir")
    if prev and Path(prev).is_dir():
        return Path(prev), (Path(prev) / "checkpoints" / "last.ckpt").is_file()
    d = out / f"trial_{trial.number}"
    k = 1
    while (d / "checkpoints" / "last.ckpt").exists():  # left over from an older study
        d, k = out / f"trial_{trial.number}.{k}", k + 1
    return d, False


def _create_study(storage: Any, name: str, space: Space, epochs: int) -> Any:
    """Create or load the study; workers starting together may race on a new database."""
    import optuna

    for attempt in range(5):
        try:
            return optuna.create_study(
                storage=storage,
                study_name=name,
                direction=space.direction,
                sampler=space.sampler(),
                pruner=space.make_pruner(epochs),
                load_if_exists=True,
            )
        except Exception as exc:  # e.g. sqlite "database is locked", a duplicate insert
            if attempt == 4:
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise SpaceError(f"--study {name}: cannot create or load it: {first}") from None
            time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")


def run_sweep(
    config_path: str | Path,
    space_path: str | Path,
    *,
    trials: int | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    out: str | Path | None = None,
    overrides: Sequence[str] = (),
    printer: Callable[[str], Any] = print,
    heartbeat_interval: int = HEARTBEAT_S,
    grace_period: int = GRACE_S,
) -> SweepResult:
    """Run (or join, or resume) a sweep until the study holds ``trials`` finished trials.

    Everything is checked before any work (:class:`SpaceError` / ``ConfigError``).
    """
    import optuna
    from optuna.trial import TrialState

    from agegender.config import check_files, load_config

    config_path, space_path = Path(config_path), Path(space_path)
    space = read_space(space_path)
    base = check_space(space, config_path, overrides)
    check_files(base)
    devices = base.trainer.devices
    many = isinstance(devices, list) and len(devices) > 1 or devices == -1
    many = many or (isinstance(devices, int) and devices > 1) or base.trainer.num_nodes > 1
    one_id = isinstance(devices, str) and devices.endswith(",") and devices.count(",") == 1
    if many or (isinstance(devices, str) and devices not in ("auto", "1") and not one_id):
        raise SpaceError(
            "trainer.devices: a sweep trains each trial in one process; set trainer.devices=1 "
            "and run one worker per device instead"
        )
    n_trials = trials if trials is not None else space.default_trials()
    if n_trials < 1:
        raise SpaceError(f"--trials: must be >= 1 (got {n_trials})")
    if space.is_grid and n_trials > space.grid_size:
        printer(f"the grid has {space.grid_size} points: running {space.grid_size} trials")
        n_trials = space.grid_size
    study_name = study_name or default_study_name(config_path, space_path)
    out_dir = Path(out or Path("runs") / "sweeps" / study_name).resolve()
    url = storage or default_storage(out_dir)
    st = make_storage(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period)

    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        study = _create_study(st, study_name, space, base.train.epochs)
        stored = study.user_attrs.get("space_fingerprint")
        if stored is None:
            study.set_user_attr("space_fingerprint", space.fingerprint())
            study.set_user_attr("space", space.to_dict())
            study.set_user_attr("metric", space.metric)
            study.set_user_attr("config", str(config_path.resolve()))
            study.set_user_attr("overrides", list(overrides))
            study.set_user_attr("out", str(out_dir))
        elif stored != space.fingerprint():
            raise SpaceError(
                f"--study {study_name}: the study in {masked(url)} was made with another search "
                f"space or metric ({json.dumps(stored)}); use its space or another --study"
            )
        elif study.direction.name.lower() != space.direction:
            raise SpaceError(f"--study {study_name}: the study has direction {study.direction}")

        out_dir.mkdir(parents=True, exist_ok=True)
        recover_dead_trials(study, st, printer)
        if space.is_grid:
            _requeue_failed_grid_points(study, printer)
        done = len(study.get_trials(deepcopy=False, states=finished_states()))
        sampler = f"grid of {space.grid_size}" if space.is_grid else "TPE"
        printer(
            f"study {study_name} ({masked(url)}): {space.direction} {space.metric}, {sampler}, "
            f"{done} of {n_trials} trials finished; trial runs in {out_dir}"
        )
        ran = _loop(
            study, st, space, config_path, overrides, out_dir, n_trials, printer, load_config
        )
    finally:
        optuna.logging.set_verbosity(previous)
    finished = len(study.get_trials(deepcopy=False, states=finished_states()))
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = None
    if complete:
        b = study.best_trial
        best = {"number": b.number, "value": b.value, "params": b.params}
    return SweepResult(study_name, url, out_dir, n_trials, finished, ran, best, study)


def _interrupted(study: Any, storage: Any, number: int) -> None:
    """Mark an interrupted trial FAIL and queue it again (it resumes from its checkpoint)."""
    from optuna.trial import TrialState

    frozen = _frozen(study, number)
    if frozen.state == TrialState.RUNNING:
        if not _fail(storage, study, number, "interrupted"):
            return
    elif frozen.state != TrialState.FAIL or frozen.user_attrs.get("skipped"):
        return
    _retry(study, number)


def _loop(
    study: Any,
    storage: Any,
    space: Space,
    config_path: Path,
    overrides: Sequence[str],
    out_dir: Path,
    n_trials: int,
    printer: Callable[[str], Any],
    load_config: Callable,
) -> list[int]:
    import gc

    import optuna
    from optuna.trial import TrialState

    from agegender.train import train
    from agegender.train.callbacks import PruningCallback
    from agegender.train.run import best_row
    from agegender.train.trainer_kit import quiet_lightning

    worker = {"host": socket.gethostname(), "pid": os.getpid()}
    current: dict[str, Any] = {}
    data_lines: set[str] = set()

    def data_line(line: str, log: Any) -> None:
        """A trial's rows read/kept/rejected line: to its train.log, and once to the
        console (trials that read the same data print the same line)."""
        print(line, file=log, flush=True)
        if line not in data_lines:
            data_lines.add(line)
            printer(line)

    def objective(trial: Any) -> float:
        current["number"] = trial.number
        try:
            return run_trial(trial)
        except (optuna.TrialPruned, _Skipped):
            raise
        except (KeyboardInterrupt, SystemExit):
            trial.set_user_attr("error", "interrupted")
            raise
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            trial.set_user_attr("error", f"{type(exc).__name__}: {first}"[:500])
            raise

    def run_trial(trial: Any) -> float:
        trial.set_user_attr("worker", worker)
        for key in ("error", "skipped"):  # copied from the trial a retry repeats
            if trial.user_attrs.get(key):
                trial.set_user_attr(key, None)
        values = {key: p.suggest(trial) for key, p in space.params.items()}
        try:
            _check_claim(study, trial, n_trials, space)
        except _Skipped as exc:
            trial.set_user_attr("skipped", str(exc))
            raise
        run_dir, resume = _trial_dir(trial, out_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("overrides", trial_overrides(space, values))
        cfg = load_config(config_path, [*overrides, *trial_overrides(space, values)])
        callback = PruningCallback(trial, space.metric)
        log = (run_dir / "train.log").open("a", encoding="utf-8")
        try:
            result = train(
                cfg,
                run_dir,
                resume=resume,
                callbacks=[callback],
                progress=False,
                printer=lambda s: print(s, file=log, flush=True),
                data_printer=lambda s: data_line(s, log),
            )
        except optuna.TrialPruned:
            seen = list(callback.values.values())
            if seen:
                pick = max if space.direction == "maximize" else min
                trial.set_user_attr("best_value_before_pruning", pick(seen))
            epochs = len(_frozen(study, trial.number).intermediate_values)
            trial.set_user_attr("epochs_run", epochs)
            raise
        finally:
            log.close()
        row = best_row(result.metrics, space.metric, space.direction)
        trial.set_user_attr("summary", str(result.out_dir / "summary.json"))
        trial.set_user_attr("row_counts", (result.summary.get("dataset") or {}).get("row_counts"))
        trial.set_user_attr("epochs_run", result.summary.get("epochs_run"))
        if row is None:
            raise RuntimeError(f"{space.metric} was never logged")
        best = {k: float(v) for k, v in row.items() if str(k).startswith("val/")}
        trial.set_user_attr("best_epoch", int(row["epoch"]) if "epoch" in row else None)
        trial.set_user_attr("best", best)
        return best[space.metric]

    ran: list[int] = []
    failures = 0
    while True:
        recover_dead_trials(study, storage, printer)
        trials = study.get_trials(deepcopy=False)
        finished = sum(t.state in finished_states() for t in trials)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        waiting = sum(t.state == TrialState.WAITING for t in trials)
        if finished + running >= n_trials:
            break
        if space.is_grid and not waiting:
            claimed = {
                t.system_attrs.get("grid_id")
                for t in trials
                if t.state != TrialState.WAITING and "grid_id" in t.system_attrs
            }
            if len(claimed) >= space.grid_size:
                printer("every grid point has been tried (failed ones are queued on restart)")
                break
        if not space.is_grid:
            study.sampler = space.sampler(len(trials))
        current.clear()
        try:
            with quiet_lightning(info=True):
                study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True)
        except (KeyboardInterrupt, SystemExit):  # Lightning exits after a Ctrl-C in fit
            if "number" in current:
                _interrupted(study, storage, current["number"])
            raise KeyboardInterrupt from None
        if "number" not in current:
            continue
        t = _frozen(study, current["number"])
        if t.state == TrialState.FAIL and not t.user_attrs.get("skipped"):
            failures += 1
        elif t.state in finished_states():
            failures = 0
        ran.append(t.number)
        printer(trial_line(t, space.metric))
        gc.collect()
        if failures >= MAX_CONSECUTIVE_FAILURES:
            raise SpaceError(
                f"{failures} trials failed in a row; last: {t.user_attrs.get('error', '?')} "
                f"(see {t.user_attrs.get('run_dir', out_dir)}/train.log)"
            )
    return ran
