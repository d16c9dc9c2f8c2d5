"""``agegender train``, ``sweep`` and ``finetune``: fit a model from a config, or many,
or fine-tune a trained one on your photos.

``train`` loads a config (``--set`` overrides), trains into a run dir and prints the
best epoch; ``sweep`` runs (or resumes, or with ``--summary`` summarises) an Optuna
study over a search space, each trial a training run; ``finetune`` starts from a bundled
model (or a ``.pt``/``.ckpt``) with its own recipe (:mod:`agegender.finetune`).
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from agegender.cli.base import FORMAT_OPTION, app, console, fail
from agegender.errors import check_writable


@app.command("train")
def train_cmd(
    config: Path = typer.Argument(..., help="Run config (YAML), e.g. configs/default.yaml."),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a key: --set optim.lr=0.01 --set data.split=[0.4,0.3,0.3]"
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run dir (default runs/NAME)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/checkpoints/last.ckpt."),
) -> None:
    """Train a model from a config; writes config.yaml, metrics.csv, checkpoints, summary.json."""
    from agegender.config import load_config

    cfg = load_config(config, overrides)
    out_dir = check_writable(out or Path("runs") / (cfg.name or config.stem), folder=True)
    from agegender.train import train

    result = train(cfg, out_dir, resume=resume, printer=console.print)
    s = result.summary
    best = s.get("best") or {}
    from agegender.metric_names import logged_metrics

    shown = ", ".join(
        f"{k} {best[k]:.4g}"
        for k in logged_metrics(cfg.task.gender, cfg.task.age, ["val"])
        if k != "val/age_acc_1off" and isinstance(best.get(k), int | float)
    )
    console.print(
        f"done: {s['epochs_run']} epochs, best epoch {int(best.get('epoch', -1)) + 1}: {shown}; "
        f"{s.get('train_images_per_sec')} train images/s; run dir {result.out_dir}"
    )


@app.command("sweep")
def sweep_cmd(
    config: Path | None = typer.Argument(
        None, help="Base run config (YAML) every trial starts from."
    ),
    space: Path | None = typer.Option(
        None, "--space", "-s", help="Search space (YAML), e.g. configs/sweeps/batch_lr_fc.yaml."
    ),
    trials: int | None = typer.Option(
        None,
        "--trials",
        "-n",
        min=1,
        help="Finished trials the study should hold, over all workers (default: the space's "
        "trials; a grid: its size).",
    ),
    storage: str | None = typer.Option(
        None,
        "--storage",
        help="Optuna storage URL (default sqlite:///OUT/study.db); a shared database, e.g. "
        "postgresql://..., lets workers on several machines run one study.",
    ),
    study: str | None = typer.Option(
        None, "--study", help="Study name (default CONFIGNAME-SPACESTEM)."
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Sweep dir for trial runs and plots (default runs/sweeps/STUDY)."
    ),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a base config key for every trial: --set train.epochs=3"
    ),
    summary: bool = typer.Option(
        False, "--summary", help="Print the best trials, write summary.json and PNG plots."
    ),
    top: int = typer.Option(10, "--top", min=1, help="Rows in the --summary table."),
) -> None:
    """Hyperparameter sweep on Optuna (grid or TPE, pruning, resumable, several workers).

    Re-running the same command resumes: finished trials are kept.
    """
    from agegender import sweep as sw

    if summary:
        name = study
        if name is None and config is not None and space is not None:
            name = sw.default_study_name(config, space)
        sweep_dir = out or (Path("runs") / "sweeps" / name if name else None)
        if storage is None and sweep_dir is None:
            fail("sweep --summary: give --study, --storage or --out (or CONFIG and --space)")
        st = sw.load_study(storage or sw.default_storage(sweep_dir), name)
        if sweep_dir is None:
            stored = st.user_attrs.get("out")
            sweep_dir = Path(stored) if stored else Path("runs") / "sweeps" / st.study_name
        sw.summarize(st, sweep_dir, top=top, console=Console(), printer=console.print)
        return
    if config is None or space is None:
        fail("sweep: give CONFIG and --space SPACE.yaml (or --summary)")
    if out is not None:
        check_writable(out, folder=True)
    try:
        res = sw.run_sweep(
            config,
            space,
            trials=trials,
            storage=storage,
            study_name=study,
            out=out,
            overrides=overrides,
            printer=lambda s: console.print(s, highlight=False, soft_wrap=True),
        )
    except KeyboardInterrupt:
        fail("interrupted: run the same command to resume", code=130)
    best = res.best
    shown = f"best trial {best['number']}: {best['value']:.4f}" if best else "no complete trial"
    console.print(
        f"done: {res.finished} of {res.n_trials} trials finished in study {res.study_name}, "
        f"{len(res.ran)} run by this worker; {shown}; "
        f"agegender sweep --summary --study {res.study_name} --out {res.out_dir}",
        highlight=False,
        soft_wrap=True,
    )


@app.command("finetune")
def finetune_cmd(
    model: str = typer.Argument(
        ..., help="Where to start: a bundled model's name (default, accurate), a .pt or a .ckpt."
    ),
    data: Path = typer.Option(..., "--data", "-d", help="Your labelled photos (folder or file)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run dir for the fine-tuned model."),
    format: str = FORMAT_OPTION,
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a key of the model's recipe: --set train.epochs=4"
    ),
    detector: str = typer.Option(
        "blazeface", "--detector", help="Face path for the threshold's validation photos."
    ),
) -> None:
    """Fine-tune a model on your photos with its own recipe and framing: person-grouped
    validation, gender threshold recalibrated on it, model.pt + model.onnx + MODEL_CARD.md."""
    from agegender.finetune import finetune

    out_dir = check_writable(out, folder=True)
    res = finetune(
        model,
        data,
        out_dir,
        format=format,
        overrides=overrides,
        detector=detector,
        printer=console.print,
    )
    s = res.summary
    best = s.get("best") or {}
    shown = ", ".join(
        f"{k} {best[k]:.4g}"
        for k in ("val/gender_acc", "val/age_acc", "val/age_mae")
        if isinstance(best.get(k), int | float)
    )
    decision = s.get("gender_decision") or {}
    threshold = f"; gender threshold {decision['threshold']}" if decision else ""
    console.print(
        f"done: {s['epochs_run']} epochs, best epoch {int(best.get('epoch', -1)) + 1}: {shown}"
        f"{threshold} (on {s['validation']['photos']} validation photos of "
        f"{s['validation']['people']} people); wrote {res.model_onnx}, {res.model_pt}, "
        f"{res.card}",
        highlight=False,
        soft_wrap=True,
    )
