"""The ``agegender`` command line: one thin function per command, calling the library.

Heavy imports (torch, timm, lightning) stay inside the commands so ``--help`` is fast.

Errors: every command runs inside :class:`_Commands`, where a user-facing exception (bad
config, data or model file, a file that cannot be written, a full disk: see
:func:`agegender.errors.is_user_error`) becomes one line, ``error: <file>: <reason>``, on
stderr and exit status 2. ``AGEGENDER_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from agegender.errors import check_writable, error_line, is_user_error

console = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error to stderr and exit non-zero."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    text = escape(lines[0] if lines else "failed")
    console.print(f"[bold red]error:[/] {text}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


class _Commands(TyperGroup):
    """The root command: the one place where user errors become one line and exit 2."""

    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except Exception as exc:  # click's Exit/Abort/UsageError are not user errors here
            if not is_user_error(exc) or os.environ.get("AGEGENDER_DEBUG"):
                raise
            fail(error_line(exc))


app = typer.Typer(
    name="agegender",
    help="Train, evaluate and run face gender and age classifiers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_Commands,
)
data_app = typer.Typer(help="Read, audit and split face datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("folds")
def data_folds(
    path: Path = typer.Argument(..., help="Dataset folder or label file."),
    out: Path = typer.Option(..., "--out", "-o", help="CSV to write (path, fold, ...)."),
    k: int = typer.Option(5, "--k", min=2, help="Number of folds."),
    seed: int = typer.Option(0, "--seed", help="Shuffle seed for the fold assignment."),
    format: str = typer.Option("auto", "--format", "-f", help="Dataset layout (auto detects)."),
    conflicts: str = typer.Option(
        "drop", "--conflicts", help="Duplicates with disagreeing labels: drop | keep."
    ),
    official: bool = typer.Option(
        True, "--official/--no-official", help="Keep the dataset's own folds (Adience)."
    ),
    workers: int | None = typer.Option(None, "--workers", help="Parallel image readers."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Write grouped, stratified k folds: no subject or duplicate group spans two folds."""
    import json

    from agegender.data.folds import make_folds, write_folds

    check_writable(out)
    from agegender.data.prepare import read_rows
    from agegender.data.readers import DatasetError

    try:
        rows = read_rows(
            path,
            format,
            drop_conflicts=False,  # make_folds drops them (--conflicts) after grouping
            workers=workers,
            progress=console.is_terminal and not as_json,
        )
        folds = make_folds(
            rows.table,
            k,
            seed=seed,
            dup_group=rows.dup_group,
            conflict=rows.conflict,
            conflicts=conflicts,
            use_official=official,
        )
    except (DatasetError, ValueError) as exc:
        fail(str(exc))
    rows.counts.reject("conflicting", folds.dropped_conflicts)
    write_folds(folds, out)
    sizes = folds.table["fold"].value_counts().sort_index()
    how = "official dataset folds" if folds.official else f"StratifiedGroupKFold seed {seed}"
    console.print(rows.counts.line(), highlight=False, soft_wrap=True)
    console.print(
        f"wrote {out}: {len(folds.table)} faces in {folds.k} folds ({how}), "
        f"{folds.groups} independent groups; sizes "
        + ", ".join(f"{i}:{n}" for i, n in sizes.items()),
        highlight=False,
        soft_wrap=True,
    )
    if as_json:
        info = {
            "out": str(out),
            "folds": folds.k,
            "official_folds": folds.official,
            "faces": len(folds.table),
            "groups": folds.groups,
            "fold_sizes": sizes.astype(int).tolist(),
            "conflicts": conflicts,
            "row_counts": rows.counts.to_dict(),
        }
        typer.echo(json.dumps(info))


@data_app.command("audit")
def data_audit(
    path: Path = typer.Argument(..., help="Dataset folder or label file."),
    format: str = typer.Option("auto", "--format", "-f", help="Dataset layout (auto detects)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    workers: int | None = typer.Option(None, "--workers", min=1, help="Parallel image readers."),
) -> None:
    """Unreadable images, exact and near-duplicate images, label conflicts, label balance.

    The rows kept are those ``data folds`` and ``train`` (with ``data.audit``) would keep:
    unreadable images and duplicate groups with conflicting labels are rejected."""
    import json

    from agegender.data.audit import print_report
    from agegender.data.prepare import read_rows
    from agegender.data.readers import DatasetError

    try:
        rows = read_rows(
            path,
            format,
            workers=workers,
            progress=console.is_terminal and not as_json,
            console=console,
        )
    except (DatasetError, ValueError, OSError) as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps({**rows.report.to_dict(), "row_counts": rows.counts.to_dict()}))
    else:
        print_report(rows.report, Console())
    console.print(rows.counts.line(), highlight=False, soft_wrap=True)


@data_app.command("cache")
def data_cache(
    path: Path = typer.Argument(..., help="Dataset folder or label file."),
    size: int = typer.Option(..., "--size", "-s", min=8, max=1024, help="Image side (px)."),
    format: str = typer.Option("auto", "--format", "-f", help="Dataset layout (auto detects)."),
    cache_dir: Path | None = typer.Option(
        None, "--cache-dir", help="Cache root (default $AGEGENDER_CACHE or ~/.cache/agegender)."
    ),
    workers: int | None = typer.Option(None, "--workers", min=1, help="Parallel decoders."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    align: bool = typer.Option(
        False, "--align", help="Photos, not face crops: detect and align the largest face."
    ),
    detector: str = typer.Option("blazeface", "--detector", help="Detector for --align."),
) -> None:
    """Decode every image once into a uint8 cache (reused while the files are unchanged).

    With --align each photo goes through the predictor's face path (detect, align, crop),
    so a model trains on the geometry it will see; photos without a face are listed."""
    import json

    from agegender.data.cache import build_cache
    from agegender.data.prepare import read_rows, reject_failed_images
    from agegender.data.readers import DatasetError

    if cache_dir is not None:
        check_writable(cache_dir, folder=True)
    try:
        rows = read_rows(path, format, audit=False)
        cache = build_cache(
            rows.table,
            size,
            cache_dir=cache_dir,
            workers=workers,
            progress=console.is_terminal and not as_json,
            console=console,
            align=detector if align else None,
        )
    except (DatasetError, ValueError, OSError, RuntimeError) as exc:
        fail(str(exc))
    reject_failed_images(rows.counts, [p.reason for p in cache.problems])
    info = {
        "cache": str(cache.folder),
        "images": len(cache),
        "failed": cache.failed,
        "size": cache.size,
        "align": cache.meta.get("align"),
        "no_face": sum(p.reason == "no face found" for p in cache.problems),
        "reused": cache.reused,
        "build_seconds": cache.meta.get("build_seconds"),
        "images_per_second": cache.meta.get("images_per_second"),
        "problems": [p.to_dict() for p in cache.problems],
        "row_counts": rows.counts.to_dict(),
    }
    console.print(rows.counts.line(), highlight=False, soft_wrap=True)
    if as_json:
        typer.echo(json.dumps(info))
        return
    how = "reused existing cache" if cache.reused else "built"
    when = "earlier " if cache.reused else ""
    typer.echo(
        f"{how}: {cache.folder}\n{len(cache)} images at {cache.size}x{cache.size}, "
        f"{cache.failed} failed; built {when}in {info['build_seconds']} s "
        f"({info['images_per_second']} images/s)"
    )
    for p in cache.problems[:10]:
        typer.echo(f"  failed: {p}")
    if len(cache.problems) > 10:
        typer.echo(f"  ... and {len(cache.problems) - 10} more")


@app.command("models")
def models_list(
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
) -> None:
    """List every registered model: parameters (gender + age groups), input size, summary."""
    import json

    from rich.table import Table

    from agegender.models import list_models, model_info

    infos = [model_info(name) for name in list_models()]
    if as_json:
        typer.echo(json.dumps(infos, indent=2))
        return
    table = Table(title="agegender models (params for gender + 8 age groups)")
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("params", justify="right", no_wrap=True)
    table.add_column("input", justify="right", no_wrap=True)
    table.add_column("family", no_wrap=True)
    table.add_column("description", ratio=1)
    for info in infos:
        size = str(info["input_size"])
        if info["resize"] != info["input_size"]:
            size += f" (of {info['resize']})"
        table.add_row(
            info["name"], f"{info['params'] / 1e6:.2f}M", size, info["family"], info["description"]
        )
    Console().print(table)


@app.command("detectors")
def detectors_list(
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
) -> None:
    """List the face detectors: what each returns and how fast it is (default first)."""
    import json

    from rich.table import Table

    from agegender.infer.detector import DEFAULT_DETECTOR, DETECTOR_INFO, DETECTORS

    names = sorted(DETECTORS, key=lambda n: n != DEFAULT_DETECTOR)
    rows = [{"name": n, "default": n == DEFAULT_DETECTOR, **DETECTOR_INFO[n]} for n in names]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="agegender face detectors (--detector NAME)")
    for col in ("name", "returns", "speed per photo", "notes"):
        table.add_column(col, ratio=1 if col == "notes" else None)
    for r in rows:
        name = r["name"] + (" (default)" if r["default"] else "")
        table.add_row(name, r["returns"], r["speed"], r["notes"])
    Console().print(table)


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
    from agegender.evaluate.metrics import logged_metrics

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


# ---------------------------------------------------------------- evaluate / cv / report


def _metric_lines(metrics: dict) -> list[str]:
    keys = (
        ("gender_accuracy", "gender accuracy", True),
        ("gender_balanced_accuracy", "gender balanced accuracy", True),
        ("gender_roc_auc", "gender ROC-AUC", False),
        ("gender_log_loss", "gender log loss", False),
        ("gender_ece", "gender ECE (15 bins)", False),
        ("age_group_exact", "age group exact", True),
        ("age_group_one_off", "age group one-off", True),
        ("age_mae", "age MAE (years)", False),
        ("age_cs5", "age CS@5", True),
        ("age_bin_exact", "age bin exact", True),
        ("age_bin_one_off", "age bin one-off", True),
        ("age_bin_error", "age bin error (years)", False),
        ("faces_found", "photos with a face", True),
        ("gender_accuracy_all", "gender accuracy, all", True),
        ("gender_balanced_accuracy_all", "gender balanced acc., all", True),
        ("age_bin_exact_all", "age bin exact, all", True),
    )
    out = []
    for key, label, pct in keys:
        v = metrics.get(key)
        if isinstance(v, int | float) and v == v:
            out.append(f"{label:26s} {100 * v:6.2f} %" if pct else f"{label:26s} {v:8.4f}")
    return out


def _print_row_counts(row_counts: dict) -> None:
    """The ``read N rows from PATH: kept K, rejected R (...)`` line of a JSON result."""
    from agegender.data.prepare import RowCounts

    console.print(RowCounts.from_dict(row_counts).line(), highlight=False, soft_wrap=True)


def _evaluate_photos(
    model: str,
    data: Path,
    format: str,
    detector: str,
    limit: int | None,
    as_json: bool,
    out: Path | None,
    tta: str,
) -> None:
    import json

    from agegender.data.records import DatasetError
    from agegender.evaluate.evaluation import to_jsonable
    from agegender.evaluate.photos import evaluate_model_file
    from agegender.infer import NoModelError

    if tta != "none":
        fail("--tta: test-time augmentation needs a training checkpoint (.ckpt)")
    detector = "blazeface" if detector == "none" else detector
    stem = Path(model).stem if Path(model).suffix else model
    out = out or Path("runs") / "eval" / stem / "results.json"
    if out.suffix.lower() != ".json":
        fail(f"--out must end in .json, got {out}")
    check_writable(out)
    try:
        res = evaluate_model_file(model, data, format, detector=detector, out=out, limit=limit)
    except (DatasetError, NoModelError, ValueError, FileNotFoundError, KeyError) as exc:
        fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    if as_json:
        typer.echo(json.dumps(to_jsonable({k: v for k, v in res.items() if k != "fairness"})))
    else:
        for line in _metric_lines(res["metrics"]):
            typer.echo(line)
    _print_row_counts(res["row_counts"])
    console.print(
        f"{res['n_evaluated']} of {res['n_images']} photos with a face ({detector}); "
        f"{1000 * (res['info']['seconds_per_photo'] or 0):.1f} ms/photo; wrote {out} and "
        f"{res['predictions_csv']}",
        highlight=False,
        soft_wrap=True,
    )


@app.command("evaluate")
def evaluate_cmd(
    checkpoint: Path = typer.Argument(
        ...,
        help="A training checkpoint (.ckpt), or any model predict loads: a bundled name "
        "(default), an .onnx or a .pt (evaluated photo by photo through the face path).",
    ),
    data: Path = typer.Option(..., "--data", "-d", help="Dataset folder or label file."),
    format: str = typer.Option("auto", "--format", "-f", help="Dataset layout (auto detects)."),
    detector: str = typer.Option(
        "none",
        "--detector",
        help="none (face crops, from the image cache) | blazeface | haar (the predictor's "
        "face path: detect, align, crop).",
    ),
    tta: str = typer.Option("none", "--tta", help="none | flip | oversample (10 views)."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Faces per forward pass."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Evaluate a random sample."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="results.json to write (default RUN/eval/results.json)."
    ),
) -> None:
    """Evaluate a checkpoint: metrics, fairness table, per-image predictions CSV."""
    import json

    from agegender.data.records import DatasetError
    from agegender.evaluate.evaluation import evaluate_checkpoint, run_dir_of, to_jsonable

    if checkpoint.suffix != ".ckpt":  # a bundled name, .onnx or .pt: the predictor's path
        _evaluate_photos(str(checkpoint), data, format, detector, limit, as_json, out, tta)
        return
    if not checkpoint.is_file():
        fail(f"{checkpoint}: checkpoint not found")
    from agegender.evaluate.tta import check_mode
    from agegender.infer.detector import check_detector

    for option, check, value in (
        ("--tta", check_mode, tta),
        ("--detector", check_detector, detector),
    ):
        try:
            check(value)
        except ValueError as exc:
            fail(f"{option}: {exc}")
    out = out or run_dir_of(checkpoint) / "eval" / "results.json"
    if out.suffix.lower() != ".json":
        fail(f"--out must end in .json, got {out}")
    check_writable(out)
    try:
        res = evaluate_checkpoint(
            checkpoint,
            data,
            format,
            tta=tta,
            detector=detector,
            batch_size=batch_size,
            out=out,
            limit=limit,
            progress=console.is_terminal,
        )
    except (DatasetError, ValueError, FileNotFoundError, KeyError) as exc:
        fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    if as_json:
        typer.echo(json.dumps(to_jsonable(res), indent=2))
    else:
        for line in _metric_lines(res["metrics"]):
            typer.echo(line)
    _print_row_counts(res["row_counts"])
    t = res["timing"]
    no_face = f", no face found in {res['no_face']} (whole image used)" if res["no_face"] else ""
    ms = f"{1000 * t['seconds_per_image']:.2f} ms/image" if t["seconds_per_image"] else "-"
    console.print(
        f"{res['n_evaluated']} of {res['n_images']} images evaluated ({res['n_failed']} failed"
        f"{no_face}); tta {tta} ({t['views']} views), {ms} on {t['device']}; wrote {out} and "
        f"{res['predictions_csv']}",
        highlight=False,
        soft_wrap=True,
    )


@app.command("cv")
def cv_cmd(
    config: Path = typer.Argument(..., help="Run config (YAML)."),
    folds: int = typer.Option(5, "--folds", "-k", min=2, help="Number of folds."),
    overrides: list[str] = typer.Option([], "--set", help="Override a key: --set train.epochs=5"),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run dir (default runs/NAME-cv)."),
    tta: str = typer.Option("none", "--tta", help="Test-time augmentation: none|flip|oversample."),
    only: list[int] = typer.Option(
        [],
        "--fold",
        min=0,
        help="Run only this fold (0-based; repeatable): spread folds over processes or "
        "machines that share --out; results.json comes when all folds are done.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print results.json to stdout."),
) -> None:
    """k-fold cross-validation (grouped, stratified): mean ± std of every metric.

    Re-running resumes: finished folds are skipped, an interrupted one continues.
    """
    import json

    from agegender.config import load_config
    from agegender.evaluate.cv import cv_table, run_cv

    cfg = load_config(config, overrides)
    out_dir = check_writable(out or Path("runs") / f"{cfg.name or config.stem}-cv", folder=True)
    res = run_cv(
        cfg,
        folds,
        out_dir,
        tta=tta,
        only=only or None,
        printer=console.print,
        progress=console.is_terminal,
    )
    if not res.get("complete", True):
        return
    if as_json:
        typer.echo(json.dumps(res, indent=2))
    else:
        Console().print(cv_table(res))
    console.print(f"wrote {Path(out_dir) / 'results.json'}", highlight=False)


@app.command("report")
def report_cmd(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories (train, cv or eval)."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Report folder (default RUN/report, or ./report for several)."
    ),
) -> None:
    """Markdown report: learning curves, confusion matrices, age error, calibration, fairness.

    With several runs it starts with one comparison table.
    """
    from agegender.evaluate.report import make_report

    if out is not None:
        check_writable(out, folder=True)
    path = make_report(list(run_dirs), out)
    pngs = sorted(p.name for p in path.parent.glob("*.png"))
    console.print(f"wrote {path} and {len(pngs)} figures", highlight=False)


# ---------------------------------------------------------------- predict / export / serve

bench_app = typer.Typer(help="Speed benchmarks on this machine.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


def _load_predictor(
    model: str | None,
    runtime: str,
    detector: str,
    detect_size: int | None = None,
    **kwargs: object,
):
    """Predictor.load with every loading problem turned into a one-line error."""
    from agegender.infer import HaarDetector, NoModelError, Predictor

    try:
        det = (
            HaarDetector(detect_size=detect_size)
            if detector == "haar" and detect_size
            else detector
        )
        return Predictor.load(model, runtime=runtime, detector=det, **kwargs)
    except (NoModelError, ValueError, OSError, KeyError, RuntimeError) as exc:
        fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def _age_range(face: object) -> str:
    """The age in years with its likely range: the middle half of a DEX distribution."""
    age, probs = getattr(face, "age", None), getattr(face, "age_probs", None)
    if age is None:
        return getattr(face, "age_group", None) or "-"
    if not probs:
        return f"{age:.0f} ({face.age_group})"  # type: ignore[attr-defined]
    import numpy as np

    cdf = np.cumsum(probs)
    lo, hi = int(np.searchsorted(cdf, 0.25)), int(np.searchsorted(cdf, 0.75))
    return f"{age:.0f} ({lo}-{hi})"


def _face_table_rows(result: object) -> list[tuple[str, ...]]:
    name = Path(result.source).name  # type: ignore[attr-defined]
    if not result.faces:  # type: ignore[attr-defined]
        return [(name, "-", "-", "-", result.error or "no face")]  # type: ignore[attr-defined]
    rows = []
    for f in result.faces:  # type: ignore[attr-defined]
        p = max(f.p_female or 0.0, f.p_male or 0.0)
        gender = f"{f.gender} ({100 * p:.0f} %)" if f.gender else "-"
        how = f.face_source + (", aligned" if f.aligned else "")
        rows.append((name, str(f.face_index), gender, _age_range(f), how))
    return rows


def _print_face_table(rows: list[tuple[str, ...]]) -> None:
    from rich.table import Table

    table = Table(title="faces (age: years, likely range = middle half of the distribution)")
    for col in ("file", "face", "gender", "age", "found"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(*r)
    Console().print(table)


@app.command("predict")
def predict_cmd(
    paths: list[Path] = typer.Argument(
        ..., help="Image files, folders (recursive) or .csv/.txt lists of image paths."
    ),
    model: str | None = typer.Option(
        None, "--model", "-m", help="A .ckpt, .onnx or .pt model, or a bundled model name."
    ),
    detector: str = typer.Option(
        "blazeface", "--detector", help="blazeface | haar | none (pre-cropped faces)."
    ),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Faces per forward pass."),
    out: str = typer.Option("-", "--out", "-o", help="FILE.csv, FILE.json or - (CSV, stdout)."),
    annotate: Path | None = typer.Option(
        None, "--annotate", help="Write copies of the images with boxes and labels here."
    ),
    runtime: str = typer.Option(
        "auto", "--runtime", help="torch | onnxruntime (auto: onnxruntime for .onnx)."
    ),
    margin: float | None = typer.Option(
        None,
        "--margin",
        help="Crop margin per side around a Haar box, as a fraction of its size (default: "
        "the model's, else 0: the box matches UTKFace's framing).",
    ),
    detect_size: int | None = typer.Option(
        None,
        "--detect-size",
        help="Long side the Haar detector sees (default 160; more finds smaller faces, slower).",
    ),
    workers: int | None = typer.Option(None, "--workers", help="Decode/detect threads."),
    threads: int | None = typer.Option(None, "--threads", help="Classifier intra-op threads."),
    strict: bool = typer.Option(
        False, "--strict", help="Stop at the first input that cannot be read (exit 1)."
    ),
) -> None:
    """Detect faces and predict gender and age; one row per face (or per failed image).

    Exit status: 0 every input was read (a photo without a face is a result, not a
    failure); 1 some inputs could not be read (their rows say why, the others' results are
    written); 2 nothing could be done (usage, model, no input)."""
    import sys

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from agegender.infer.inputs import collect_image_paths
    from agegender.infer.outputs import ResultWriter, output_format

    try:
        output_format(out)
    except ValueError as exc:
        fail(str(exc))
    if out != "-":  # before any work: its folders are made, a file in the way is an error
        check_writable(out)
    if annotate is not None:
        check_writable(annotate, folder=True)
    try:
        files = collect_image_paths(paths)
    except (ValueError, OSError) as exc:
        fail(str(exc))
    if not files:
        fail("no images found in " + ", ".join(map(str, paths)))
    predictor = _load_predictor(
        model,
        runtime,
        detector,
        detect_size,
        margin=margin,
        workers=workers,
        batch_size=batch_size,
        threads=threads,
    )
    as_table = out == "-" and sys.stdout.isatty()  # a person at a terminal: a readable table
    table_rows: list[tuple[str, ...]] = []
    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    writer = ResultWriter(None if as_table else out, predictor.spec, annotate=annotate)
    with writer, progress:
        task = progress.add_task("predicting", total=len(files))
        for result in predictor.predict_paths(files, batch_size=batch_size):
            writer.write(result)
            if as_table:
                table_rows.extend(_face_table_rows(result))
            progress.advance(task)
            if strict and writer.unreadable:
                break
    if as_table:
        _print_face_table(table_rows)
    where = "the table above" if as_table else "stdout" if out == "-" else out
    console.print(
        f"{len(files)} images: {writer.faces} faces, {writer.failed} without a result "
        f"(see the error column; {writer.unreadable} could not be read); wrote {where}",
        highlight=False,
        soft_wrap=True,
    )
    if writer.unreadable:
        raise typer.Exit(1)


@app.command("export")
def export_cmd(
    checkpoint: Path = typer.Argument(..., help="A Lightning .ckpt (or a .pt model)."),
    onnx: Path | None = typer.Option(None, "--onnx", help="The .onnx file to write."),
    pt: Path | None = typer.Option(
        None, "--pt", help="Also (or only) write a PyTorch .pt (state dict + meta)."
    ),
    opset: int = typer.Option(17, "--opset", help="ONNX opset version."),
) -> None:
    """Export a checkpoint to a self-describing ONNX file (probabilities, dynamic batch)."""
    import numpy as np

    from agegender.infer import Predictor, save_torch_model
    from agegender.infer.onnx import export_onnx

    if not checkpoint.is_file():
        fail(f"no such checkpoint: {checkpoint}")
    if onnx is None and pt is None:
        fail("export: give --onnx FILE.onnx and/or --pt FILE.pt")
    if onnx is not None and onnx.suffix != ".onnx":
        fail(f"--onnx {onnx}: the file name must end in .onnx")
    if pt is not None and pt.suffix not in (".pt", ".pth"):
        fail(f"--pt {pt}: the file name must end in .pt")
    for target in (onnx, pt):
        if target is not None:
            check_writable(target)
    from agegender.artifact import load_model

    module, meta = load_model(checkpoint)
    meta = dict(meta)
    meta.setdefault("name", checkpoint.stem)
    if pt is not None:
        save_torch_model(module, meta, pt)
        console.print(f"wrote {pt} ({pt.stat().st_size / 1e6:.1f} MB)", highlight=False)
    if onnx is None:
        return
    export_onnx(module, meta, onnx, opset=opset)
    # check the exported graph against PyTorch on a random batch
    torch_p = Predictor.from_module(module, meta, runtime="torch", detector="none")
    onnx_p = Predictor.load(onnx, detector="none")
    s = torch_p.spec.input_size
    batch = np.random.default_rng(0).standard_normal((4, 3, s, s)).astype(np.float32)
    a, b = torch_p.classify(batch), onnx_p.classify(batch)
    diff = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    console.print(
        f"wrote {onnx} ({onnx.stat().st_size / 1e6:.1f} MB, outputs "
        f"{', '.join(onnx_p.spec.output_names)}); max |onnx - torch| = {diff:.2e}",
        highlight=False,
        soft_wrap=True,
    )


@app.command("serve")
def serve_cmd(
    model: str | None = typer.Option(
        None, "--model", "-m", help="A .ckpt, .onnx or .pt model, or a bundled model name."
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    runtime: str = typer.Option("auto", "--runtime", help="torch | onnxruntime."),
    detector: str = typer.Option("blazeface", "--detector", help="blazeface | haar | none."),
    max_file_mb: float = typer.Option(10.0, "--max-file-mb", help="Largest upload per file."),
    max_files: int = typer.Option(16, "--max-files", help="Most files per request."),
    timeout: float = typer.Option(30.0, "--timeout", help="Inference timeout per request (s)."),
    max_request_mp: float = typer.Option(
        48.0, "--max-request-mp", help="Decoded megapixels per request (all images)."
    ),
    max_queue: int = typer.Option(
        16, "--max-queue", help="Ordinary requests that may wait; more get 503 + Retry-After."
    ),
    body_timeout: float = typer.Option(
        15.0, "--body-timeout", help="Seconds a request body may take to arrive (else 408)."
    ),
    max_connections: int = typer.Option(
        256, "--max-connections", help="Open connections and requests at once (else 503)."
    ),
    detect_size: int | None = typer.Option(
        None, "--detect-size", help="Long side the Haar detector sees (default 160)."
    ),
    threads: int | None = typer.Option(None, "--threads", help="Classifier intra-op threads."),
) -> None:
    """Serve the HTTP API (POST /v1/predict, GET /healthz, /docs) and an upload page at /."""
    from agegender.serve import ServeSettings, serve

    predictor = _load_predictor(model, runtime, detector, detect_size, threads=threads)
    settings = ServeSettings(
        max_file_bytes=int(max_file_mb * 1024 * 1024),
        max_files=max_files,
        timeout_s=timeout,
        max_request_pixels=int(max_request_mp * 1_000_000),
        max_queue=max_queue,
        body_timeout_s=body_timeout,
        max_connections=max_connections,
    )
    console.print(f"serving {predictor.name} ({predictor.runtime}) on http://{host}:{port}/")
    serve(predictor, settings, host=host, port=port)


@bench_app.command("predict")
def bench_predict_cmd(
    model: str | None = typer.Option(
        None, "--model", "-m", help="Model file, bundled name or registered architecture."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    seconds: float = typer.Option(2.0, "--seconds", help="Time per measurement."),
    photos: int = typer.Option(200, "--photos", help="Photos for the end-to-end figure."),
    detector: str = typer.Option("blazeface", "--detector", help="blazeface | haar | none."),
) -> None:
    """Faces/s of the classifier (batch 1 and 64, torch and ONNX) and photos/s end to end
    (made 250x250 photos, and FairFace-540's real photos when the data is there)."""
    import json

    from agegender.infer.bench import bench_predict

    res = bench_predict(model, seconds=seconds, photos=photos, detector=detector)
    if as_json:
        typer.echo(json.dumps(res, indent=2))
        return
    for k, v in res.items():
        typer.echo(f"{k:32s} {v}")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
