"""Figures and a Markdown report for one or more run directories.

``make_report(["runs/a-cv", "runs/b"], "reports/ab")`` writes ``report.md`` and PNGs:

- ``<run>_learning_curves.png``: loss and accuracy per epoch, train vs validation, from
  ``metrics.csv`` (a cross-validation run draws one line per fold);
- ``<run>_confusion_gender.png``, ``<run>_confusion_age_group.png``: confusion matrices;
- ``<run>_age_error.png``: MAE by true age (5-year bins) for models that predict years,
  else exact / one-off accuracy by true age group;
- ``<run>_reliability.png``: the gender reliability diagram (15 bins) with its ECE;

the last three from the per-image predictions saved in the run (``predictions.csv`` of a
cross-validation run, ``eval/predictions.csv`` or any ``*predictions.csv`` written by
``agegender evaluate --out``). With several runs the report starts with one comparison
table like the reference reports: model, gender accuracy, age accuracy / MAE, parameters,
model size, training time, test time per image.

A run directory is any of: a cross-validation run (``results.json`` with ``per_fold``), a
training run (``summary.json``, ``metrics.csv``), or a folder holding an evaluation's
``results.json`` / predictions CSV. Missing pieces are skipped and listed in the report.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from agegender.data.records import AGE_GROUP_NAMES, GENDERS
from agegender.evaluate.evaluation import ok_rows
from agegender.evaluate.metrics import (
    confusion,
    expected_calibration_error,
    fairness_table,
    gender_reliability,
    predicted_groups,
    prediction_metrics,
)
from agegender.fileio import read_epoch_metrics
from agegender.metric_names import METRIC, METRICS, from_logged

FIGURES = ("learning_curves", "confusion_gender", "confusion_age_group", "age_error", "reliability")


@dataclass
class RunInfo:
    """What a run directory holds."""

    path: Path
    name: str
    kind: str  # cv | train | eval
    results: dict | None = None
    summary: dict | None = None
    curves: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    predictions: pd.DataFrame | None = None
    predictions_path: Path | None = None
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- loading
def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _find_predictions(run: Path) -> Path | None:
    for p in (run / "predictions.csv", run / "eval" / "predictions.csv"):
        if p.is_file():
            return p
    found = sorted(run.rglob("*predictions.csv"))
    found = [p for p in found if not p.parent.name.startswith("fold_")] or found
    return found[0] if found else None


def load_run(path: str | Path) -> RunInfo:
    """Collect results, summary, learning curves and predictions of a run directory."""
    run = Path(path)
    if not run.is_dir():
        raise FileNotFoundError(f"{path}: run directory not found")
    results = _read_json(run / "results.json")
    if results is None and (run / "cv_config.yaml").is_file():  # a CV still running
        done = len(list(run.glob("fold_*/results.json")))
        folds = len(list(run.glob("fold_*")))
        raise FileNotFoundError(
            f"{path}: cross-validation not finished ({done} of the {folds} started folds "
            "have results); finish it with the same `agegender cv` command"
        )
    if results is None and (run / "eval" / "results.json").is_file():
        results = _read_json(run / "eval" / "results.json")
    summary = _read_json(run / "summary.json")
    if results is not None and "per_fold" in results:
        kind = "cv"
    elif summary is not None:
        kind = "train"
    else:
        kind = "eval"
    info = RunInfo(run, run.resolve().name, kind, results, summary)
    if kind == "cv":
        for fold in sorted(run.glob("fold_*"), key=lambda p: int(p.name.split("_")[-1])):
            if (fold / "metrics.csv").is_file():
                label = fold.name.replace("_", " ")
                info.curves.append((label, read_epoch_metrics(fold / "metrics.csv")))
        if info.summary is None:
            info.summary = _read_json(run / "fold_0" / "summary.json")
    elif (run / "metrics.csv").is_file():
        info.curves.append(("", read_epoch_metrics(run / "metrics.csv")))
    pred = _find_predictions(run)
    if pred is not None:
        info.predictions = pd.read_csv(pred)
        info.predictions_path = pred
        info.predictions = info.predictions[ok_rows(info.predictions)].reset_index(drop=True)
    if results is None and summary is None and pred is None:
        raise FileNotFoundError(
            f"{path}: no results.json, summary.json or predictions CSV: not a run directory"
        )
    return info


# --------------------------------------------------------------------------- figures
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curves(curves: list[tuple[str, pd.DataFrame]], out: Path) -> Path | None:
    """Loss and accuracy (gender, age group) per epoch, train (dashed) vs val (solid)."""
    panels = [("loss", "loss")] + [
        (m.logged, m.label) for m in METRICS if m.logged and m.key != "age_group_one_off"
    ]
    present = [
        (key, title)
        for key, title in panels
        if any(f"val/{key}" in df.columns or f"train/{key}" in df.columns for _, df in curves)
    ]
    if not present:
        return None
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(present), figsize=(4.2 * len(present), 3.4), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, title) in zip(axes[0], present, strict=True):
        for i, (label, df) in enumerate(curves):
            epoch = df["epoch"].to_numpy() + 1 if "epoch" in df.columns else np.arange(len(df)) + 1
            c = colours[i % len(colours)]
            for split, style in (("train", "--"), ("val", "-")):
                col = f"{split}/{key}"
                if col in df.columns and df[col].notna().any():
                    name = f"{label} {split}".strip()
                    ok = df[col].notna().to_numpy()
                    ax.plot(
                        epoch[ok],
                        df[col].to_numpy()[ok],
                        style,
                        color=c,
                        label=name,
                        marker="o",
                        markersize=3,
                    )
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_confusion(cm: np.ndarray, labels: list[str], title: str, out: Path) -> Path:
    """A confusion matrix as counts, coloured by the row-normalised rate."""
    plt = _plt()
    n = len(labels)
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.65 * n, 0.8 + 0.6 * n))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), labels, rotation=45 if n > 2 else 0)
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                str(int(cm[i, j])),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if rates[i, j] > 0.6 else "black",
            )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def age_error_table(pred: pd.DataFrame, bin_years: int = 5) -> pd.DataFrame | None:
    """MAE by true age bin (years models), or accuracy by true age group (group models)."""
    if "pred_age" in pred.columns and "age" in pred.columns:
        t = pd.to_numeric(pred["age"], errors="coerce")
        p = pd.to_numeric(pred["pred_age"], errors="coerce")
        ok = t.notna() & p.notna()
        if not ok.any():
            return None
        lo = (t[ok] // bin_years * bin_years).astype(int)
        err = (p[ok] - t[ok]).abs()
        df = pd.DataFrame({"age_from": lo, "abs_error": err, "error": p[ok] - t[ok]})
        out = df.groupby("age_from").agg(
            n=("abs_error", "size"), mae=("abs_error", "mean"), bias=("error", "mean")
        )
        return out.reset_index()
    groups = predicted_groups(pred)
    if groups is None or "age_group" not in pred.columns:
        return None
    y = pd.to_numeric(pred["age_group"], errors="coerce").to_numpy()
    rows = []
    for g, name in enumerate(AGE_GROUP_NAMES):
        m = y == g
        rows.append(
            {
                "age_group": name,
                "n": int(m.sum()),
                "exact": float(np.mean(groups[m] == g)) if m.any() else np.nan,
                "one_off": float(np.mean(np.abs(groups[m] - g) <= 1)) if m.any() else np.nan,
            }
        )
    return pd.DataFrame(rows)


def plot_age_error(pred: pd.DataFrame, out: Path) -> Path | None:
    table = age_error_table(pred)
    if table is None:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.4))
    if "mae" in table.columns:
        x = table["age_from"].to_numpy()
        ax.bar(x + 2.5, table["mae"], width=4.2, label="MAE")
        ax.plot(x + 2.5, table["bias"], "k.-", label="mean error (bias)")
        ax.axhline(0, color="grey", lw=0.6)
        ax.set_xlabel("true age (years, 5-year bins)")
        ax.set_ylabel("years")
        ax.set_title("age error by true age")
    else:
        x = np.arange(len(table))
        ax.bar(x - 0.2, table["exact"] * 100, width=0.4, label="exact")
        ax.bar(x + 0.2, table["one_off"] * 100, width=0.4, label="one-off")
        ax.set_xticks(x, table["age_group"])
        ax.set_xlabel("true age group")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_title("age group accuracy by true age group")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_reliability(pred: pd.DataFrame, out: Path) -> Path | None:
    """Gender reliability diagram: accuracy vs mean confidence per bin, with the ECE."""
    bins = gender_reliability(pred)
    if not bins or not sum(b["n"] for b in bins):
        return None
    ece = expected_calibration_error(pred["gender"], pred["p_female"].to_numpy(float))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    lower = np.array([b["lower"] for b in bins])
    width = bins[0]["upper"] - bins[0]["lower"]
    acc = np.array([np.nan if b["n"] == 0 else b["accuracy"] for b in bins])
    conf = np.array([np.nan if b["n"] == 0 else b["confidence"] for b in bins])
    ax.bar(
        lower,
        np.nan_to_num(acc),
        width=width,
        align="edge",
        edgecolor="k",
        alpha=0.8,
        label="accuracy",
    )
    ax.bar(
        lower,
        np.nan_to_num(conf - acc),
        bottom=np.nan_to_num(acc),
        width=width,
        align="edge",
        color="red",
        alpha=0.25,
        label="gap",
    )
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-label probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"gender reliability (ECE {ece:.3f})")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# --------------------------------------------------------------------------- tables
#: The metrics of the comparison table's columns (labels from the metric vocabulary).
COMPARED = ("gender_accuracy", "age_group_exact", "age_group_one_off", "age_mae")


def _pct(v: Any) -> str:
    return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{100 * v:.1f}"


def _num(v: Any, fmt: str = "{:.2f}") -> str:
    return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else fmt.format(v)


def _pm(stat: dict | None, pct: bool = True) -> str:
    if not stat or stat.get("mean") is None:
        return "–"
    f = _pct if pct else _num
    return f"{f(stat['mean'])} ± {f(stat.get('std') or 0.0)}"


def comparison_row(run: RunInfo) -> dict[str, str]:
    """One row of the comparison table (strings, ready for Markdown)."""
    r, s = run.results or {}, run.summary or {}
    row = {"run": run.name, "model": str(r.get("model") or s.get("model") or "?")}
    size = (
        r.get("input_size")
        or s.get("input_size")
        or (r.get("preprocessing") or {}).get("input_size")
    )
    row["input"] = f"{size}px" if size else "–"
    if run.kind == "cv":
        m, t = r["metrics"], r["timing"]
        for key in COMPARED:
            row[METRIC[key].label] = _pm(m.get(key), pct=METRIC[key].percent)
        row["evaluated on"] = f"{r['folds']}-fold CV"
        train_s = (t.get("train_seconds") or {}).get("mean")
        test_s = (t.get("test_seconds_per_image") or {}).get("mean")
        params, mb = r.get("params"), r.get("model_size_mb")
    else:
        m = (r.get("metrics") or {}) if r else {}
        if not m and run.predictions is not None:
            m = prediction_metrics(run.predictions)
        n_eval = r.get("n_evaluated", r.get("n_test", "?"))
        where = f"evaluation ({n_eval} faces)" if m else "val (best epoch)"
        if not m:
            m = from_logged(s.get("best") or {}, "val")
        for key in COMPARED:
            row[METRIC[key].label] = METRIC[key].fmt(m.get(key))
        row["evaluated on"] = where
        train_s = s.get("train_time_total_s", s.get("train_time_s"))
        test_s = (r.get("timing") or {}).get("seconds_per_image") if r else None
        params, mb = s.get("params"), s.get("model_size_mb")
    row["params (M)"] = _num(params / 1e6 if params else None)
    row["size (MB)"] = _num(mb, "{:.1f}")
    row["train time"] = _duration(train_s) + (" /fold" if run.kind == "cv" and train_s else "")
    row["test ms/image"] = _num(test_s * 1000 if test_s else None)
    return row


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def markdown_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    if not rows:
        return ""
    columns = columns or list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def fairness_markdown(pred: pd.DataFrame) -> str:
    table = fairness_table(pred)
    keys = ("gender_accuracy", "gender_ece", "age_group_exact", "age_group_one_off")
    metrics = [METRIC[k] for k in (*keys, "age_mae", "age_cs5") if k in table.columns]
    rows = []
    for rec in table.to_dict(orient="records"):
        row = {"by": rec["by"], "group": rec["group"], "n": int(rec["n"])}
        for metric in metrics:
            row[metric.label] = metric.fmt(rec[metric.key])
        rows.append(row)
    return markdown_table(rows)


# --------------------------------------------------------------------------- report
def _slug(name: str, used: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "run"
    slug, i = base, 2
    while slug in used:
        slug, i = f"{base}_{i}", i + 1
    used.add(slug)
    return slug


def run_figures(run: RunInfo, out: Path, slug: str) -> dict[str, Path]:
    """Every figure that the run's files allow, as ``{figure name: path}``."""
    figs: dict[str, Path] = {}
    if run.curves:
        p = plot_learning_curves(run.curves, out / f"{slug}_learning_curves.png")
        if p:
            figs["learning_curves"] = p
    else:
        run.notes.append("no metrics.csv: no learning curves")
    pred = run.predictions
    if pred is None:
        run.notes.append(
            "no per-image predictions (run `agegender evaluate CHECKPOINT --data ... --out "
            "RUN/eval/results.json`): no confusion matrices, age error or reliability diagram"
        )
        return figs
    cm = confusion(pred, "gender")
    if cm is not None and cm.sum():
        figs["confusion_gender"] = plot_confusion(
            cm, list(GENDERS), "gender", out / f"{slug}_confusion_gender.png"
        )
    cm = confusion(pred, "age_group")
    if cm is not None and cm.sum():
        figs["confusion_age_group"] = plot_confusion(
            cm, list(AGE_GROUP_NAMES), "age group", out / f"{slug}_confusion_age_group.png"
        )
    p = plot_age_error(pred, out / f"{slug}_age_error.png")
    if p:
        figs["age_error"] = p
    p = plot_reliability(pred, out / f"{slug}_reliability.png")
    if p:
        figs["reliability"] = p
    return figs


def make_report(run_dirs: list[str | Path], out_dir: str | Path | None = None) -> Path:
    """Write ``report.md`` and the PNG figures for ``run_dirs`` into ``out_dir``
    (default: ``RUN/report`` for one run, ``./report`` for several). Returns report.md."""
    if not run_dirs:
        raise ValueError("no run directories given")
    runs = [load_run(p) for p in run_dirs]
    out = (
        Path(out_dir)
        if out_dir
        else (Path(run_dirs[0]) / "report" if len(runs) == 1 else Path("report"))
    )
    out.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    lines = ["# agegender report", ""]
    rows = [comparison_row(r) for r in runs]
    lines += ["## Comparison" if len(runs) > 1 else "## Summary", "", markdown_table(rows), ""]
    lines += [
        "Accuracies in %, mean ± sample std over folds for cross-validation runs. Age accuracy: "
        "exact Adience group (of 8); 1-off: the true or an adjacent group. Test time per image: "
        "the model's forward pass (with preprocessing and any test-time augmentation) on this "
        "machine's device, decoding excluded.",
        "",
    ]
    for run in runs:
        slug = _slug(run.name, used)
        figs = run_figures(run, out, slug)
        lines += [f"## {run.name}", "", f"`{run.path}` ({run.kind} run)", ""]
        if run.kind == "cv":
            r = run.results
            ds = r.get("dataset") or {}
            how = "official" if r.get("official_folds") else "grouped stratified"
            lines += [
                f"{r['folds']} folds ({how}), validation: {r.get('validation')}; "
                f"{ds.get('faces', '?')} faces in "
                f"{ds.get('groups', '?')} independent groups; "
                f"{ds.get('dropped_conflicts', 0)} dropped for conflicting duplicate labels.",
                "",
            ]
            per = []
            for f in r["per_fold"]:
                m = f["metrics"]
                per.append(
                    {
                        "fold": f["fold"],
                        "n test": f.get("n_test"),
                        "gender acc (%)": _pct(m.get("gender_accuracy")),
                        "age acc (%)": _pct(m.get("age_group_exact")),
                        "age 1-off (%)": _pct(m.get("age_group_one_off")),
                        "age MAE": _num(m.get("age_mae")),
                        "epochs": f.get("epochs_run"),
                        "train s": _num(f.get("train_seconds"), "{:.0f}"),
                        "train img/s": _num(f.get("train_images_per_second"), "{:.0f}"),
                    }
                )
            lines += ["### Per fold", "", markdown_table(per), ""]
        for key, title in (
            ("learning_curves", "Learning curves"),
            ("confusion_gender", "Gender confusion matrix"),
            ("confusion_age_group", "Age group confusion matrix"),
            ("age_error", "Age error by true age"),
            ("reliability", "Gender reliability diagram"),
        ):
            if key in figs:
                lines += [f"### {title}", "", f"![{title}]({figs[key].name})", ""]
        if run.predictions is not None:
            src = run.predictions_path.relative_to(run.path) if run.predictions_path else ""
            lines += [
                "### Fairness: metrics by gender, age group and race",
                "",
                f"From `{src}` ({len(run.predictions)} faces). n = faces in the cell.",
                "",
                fairness_markdown(run.predictions),
                "",
            ]
        if run.notes:
            lines += ["Not shown: " + "; ".join(run.notes) + ".", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    return report


__all__ = [
    "FIGURES",
    "RunInfo",
    "age_error_table",
    "comparison_row",
    "load_run",
    "make_report",
    "markdown_table",
    "plot_age_error",
    "plot_confusion",
    "plot_learning_curves",
    "plot_reliability",
    "run_figures",
]
