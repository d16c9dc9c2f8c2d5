"""Reading a study back: one progress line per finished trial, and ``agegender sweep
--summary``'s table of the best trials, ``summary.json`` and PNG plots."""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any


def finished_states() -> tuple:
    """COMPLETE and PRUNED: the trials that count towards ``--trials``."""
    from optuna.trial import TrialState

    return (TrialState.COMPLETE, TrialState.PRUNED)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def trial_line(trial: Any, metric: str) -> str:
    """One progress line for a finished trial."""
    from optuna.trial import TrialState

    params = " ".join(f"{k}={_fmt(v)}" for k, v in trial.params.items())
    secs = ""
    if trial.datetime_start and trial.datetime_complete:
        secs = f" [{(trial.datetime_complete - trial.datetime_start).total_seconds():.0f} s]"
    if trial.state == TrialState.COMPLETE:
        what = f"{metric} {trial.value:.4f}"
    elif trial.state == TrialState.PRUNED and trial.intermediate_values:
        last = max(trial.intermediate_values)
        what = f"after epoch {last + 1} ({metric} {trial.intermediate_values[last]:.4f})"
    else:
        what = str(trial.user_attrs.get("skipped") or trial.user_attrs.get("error") or "")
    return f"trial {trial.number} {trial.state.name}: {what}  {params}{secs}".rstrip()


def _trial_row(t: Any) -> dict:
    dur = None
    if t.datetime_start and t.datetime_complete:
        dur = round((t.datetime_complete - t.datetime_start).total_seconds(), 1)
    return {
        "number": t.number,
        "state": t.state.name,
        "value": t.value,
        "params": t.params,
        "epochs": t.user_attrs.get("epochs_run") or len(t.intermediate_values) or None,
        "best_epoch": t.user_attrs.get("best_epoch"),
        "duration_s": dur,
        "run_dir": t.user_attrs.get("run_dir"),
        "best_metrics": t.user_attrs.get("best"),
        **({"error": t.user_attrs["error"]} if t.user_attrs.get("error") else {}),
        **({"skipped": t.user_attrs["skipped"]} if t.user_attrs.get("skipped") else {}),
    }


def _ranked(study: Any) -> list:
    """Complete trials best first, then pruned ones by their best reported value."""
    from optuna.trial import TrialState

    sign = -1 if study.direction.name.lower() == "maximize" else 1
    complete = sorted(
        study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
        key=lambda t: sign * t.value,
    )

    def pruned_key(t: Any) -> float:
        vals = list(t.intermediate_values.values())
        return sign * (max(vals) if sign < 0 else min(vals)) if vals else math.inf

    pruned = sorted(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)), key=pruned_key)
    return complete + pruned


def _save(ax: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
    fig.set_size_inches(max(fig.get_size_inches()[0], 8), max(fig.get_size_inches()[1], 5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summarize(
    study: Any,
    out_dir: str | Path,
    *,
    top: int = 10,
    console: Any = None,
    printer: Callable[[str], Any] | None = None,
) -> dict:
    """Print the best trials as a table, write ``summary.json`` and PNG plots to ``out_dir``
    (optimisation history, parameter importances, per-epoch values); returns the summary."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import optuna
    from optuna.trial import TrialState
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    say = printer or (lambda s: console.print(s, highlight=False, soft_wrap=True))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metric = study.user_attrs.get("metric", "value")
    trials = study.get_trials(deepcopy=False)
    counts = {s.name: sum(t.state == s for t in trials) for s in TrialState}
    counts = {k: v for k, v in counts.items() if v}
    skipped = sum(bool(t.user_attrs.get("skipped")) for t in trials)
    ranked = _ranked(study)
    param_keys = list(dict.fromkeys(k for t in trials for k in t.params))

    table = Table(
        title=f"study {study.study_name}: best trials by {metric} ({study.direction.name.lower()})"
    )
    for col in ("#", "trial", "state", metric, "epochs", *param_keys, "time"):
        table.add_column(col, justify="right" if col not in ("state",) else "left")
    for rank, t in enumerate(ranked[:top], 1):
        if t.state == TrialState.COMPLETE:
            value = f"{t.value:.4f}"
        else:
            vals = list(t.intermediate_values.values())
            value = (
                f"({max(vals) if study.direction.name == 'MAXIMIZE' else min(vals):.4f})"
                if vals
                else "-"
            )
        row = _trial_row(t)
        table.add_row(
            str(rank),
            str(t.number),
            t.state.name.lower(),
            value,
            str(row["epochs"] or "-"),
            *(_fmt(t.params.get(k, "-")) for k in param_keys),
            f"{row['duration_s']:.0f} s" if row["duration_s"] is not None else "-",
        )
    console.print(table)
    state_text = ", ".join(f"{v} {k.lower()}" for k, v in counts.items())
    if skipped:
        state_text += f" ({skipped} of the failed were skipped duplicates/extras, never run)"
    say(f"{len(trials)} trials: {state_text or 'none yet'}")

    plots: dict[str, str] = {}
    notes: dict[str, str] = {}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", UserWarning)
        import optuna.visualization.matplotlib as vm

        if complete:
            _save(
                vm.plot_optimization_history(study, target_name=metric),
                out / "optimization_history.png",
            )
            plots["optimization_history"] = str(out / "optimization_history.png")
        else:
            notes["optimization_history"] = "no complete trials yet"
        varying = [
            k
            for k in param_keys
            if len({json.dumps(t.params.get(k), default=str) for t in complete}) > 1
        ]
        if len(complete) >= 2 and varying:
            try:
                _save(
                    vm.plot_param_importances(study, target_name=metric),
                    out / "param_importances.png",
                )
                plots["param_importances"] = str(out / "param_importances.png")
            except (ValueError, RuntimeError, ZeroDivisionError) as exc:
                notes["param_importances"] = f"not computed: {str(exc).splitlines()[0]}"
        else:
            notes["param_importances"] = "needs >= 2 complete trials whose parameters differ"
        if any(t.intermediate_values for t in trials):
            _save(vm.plot_intermediate_values(study), out / "intermediate_values.png")
            plots["intermediate_values"] = str(out / "intermediate_values.png")
    for name, why in notes.items():
        say(f"{name} plot skipped: {why}")

    best = None
    if complete:
        b = study.best_trial
        best = {
            "number": b.number,
            "value": b.value,
            "params": b.params,
            "run_dir": b.user_attrs.get("run_dir"),
            "best_metrics": b.user_attrs.get("best"),
            "row_counts": b.user_attrs.get("row_counts"),
        }
    summary = {
        "study": study.study_name,
        "metric": metric,
        "direction": study.direction.name.lower(),
        "space": study.user_attrs.get("space"),
        "config": study.user_attrs.get("config"),
        "n_trials": counts,
        "skipped": skipped,
        "best": best,
        "trials": [_trial_row(t) for t in ranked]
        + [_trial_row(t) for t in trials if t.state not in finished_states()],
        "plots": plots,
        "plots_skipped": notes,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    say(f"wrote {out / 'summary.json'} and {len(plots)} plot(s) in {out}")
    return summary
