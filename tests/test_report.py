"""Reports (``agegender report``, ``agegender.evaluate.report``) of the tiny CV run of
``conftest.py``: figures, the comparison table, bad input."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from agegender.cli import app

FIGURES = ("learning_curves", "confusion_gender", "confusion_age_group", "age_error", "reliability")


def test_report_writes_figures_and_comparison(cv_run: Path, tmp_path: Path):
    from agegender.evaluate import make_report

    report = make_report([cv_run], tmp_path / "one")
    text = report.read_text()
    for fig in FIGURES:
        png = tmp_path / "one" / f"tiny-cv_{fig}.png"
        assert png.is_file() and png.stat().st_size > 1000, fig
        assert png.name in text
    assert "Fairness" in text and "| race | white |" in text

    res = CliRunner().invoke(
        app, ["report", str(cv_run), str(cv_run / "fold_0"), "--out", str(tmp_path / "two")]
    )
    assert res.exit_code == 0, res.output
    text = (tmp_path / "two" / "report.md").read_text()
    table = [
        line
        for line in text.splitlines()
        if line.startswith("| tiny-cv") or line.startswith("| fold_0")
    ]
    assert len(table) == 2 and "2-fold CV" in table[0]
    assert (tmp_path / "two" / "fold_0_learning_curves.png").is_file()
    res = CliRunner().invoke(app, ["report", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "not found" in res.output
