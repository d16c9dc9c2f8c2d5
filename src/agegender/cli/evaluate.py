"""``agegender evaluate``, ``cv`` and ``report``: how good a model is, and the write-up.

``evaluate`` scores a checkpoint on a dataset (or any model ``predict`` loads, photo by
photo through the face path), ``calibrate`` chooses a model's gender threshold on
validation photos and writes it into a copy of the model, ``cv`` runs k-fold
cross-validation from a config, and ``report`` turns run dirs into a Markdown report with
figures. The helpers at the top print the metric lines and row counts.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from agegender.cli.base import FORMAT_OPTION, app, console, fail
from agegender.errors import check_writable


def _metric_lines(metrics: dict, intervals: dict | None = None) -> list[str]:
    """One line per metric present; a figure of ``intervals["overall"]`` (the face path's
    bootstrap over people) gains its 95 % interval and the photos / people it rests on,
    and the true age groups follow, one line each."""
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
        ("gender_recall_female_all", "female recall, all", True),
        ("gender_recall_male_all", "male recall, all", True),
        ("age_group_exact_mass_all", "age group exact, all (mass)", True),
        ("age_group_one_off_mass_all", "one-off, all (mass)", True),
        ("age_group_exact_nearest_all", "exact, all (nearest age)", True),
        ("age_group_one_off_nearest_all", "one-off, all (nearest age)", True),
        ("age_bin_exact_all", "age bin exact, all", True),
    )
    overall = (intervals or {}).get("overall", {})
    out = []
    for key, label, pct in keys:
        v = metrics.get(key, (overall.get(key) or {}).get("value"))
        if isinstance(v, int | float) and v == v:
            line = f"{label:27s} {100 * v:6.2f} %" if pct else f"{label:27s} {v:8.4f}"
            out.append(line + _interval_text(overall.get(key)))
    for group, cis in (intervals or {}).get("by_age_group", {}).items():
        parts = [
            f"{what} {_interval_text(cis.get(key), short=True)}"
            for key, what in (
                ("gender_accuracy_all", "gender"),
                ("age_group_exact_mass_all", "exact (mass)"),
                ("age_group_exact_nearest_all", "exact (nearest)"),
            )
            if cis.get(key)
        ]
        n = cis["faces_found"]
        out.append(
            f"  age group {group:5s} {n['photos']:6,} photos, {n['people']:5,} "
            f"{'person' if n['people'] == 1 else 'people'}: " + ", ".join(parts)
        )
    return out


def _interval_text(ci: dict | None, short: bool = False) -> str:
    """``  [low, high] 95 % CI over people (N photos, M people)``, or the short
    ``x % [low, high]``; "" without an interval."""
    if not ci or ci.get("low") is None:
        return "" if not short or not ci else f"{100 * ci['value']:.1f} %"
    span = f"[{100 * ci['low']:.1f}, {100 * ci['high']:.1f}]"
    if short:
        return f"{100 * ci['value']:.1f} % {span}"
    conf = round(100 * ci["confidence"])
    return f"  {span} {conf} % CI over people ({ci['photos']:,} photos, {ci['people']:,} people)"


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
        fail(exc)
    if as_json:
        typer.echo(json.dumps(to_jsonable({k: v for k, v in res.items() if k != "fairness"})))
    else:
        for line in _metric_lines(res["metrics"], res.get("intervals")):
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
    format: str = FORMAT_OPTION,
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
        fail(exc)
    if as_json:
        typer.echo(json.dumps(to_jsonable(res), indent=2))
    else:
        for line in _metric_lines(res["metrics"], res.get("intervals")):
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


@app.command("calibrate")
def calibrate_cmd(
    model: str = typer.Argument(
        ..., help="The model: a bundled name (accurate), an .onnx, a .pt or a .ckpt."
    ),
    data: Path = typer.Option(
        ...,
        "--data",
        "-d",
        help="Labelled VALIDATION photos (never the test set): a dataset folder or label file.",
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="The calibrated model to write (the same kind as MODEL)."
    ),
    rule: str = typer.Option(
        "equal-recall", "--rule", help="equal-recall (women and men) | balanced-accuracy."
    ),
    by_age: bool = typer.Option(
        False,
        "--by-age",
        help="Also a threshold per band of the model's predicted age (the rule applied within "
        "each band): children <13, teenagers 13-19, adults 20+ (other edges: --age-bands).",
    ),
    age_bands: str | None = typer.Option(
        None,
        "--age-bands",
        help="Predicted-age band edges in years, e.g. 13,20 (implies --by-age).",
    ),
    min_band_faces: int = typer.Option(
        50,
        "--min-band-faces",
        min=20,
        help="A band with fewer validation faces of either gender keeps the global threshold.",
    ),
    probability: str = typer.Option(
        "platt",
        "--probability",
        help="The reported P(female), moved so the decision falls at 0.5: platt (its slope "
        "fitted on the faces) | shift (slope 1).",
    ),
    format: str = FORMAT_OPTION,
    detector: str = typer.Option(
        "blazeface",
        "--detector",
        help="The face path's detector: blazeface | haar (photos, as predict runs them) | "
        "none (each image is already a face crop).",
    ),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Use a random sample."),
    as_json: bool = typer.Option(False, "--json", help="Print the decision as JSON."),
) -> None:
    """Choose the gender decision on validation photos; write it into a copy of the model.

    A threshold on the network's P(female) (one, or one per predicted-age band with
    --by-age), and the reported probability moved so the decision falls at 0.5: predict,
    evaluate and serve then call a face female exactly when its reported P(female) is
    above 0.5.
    """
    import json

    from agegender.data.records import DatasetError
    from agegender.evaluate.calibrate import (
        DEFAULT_AGE_BANDS,
        PROBABILITY_FITS,
        calibrate_model,
        check_rule,
        parse_age_bands,
    )
    from agegender.infer import NoModelError
    from agegender.infer.detector import check_detector

    try:
        check_rule(rule)
    except ValueError as exc:
        fail(f"--rule: {exc}")
    try:
        check_detector(detector)
    except ValueError as exc:
        fail(f"--detector: {exc}")
    if probability not in PROBABILITY_FITS:
        fail(f"--probability: unknown fit {probability!r}; choose platt or shift")
    edges = DEFAULT_AGE_BANDS if by_age else None
    if age_bands is not None:
        try:
            edges = parse_age_bands(age_bands)
        except ValueError as exc:
            fail(f"--age-bands: {exc}")
    check_writable(out)
    try:
        res = calibrate_model(
            model,
            data,
            out,
            format=format,
            rule=rule,
            age_bands=edges,
            min_band_faces=min_band_faces,
            probability=probability,
            detector=detector,
            limit=limit,
        )
    except (DatasetError, NoModelError, ValueError, FileNotFoundError, KeyError) as exc:
        fail(exc)
    if as_json:
        typer.echo(json.dumps(res, indent=2))
        return
    _print_row_counts(res["row_counts"])
    _print_decision(res)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f} %"


def _print_decision(res: dict) -> None:
    """``agegender calibrate``'s report: recalls at 0.5, at the threshold and by age band
    (with any fallback), and the reported probability's fit."""
    rows = [("at 0.5", res["at_0.5"]), (f"at {res['threshold']:g}", res["at_threshold"])]
    bands = res.get("age_bands")
    if bands:
        rows.append(("by age band", res["at_decision"]))
    for label, r in rows:
        console.print(
            f"{label:>11}: accuracy {_pct(r['accuracy'])}, female recall "
            f"{_pct(r['female_recall'])}, male recall {_pct(r['male_recall'])}",
            highlight=False,
        )
    console.print(
        f"{res['rule']} threshold {res['threshold']:.4f} on {res['female_faces']} female + "
        f"{res['male_faces']} male faces ({res['faces_found']} of {res['photos']} photos with "
        "a face)",
        highlight=False,
        soft_wrap=True,
    )
    if bands:
        for b in bands["bands"]:
            at, glob = b["at_threshold"], b["at_global"]
            how = b["fallback"] or f"{res['rule']} within the band"
            console.print(
                f"  predicted age {b['predicted_age']:>6}: threshold {b['threshold']:.4f} "
                f"({how}); {b['female_faces']} female + {b['male_faces']} male faces, "
                f"female / male recall {_pct(at['female_recall'])} / {_pct(at['male_recall'])} "
                f"(global threshold: {_pct(glob['female_recall'])} / "
                f"{_pct(glob['male_recall'])})",
                highlight=False,
                soft_wrap=True,
            )
    pr = res["probability"]
    net, rep = pr["network"], pr["reported"]
    console.print(
        f"reported P(female) = sigmoid({pr['slope']:g} * (logit(p) - logit(threshold))) "
        f"({pr['method']}): log loss {net['log_loss']:.4f} -> {rep['log_loss']:.4f}, ECE "
        f"{net['ece']:.4f} -> {rep['ece']:.4f} on these faces; wrote {res['out']}",
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
    calibrate: str = typer.Option(
        "none",
        "--calibrate",
        help="none | equal-recall | balanced-accuracy: score each test fold at the gender "
        "threshold this rule picks on the fold's validation faces.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print results.json to stdout."),
) -> None:
    """k-fold cross-validation (grouped, stratified): mean ± std of every metric.

    Re-running resumes: finished folds are skipped, an interrupted one continues; folds
    scored another way (--tta, --calibrate) are re-scored without retraining.
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
        calibrate=None if calibrate == "none" else calibrate,
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
