"""``agegender models`` and ``agegender detectors``: what is there to choose from.

Each lists the registered models (parameters, input size, summary) or the face
detectors (what each returns, how fast), as a table or, with ``--json``, a JSON list.
"""

from __future__ import annotations

import typer
from rich.console import Console

from agegender.cli.base import app


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
