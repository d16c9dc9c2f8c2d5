"""The ``agegender`` command line: one thin function per command, calling the library.

Heavy imports (torch, timm, lightning) stay inside the commands so ``--help`` is fast.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(
    name="agegender",
    help="Train, evaluate and run face gender and age classifiers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Read, audit and split face datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error to stderr and exit non-zero."""
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


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
) -> None:
    """Write grouped, stratified k folds: no subject or duplicate group spans two folds."""
    from agegender.data.audit import audit_dataset
    from agegender.data.folds import make_folds, write_folds
    from agegender.data.readers import DatasetError, read_dataset

    try:
        result = read_dataset(path, format)
        report = audit_dataset(result, workers=workers, progress=console.is_terminal)
        readable = report.readable.to_numpy()
        table = result.table[readable]
        folds = make_folds(
            table,
            k,
            seed=seed,
            dup_group=report.group_id.to_numpy()[readable],
            conflict=report.conflict.to_numpy()[readable],
            conflicts=conflicts,
            use_official=official,
        )
    except (DatasetError, ValueError) as exc:
        fail(str(exc))
    write_folds(folds, out)
    counts = folds.table["fold"].value_counts().sort_index()
    how = "official dataset folds" if folds.official else f"StratifiedGroupKFold seed {seed}"
    console.print(
        f"wrote {out}: {len(folds.table)} faces in {folds.k} folds ({how}), "
        f"{folds.groups} independent groups; sizes "
        + ", ".join(f"{i}:{n}" for i, n in counts.items())
    )
    console.print(
        f"left out: {int((~readable).sum())} unreadable images, "
        f"{folds.dropped_conflicts} faces in duplicate groups with conflicting labels "
        f"(policy: {conflicts}), {len(result.problems)} label problems"
    )


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
