"""Hyperparameter sweeps: the SPACE format and its checks, pruning, real tiny sweeps on
UTKFace (32 px, 60 faces, 2 batches), several workers on one SQLite study and on one
PostgreSQL study (a throwaway local server, ``tests/pgserver.py``), resume."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import torch
from optuna.trial import TrialState
from typer.testing import CliRunner

from agegender.config import ConfigError
from agegender.sweep import (
    PruningCallback,
    SpaceError,
    check_space,
    format_value,
    infer_direction,
    load_study,
    parse_space,
    read_space,
    run_sweep,
    summarize,
)

REPO = Path(__file__).resolve().parents[1]
SWEEPS = REPO / "configs" / "sweeps"

GRID4 = """\
metric: val/gender_acc
params:
  optim.lr: {grid: [0.001, 0.003]}
  train.batch_size: {grid: [16, 32]}
"""


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def tiny_config(tmp: Path, data: Path) -> Path:
    """A trial of ~1-2 s: 60 faces at 32 px, one epoch of two batches, one thread."""
    return write(
        tmp / "tiny.yaml",
        f"""\
        name: tiny
        data: {{path: {data}, size: 32, input_size: 32, limit: 60, seed: 0}}
        model: {{name: small_cnn, head_hidden: [32], dropout: 0.2}}
        task: {{gender: true, age: groups, gamma: 0.8}}
        optim: {{name: adam, lr: 0.003}}
        schedule: {{name: cosine, warmup_epochs: 0}}
        train:
          epochs: 1
          batch_size: 16
          limit_train_batches: 2
          early_stopping: {{patience: null}}
          progress_bar: false
        augment: {{recipe: [hflip]}}
        trainer: {{threads: 1}}
        logger: {{csv: false, tensorboard: false}}
        """,
    )


# --------------------------------------------------------------------------- the space
def test_parse_space_kinds_and_distributions() -> None:
    space = parse_space(
        {
            "metric": "val/age_mae",
            "trials": 7,
            "pruner": {"name": "median", "warmup_epochs": 2},
            "params": {
                "optim.lr": {"log_range": ["1e-4", 1.0e-2]},  # YAML 1.1 reads 1e-4 as text
                "model.dropout": {"range": [0.0, 0.5]},
                "train.epochs": {"range": [1, 8], "step": 1},
                "train.batch_size": {"choice": [32, 64]},
                "model.head_hidden": {"choice": [[64], [128, 64]]},
            },
        }
    )
    assert space.direction == "minimize" and space.trials == 7 and not space.is_grid
    d = {k: p.distribution() for k, p in space.params.items()}
    assert isinstance(d["optim.lr"], optuna.distributions.FloatDistribution)
    assert d["optim.lr"].log and d["optim.lr"].low == pytest.approx(1e-4)
    assert isinstance(d["train.epochs"], optuna.distributions.IntDistribution)
    assert isinstance(d["model.dropout"], optuna.distributions.FloatDistribution)
    hidden = space.params["model.head_hidden"]
    assert hidden.choices == ["[64]", "[128, 64]"] and hidden.decode("[128, 64]") == [128, 64]
    assert space.default_trials() == 7
    assert isinstance(space.make_pruner(5), optuna.pruners.MedianPruner)

    grid = parse_space(
        {"metric": "val/gender_acc", "params": {"a.b": {"grid": [1, 2, 3]}, "c": {"grid": ["x"]}}}
    )
    assert grid.is_grid and grid.grid_size == 3 and grid.default_trials() == 3
    assert isinstance(grid.sampler(), optuna.samplers.GridSampler)
    assert isinstance(grid.make_pruner(5), optuna.pruners.NopPruner)  # grids run in full
    for value in (1e-05, 0.001, "yes", [1, 2], None, True):
        assert optuna_roundtrip(value) == value


def optuna_roundtrip(value: object) -> object:
    import yaml

    return yaml.safe_load(format_value(value))


@pytest.mark.parametrize(
    ("params", "extra", "message"),
    [
        ({"optim.lr": {"grdi": [1]}}, {}, "params.optim.lr.grdi: unknown kind; did you mean grid"),
        ({"optim.lr": {"grid": []}}, {}, "params.optim.lr: grid needs a non-empty list"),
        ({"optim.lr": {"range": [0.1, 0.1]}}, {}, "params.optim.lr: range needs low < high"),
        ({"optim.lr": {"log_range": [0, 1]}}, {}, "params.optim.lr: log_range needs 0 < low"),
        ({"optim.lr": {"range": [1, "x"]}}, {}, "params.optim.lr: range bounds must be numbers"),
        ({"optim.lr": [1, 2]}, {}, "params.optim.lr: expected a mapping"),
        ({"optim.lr": {"grid": [1], "choice": [2]}}, {}, "params.optim.lr: give exactly one"),
        ({"optim.lr": {"choice": [1, 1]}}, {}, "params.optim.lr: choice value 1 appears more"),
        ({"optim.lr": {"range": [1, 5], "step": -1}}, {}, "params.optim.lr.step: must be"),
        ({"a": {"grid": [1]}, "b": {"choice": [1]}}, {}, "params.a: grid cannot be mixed"),
        ({"optim.lr": {"grid": [1]}}, {"metric": "gender_acc"}, "metric: must be a validation"),
        ({"optim.lr": {"grid": [1]}}, {"metric": "val/foo"}, "direction: cannot infer"),
        ({"optim.lr": {"grid": [1]}}, {"direction": "up"}, "direction: must be maximize"),
        ({"optim.lr": {"grid": [1]}}, {"trials": 0}, "trials: must be an integer >= 1"),
        ({"optim.lr": {"grid": [1]}}, {"pruner": "rand"}, "pruner.name: unknown pruner"),
        ({"optim.lr": {"grid": [1]}}, {"pruner": {"warmup": 1}}, "pruner.warmup: unknown"),
        ({"optim.lr": {"grid": [1]}}, {"metrics": "x"}, "metrics: unknown key; did you mean"),
        ({"model": {"grid": [1]}, "model.dropout": {"grid": [0.1]}}, {}, "overlaps params.model"),
    ],
)
def test_space_errors_name_the_key(params: dict, extra: dict, message: str) -> None:
    raw = {"metric": "val/gender_acc", "params": params, **extra}
    with pytest.raises(SpaceError) as info:
        parse_space(raw)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_direction_inference() -> None:
    assert infer_direction("val/gender_acc") == "maximize"
    assert infer_direction("val/age_acc_1off") == "maximize"
    assert infer_direction("val/loss") == "minimize"
    assert infer_direction("val/age_mae") == "minimize"
    assert infer_direction("val/something") is None
    assert parse_space({"metric": "val/loss", "direction": "max", "params": {"a": {"grid": [1]}}})
    explicit = parse_space(
        {"metric": "val/loss", "direction": "maximize", "params": {"a": {"grid": [1]}}}
    )
    assert explicit.direction == "maximize"


@pytest.mark.parametrize(
    ("params", "metric", "overrides", "message"),
    [
        (
            {"optim.lrr": {"grid": [0.1]}},
            "val/gender_acc",
            [],
            "params.optim.lrr: not a key of the config",
        ),
        ({"optim.lr": {"range": [-1.0, 1.0]}}, "val/gender_acc", [], "must be > 0"),
        (
            {"model.dropout": {"grid": [0.2, 1.5]}},
            "val/gender_acc",
            [],
            "params.model.dropout: 1.5",
        ),
        ({"model.head_hidden.3": {"grid": [8]}}, "val/gender_acc", [], "no list item 3"),
        ({"train.epochs": {"range": [2, 8]}}, "val/gender_acc", [], "write step: 1"),
        ({"optim.lr": {"grid": [0.1]}}, "val/age_mae", [], "metric: 'val/age_mae' is not logged"),
        ({"optim.lr": {"grid": [0.1]}}, "val/gender_acc", ["optim.lr=0.2"], "--set optim.lr"),
        # a valid value for the key, but the model cannot be built with it
        ({"model.dropout": {"choice": [[0.1, 0.2]]}}, "val/gender_acc", [], "dropout: 2 values"),
    ],
)
def test_space_checked_against_config(
    tmp_path: Path, params: dict, metric: str, overrides: list, message: str
) -> None:
    config = tiny_config(tmp_path, tmp_path / "faces")
    space = parse_space({"metric": metric, "params": params})
    with pytest.raises(SpaceError) as info:
        check_space(space, config, overrides)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_reports_sweeps_validate_against_their_base_config(config_data_root) -> None:
    base = SWEEPS / "base_small.yaml"
    spaces = {p.stem: p for p in sorted(SWEEPS.glob("*.yaml")) if p != base}
    assert set(spaces) == {"batch_lr_fc", "weight_decay", "dropout", "tpe_lr_wd_dropout"}
    parsed = {name: read_space(path) for name, path in spaces.items()}
    for space in parsed.values():
        check_space(space, base)  # every value through --set + validation, model built
    assert parsed["batch_lr_fc"].is_grid
    assert {"model.head_hidden.0", "model.head_hidden.2", "optim.lr", "train.batch_size"} == set(
        parsed["batch_lr_fc"].params
    )
    assert parsed["dropout"].is_grid and len(parsed["dropout"].params) == 3
    assert parsed["weight_decay"].is_grid
    tpe = parsed["tpe_lr_wd_dropout"]
    assert not tpe.is_grid and {p.kind for p in tpe.params.values()} >= {"log_range", "range"}


# --------------------------------------------------------------------------- pruning
def test_pruning_callback_prunes_a_poor_trial() -> None:
    study = optuna.create_study(
        direction="maximize",
        pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=1),
    )
    good = study.ask()
    for epoch in range(3):
        good.report(0.9, step=epoch)
    study.tell(good, 0.9)

    def trainer(value: float, epoch: int) -> SimpleNamespace:
        return SimpleNamespace(
            callback_metrics={"val/gender_acc": torch.tensor(value)},
            current_epoch=epoch,
            sanity_checking=False,
        )

    poor = study.ask()
    cb = PruningCallback(poor, "val/gender_acc")
    cb.on_validation_end(trainer(0.5, 0), None)  # epoch 0 is warm-up: never pruned
    with pytest.raises(optuna.TrialPruned, match="after epoch 2"):
        cb.on_validation_end(trainer(0.5, 1), None)
    assert study.trials[poor.number].intermediate_values == {0: 0.5, 1: 0.5}

    fine = study.ask()
    cb = PruningCallback(fine, "val/gender_acc")
    for epoch in range(3):
        cb.on_validation_end(trainer(0.95, epoch), None)
    assert cb.values == pytest.approx({0: 0.95, 1: 0.95, 2: 0.95})
    cb.on_validation_end(SimpleNamespace(callback_metrics={}, current_epoch=3), None)  # no metric


# --------------------------------------------------------------------------- real sweeps
def test_tpe_sweep_and_summary(tmp_path: Path, utkface_dir: Path) -> None:
    config = tiny_config(tmp_path, utkface_dir)
    space = write(
        tmp_path / "tpe.yaml",
        """\
        metric: val/loss
        trials: 3
        pruner: none
        params:
          optim.lr: {log_range: [1.0e-4, 1.0e-2]}
          model.dropout: {range: [0.0, 0.5]}
        """,
    )
    lines: list[str] = []
    res = run_sweep(config, space, out=tmp_path / "sweep", printer=lines.append)
    study = res.study
    assert res.study_name == "tiny-tpe" and res.finished == 3 and len(res.ran) == 3
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert len({t.params["optim.lr"] for t in study.trials}) == 3
    for t in study.trials:
        assert Path(t.user_attrs["summary"]).is_file()
        assert t.value == pytest.approx(t.user_attrs["best"]["val/loss"])
        assert t.intermediate_values  # reported per epoch for the pruner
    assert sum(line.startswith("trial ") for line in lines) == 3  # one line per trial
    reads = [line for line in lines if line.startswith("read ")]  # the same data: once
    assert len(reads) == 1 and f"rows from {utkface_dir}: kept " in reads[0]

    result = CliRunner().invoke(
        __import__("agegender.cli", fromlist=["app"]).app,
        ["sweep", "--summary", "--out", str(tmp_path / "sweep")],
    )
    assert result.exit_code == 0, result.output
    assert "best trials by val/loss" in result.output
    out = tmp_path / "sweep"
    for png in ("optimization_history.png", "param_importances.png"):
        assert (out / png).stat().st_size > 1000
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_trials"] == {"COMPLETE": 3}
    assert summary["best"]["value"] == pytest.approx(min(t.value for t in study.trials))
    assert summary["best"]["row_counts"]["path"] == str(utkface_dir)
    assert summary["direction"] == "minimize" and len(summary["trials"]) == 3


def _two_workers(
    tmp_path: Path, utkface_dir: Path, storage: str, study: str
) -> tuple[list[str], set[int]]:
    """Run two ``agegender sweep`` processes on one study (4 grid trials): their outputs
    and process ids."""
    config = tiny_config(tmp_path, utkface_dir)
    space = write(tmp_path / "grid4.yaml", GRID4)
    cmd = [sys.executable, "-m", "agegender", "sweep", str(config), "--space", str(space)]
    cmd += ["--trials", "4", "--storage", storage, "--study", study]
    cmd += ["--out", str(tmp_path / "w")]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    workers = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=240)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    return outputs, {w.pid for w in workers}


def _check_grid_study(study, outputs: list[str]) -> list:
    """The 4-point grid ran once each, over both workers: its finished trials."""
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 4
    points = {(t.params["optim.lr"], t.params["train.batch_size"]) for t in finished}
    assert points == {(0.001, 16), (0.001, 32), (0.003, 16), (0.003, 32)}  # no repeats
    assert all(t.user_attrs.get("skipped") for t in study.trials if t.state == TrialState.FAIL)
    dirs = {t.user_attrs["run_dir"] for t in finished}
    assert len(dirs) == 4 and all(Path(d, "summary.json").is_file() for d in dirs)
    ran = sum(o.count(" COMPLETE: ") for o in outputs)
    assert ran == 4, outputs  # each trial reported once, by the worker that ran it
    return finished


def test_two_workers_share_one_grid_study(tmp_path: Path, utkface_dir: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared' / 'study.db'}"
    outputs, _ = _two_workers(tmp_path, utkface_dir, url, "shared")
    _check_grid_study(load_study(url, "shared"), outputs)


def test_two_workers_share_one_study_on_postgresql(
    tmp_path: Path, utkface_dir: Path, postgres_url: str
) -> None:
    """The same two workers on a real PostgreSQL server (a throwaway local cluster)."""
    outputs, pids = _two_workers(tmp_path, utkface_dir, postgres_url, "pg-shared")

    study = optuna.load_study(study_name="pg-shared", storage=postgres_url)
    assert study.user_attrs["metric"] == "val/gender_acc"
    numbers = [t.number for t in study.trials]
    assert sorted(numbers) == list(range(len(numbers)))  # no trial number given twice
    finished = _check_grid_study(study, outputs)
    ran = [o.count(" COMPLETE: ") for o in outputs]
    # both workers ran trials (they start together and a trial takes seconds)
    assert all(ran), outputs
    assert {t.user_attrs["worker"]["pid"] for t in finished} == pids

    result = CliRunner().invoke(
        __import__("agegender.cli", fromlist=["app"]).app,
        ["sweep", "--summary", "--storage", postgres_url, "--study", "pg-shared"]
        + ["--out", str(tmp_path / "summary")],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "summary" / "summary.json").read_text())
    complete = [t for t in finished if t.state == TrialState.COMPLETE]
    assert summary["direction"] == "maximize" and len(summary["trials"]) == len(numbers)
    counts = summary["n_trials"]
    assert counts.get("COMPLETE", 0) + counts.get("PRUNED", 0) == 4
    assert summary["best"]["number"] == study.best_trial.number
    assert summary["best"]["value"] == pytest.approx(max(t.value for t in complete))


def test_resume_keeps_finished_trials_and_retries_dead_ones(
    tmp_path: Path, utkface_dir: Path
) -> None:
    config = tiny_config(tmp_path, utkface_dir)
    space_file = write(tmp_path / "grid4.yaml", GRID4)
    out = tmp_path / "sweep"
    first = run_sweep(config, space_file, trials=2, out=out, printer=lambda s: None)
    assert first.finished == 2
    before = [(t.number, t.params, t.value, t.datetime_complete) for t in first.study.trials]

    again = run_sweep(config, space_file, trials=3, out=out, printer=lambda s: None)
    trials = again.study.trials
    assert again.finished == 3 and again.ran == [2]
    assert [(t.number, t.params, t.value, t.datetime_complete) for t in trials[:2]] == before

    # a worker died while running the last grid point: its trial stays RUNNING
    dead = subprocess.Popen(["true"])
    dead.wait()
    study = load_study(again.storage, again.study_name)
    space = read_space(space_file)
    study.sampler = space.sampler()
    orphan = study.ask()
    for p in space.params.values():
        p.suggest(orphan)
    orphan.set_user_attr("worker", {"host": socket.gethostname(), "pid": dead.pid})
    lines: list[str] = []
    last = run_sweep(config, space_file, trials=4, out=out, printer=lines.append)
    states = {t.number: t.state for t in last.study.trials}
    assert states[orphan.number] == TrialState.FAIL
    assert any("is gone; queued again" in line for line in lines)
    finished = [t for t in last.study.trials if t.state == TrialState.COMPLETE]
    assert len(finished) == 4
    assert len({json.dumps(t.params, sort_keys=True) for t in finished}) == 4
    retry = finished[-1]
    assert retry.params == orphan.params and retry.system_attrs.get("failed_trial") == 3

    # a study name is tied to its space
    other = write(tmp_path / "other.yaml", GRID4.replace("0.003", "0.01"))
    with pytest.raises(SpaceError, match="another search space"):
        run_sweep(config, other, study_name=last.study_name, out=out, printer=lambda s: None)


def test_summary_without_complete_trials_skips_plots(tmp_path: Path) -> None:
    study = optuna.create_study(direction="maximize")
    study.set_user_attr("metric", "val/gender_acc")
    t = study.ask()
    study.tell(t, state=TrialState.FAIL)
    lines: list[str] = []
    summary = summarize(study, tmp_path, printer=lines.append)
    assert summary["best"] is None and summary["plots"] == {}
    assert "no complete trials" in summary["plots_skipped"]["optimization_history"]
    assert (tmp_path / "summary.json").is_file()


def test_cli_errors_are_one_line_with_exit_2(tmp_path: Path) -> None:
    from agegender.cli import app

    config = tiny_config(tmp_path, tmp_path / "faces")
    bad = write(tmp_path / "bad.yaml", "metric: val/gender_acc\nparams:\n  optim.lr: {grid: []}\n")
    runner = CliRunner()
    result = runner.invoke(app, ["sweep", str(config), "--space", str(bad)])
    assert result.exit_code == 2
    assert "params.optim.lr: grid needs a non-empty list" in result.output
    result = runner.invoke(app, ["sweep", str(config)])
    assert result.exit_code == 2 and "--space" in result.output
    result = runner.invoke(app, ["sweep", "--summary", "--out", str(tmp_path / "none")])
    assert result.exit_code == 2 and "no study database" in result.output
    assert issubclass(SpaceError, ConfigError)
