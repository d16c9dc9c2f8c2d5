"""``agegender data``: read, audit and split face datasets.

``data folds`` writes grouped, stratified k folds; ``data audit`` reports unreadable
images, duplicates, label conflicts and balance; ``data cache`` decodes every image once
into the uint8 cache training reads (optionally through the predictor's face path).
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from agegender.cli.base import FORMAT_OPTION, app, console, fail
from agegender.errors import check_writable

data_app = typer.Typer(help="Read, audit and split face datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("folds")
def data_folds(
    paths: list[Path] = typer.Argument(
        ..., help="Dataset folder or label file; several are folded together."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="CSV to write (path, fold, ...)."),
    k: int = typer.Option(5, "--k", min=2, help="Number of folds."),
    seed: int = typer.Option(0, "--seed", help="Shuffle seed for the fold assignment."),
    format: str = FORMAT_OPTION,
    conflicts: str = typer.Option(
        "drop", "--conflicts", help="Duplicates with disagreeing labels: drop | keep."
    ),
    official: bool = typer.Option(
        True, "--official/--no-official", help="Keep the dataset's own folds (Adience)."
    ),
    workers: int | None = typer.Option(None, "--workers", help="Parallel image readers."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Write grouped, stratified k folds: no subject or duplicate group spans two folds.

    With several datasets their rows are folded together and a face copied in two of them
    (found by the audit across datasets) stays in one fold."""
    import json

    from agegender.data.folds import write_folds

    check_writable(out)
    from agegender.data.prepare import read_folds
    from agegender.data.readers import DatasetError

    try:
        many, folds = read_folds(
            paths[0] if len(paths) == 1 else list(paths),
            format,
            k,
            seed=seed,
            conflicts=conflicts,
            official=official,
            workers=workers,
            progress=console.is_terminal and not as_json,
        )
    except (DatasetError, ValueError) as exc:
        fail(exc)
    write_folds(folds, out)
    sizes = folds.table["fold"].value_counts().sort_index()
    how = "official dataset folds" if folds.official else f"StratifiedGroupKFold seed {seed}"
    rows = many if isinstance(many, list) else [many]
    for r in rows:
        console.print(r.counts.line(), highlight=False, soft_wrap=True)
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
            "row_counts": rows[0].counts.to_dict(),
        }
        if len(rows) > 1:
            info["row_counts"] = [r.counts.to_dict() for r in rows]
        typer.echo(json.dumps(info))


@data_app.command("audit")
def data_audit(
    paths: list[Path] = typer.Argument(
        ..., help="Dataset folder or label file; several are also compared with each other."
    ),
    format: str = FORMAT_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    workers: int | None = typer.Option(None, "--workers", min=1, help="Parallel image readers."),
) -> None:
    """Unreadable images, exact and near-duplicate images, label conflicts, label balance.

    The rows kept are those ``data folds`` and ``train`` (with ``data.audit``) would keep:
    unreadable images and duplicate groups with conflicting labels are rejected. With
    several datasets, also the faces copied across them: byte-identical files, and faces
    that match once each is cut through the face path to one framing."""
    import json

    from agegender.data.audit import print_links, print_report
    from agegender.data.prepare import read_datasets, read_rows
    from agegender.data.readers import DatasetError

    progress = console.is_terminal and not as_json
    try:
        if len(paths) == 1:
            many = [
                read_rows(paths[0], format, workers=workers, progress=progress, console=console)
            ]
            links = None
        else:
            many, links = read_datasets(
                list(paths), format, workers=workers, progress=progress, console=console
            )
    except (DatasetError, ValueError, OSError, RuntimeError) as exc:
        fail(exc)
    reports = [{**r.report.to_dict(), "row_counts": r.counts.to_dict()} for r in many]
    if as_json:
        if links is None:
            typer.echo(json.dumps(reports[0]))
        else:
            typer.echo(json.dumps({"datasets": reports, "cross_dataset": links.summary}))
    else:
        for r in many:
            print_report(r.report, Console())
        if links is not None:
            print_links(links, Console())
    for r in many:
        console.print(r.counts.line(), highlight=False, soft_wrap=True)


@data_app.command("cache")
def data_cache(
    path: Path = typer.Argument(..., help="Dataset folder or label file."),
    size: int = typer.Option(..., "--size", "-s", min=8, max=1024, help="Image side (px)."),
    format: str = FORMAT_OPTION,
    cache_dir: Path | None = typer.Option(
        None, "--cache-dir", help="Cache root (default $AGEGENDER_CACHE or ~/.cache/agegender)."
    ),
    workers: int | None = typer.Option(None, "--workers", min=1, help="Parallel decoders."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    align: bool = typer.Option(
        False, "--align", help="Photos, not face crops: detect and align the largest face."
    ),
    detector: str = typer.Option("blazeface", "--detector", help="Detector for --align."),
    template: str = typer.Option(
        "utkface",
        "--template",
        help="Framing for --align: utkface (most models) or dlib_chip (dlib_resnet29).",
    ),
) -> None:
    """Decode every image once into a uint8 cache (reused while the files are unchanged).

    With --align each photo goes through the predictor's face path (detect, align, crop),
    so a model trains on the geometry it will see; photos without a face are listed."""
    import json

    from agegender.data.cache import build_cache
    from agegender.data.prepare import read_rows, reject_failed_images
    from agegender.data.readers import DatasetError
    from agegender.infer.align import named_template

    if cache_dir is not None:
        check_writable(cache_dir, folder=True)
    try:
        points = named_template(template)
        rows = read_rows(path, format, audit=False)
        cache = build_cache(
            rows.table,
            size,
            cache_dir=cache_dir,
            workers=workers,
            progress=console.is_terminal and not as_json,
            console=console,
            align=detector if align else None,
            template=points if align else None,
        )
    except (DatasetError, ValueError, OSError, RuntimeError) as exc:
        fail(exc)
    reject_failed_images(rows.counts, [p.reason for p in cache.problems])
    info = {
        "cache": str(cache.folder),
        "images": len(cache),
        "failed": cache.failed,
        "size": cache.size,
        "align": cache.meta.get("align"),
        "template": template if align else None,
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
