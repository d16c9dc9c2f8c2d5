"""The five reports' experiments, run: one row per ``configs/reference/<id>.yaml``.

    python benchmarks/reference.py                       # every row not done yet, 2 at a time
    python benchmarks/reference.py --row 004_gender      # one row (and nothing else)
    python benchmarks/reference.py --collect             # only rebuild the tables from runs
    python benchmarks/reference.py --row 004_gender --set train.epochs=1 --set data.limit=200 \\
        --runs-dir /tmp/ref --out-dir /tmp/ref           # a tiny-budget end-to-end check
    python benchmarks/reference.py --dataset adience     # the rows marked ``adience:``, on Adience
    python benchmarks/reference.py --dataset adience --row 004_gender   # one of them

``configs/reference/rows.yaml`` lists the rows: the report and experiment, how the row runs
(``agegender train``, ``agegender cv`` over UTKFace's grouped 5 folds, or ``agegender
sweep`` over the report's whole grid), the rows it starts from (``after``: stage 2 waits for
stage 1; a sweep starts from the winners of the sweep before it) and the report's figure.
Every row runs as its own ``python -m agegender`` process with ``trainer.threads=1``
(``--threads``), ``--jobs`` of them at a time, into ``RUNS_DIR/<id>``; a row whose result
file exists is skipped and an interrupted one resumes (``train --resume``; ``cv`` and
``sweep`` resume by themselves), so re-running the same command finishes the rest.

A row whose report used Adience says so in ``rows.yaml`` (``adience: run`` or ``adience:
evaluate``) and has a second run, ``RUNS_DIR/adience/<id>``, on the real Adience faces of
``$AGEGENDER_DATA/adience-fold0-part`` (:data:`DATASETS`; ``--dataset adience`` runs them,
and the earlier rows they start from when those are not done): ``run`` trains the row's
own config (same budget, same split fractions or folds, person-exclusive since the Adience
reader's ``subject`` is the person) with ``data.path`` replaced; ``evaluate`` tests the
row's trained model on every Adience photo (the report's own cross-dataset figure). A
variant starts from the same earlier rows as its row (the CelebA stages). Each Adience
figure comes with its photos, its people and a 95 % interval that resamples people
(:func:`agegender.evaluate.intervals.photo_intervals`): the per-photo predictions
of the held-out faces (``cv``'s ``predictions.csv``; for ``train`` the best checkpoint
run once over the run's own test split, kept as ``test_predictions.csv``).
Several ``reference.py`` processes may share ``RUNS_DIR``: each claims a row with
``RUNS_DIR/<id>.lock`` before running it, so no row runs twice.

The results go to ``OUT_DIR/reference.json`` (one object per row, plus the comparisons)
and ``OUT_DIR/reference.md``: per row the report's figure beside ours, dataset and split,
epochs, minutes, training images/s, parameters (Keras counting, as the reports print them:
:func:`agegender.models.keras_param_count`), model size, forward time per face; the
reports' own tables rebuilt with our numbers; and each claim the reports draw as a measured
yes/no.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs" / "reference"
ROWS_FILE = CONFIG_DIR / "rows.yaml"
KINDS = ("train", "cv", "sweep")
ROW_KEYS = {
    "id",
    "report",
    "experiment",
    "kind",
    "config",
    "space",
    "folds",
    "after",
    "base",
    "report_figure",
    "report_value",
    "report_params",
    "report_train_s",
    "report_loss",
    "report_size_mb",
    "report_mae",
    "report_age",
    "report_epochs",
    "report_best",
    "metric",
    "adience",
}
#: Datasets a row may also run on (``rows.yaml``: ``<name>: run | evaluate``) -> data path.
DATASETS = {"adience": "${AGEGENDER_DATA}/adience-fold0-part"}
VARIANT_HOW = ("run", "evaluate")


class RowError(ValueError):
    """A bad ``rows.yaml`` entry: the message names the file and the row."""


@dataclass
class Row:
    """One reference experiment (a ``rows.yaml`` entry)."""

    id: str
    report: str
    experiment: str
    kind: str
    config: Path
    base: str = ""
    space: Path | None = None
    folds: list[int] | None = None
    after: list[str] = field(default_factory=list)
    metric: str = "gender_accuracy"
    report_figure: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # report_* values
    variants: dict[str, str] = field(default_factory=dict)  # dataset -> run | evaluate
    dataset: str = ""  # a variant's dataset (a key of DATASETS); "" for the row itself
    base_id: str = ""  # a variant's row
    sets: list[str] = field(default_factory=list)  # a variant's overrides


def load_rows(path: Path = ROWS_FILE) -> list[Row]:
    """The rows of ``path``, checked: known keys and kinds, configs that exist, ``after``
    naming earlier rows. Raises :class:`RowError` naming the file and the row."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    rows: list[Row] = []
    seen: set[str] = set()
    by_id: dict[str, Row] = {}
    for i, entry in enumerate(raw.get("rows") or []):
        where = f"{path}: row {i + 1} ({entry.get('id', '?')})"
        unknown = set(entry) - ROW_KEYS
        if unknown:
            raise RowError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        for key in ("id", "report", "experiment", "kind"):
            if key not in entry:
                raise RowError(f"{where}: missing key {key!r}")
        if entry["kind"] not in KINDS:
            raise RowError(f"{where}: kind must be one of {', '.join(KINDS)}")
        config = CONFIG_DIR / f"{entry.get('config', entry['id'])}.yaml"
        if not config.is_file():
            raise RowError(f"{where}: no config {config}")
        space = CONFIG_DIR / entry["space"] if entry.get("space") else None
        if entry["kind"] == "sweep" and (space is None or not space.is_file()):
            raise RowError(f"{where}: a sweep needs an existing space file")
        after = list(entry.get("after") or [])
        for dep in after:
            if dep not in seen:
                raise RowError(f"{where}: after: {dep!r} is not an earlier row")
        variants = {d: entry[d] for d in DATASETS if d in entry}
        for d, how in variants.items():
            if how not in VARIANT_HOW:
                raise RowError(f"{where}: {d} must be one of {', '.join(VARIANT_HOW)}")
            if how == "evaluate" and entry["kind"] != "train":
                raise RowError(f"{where}: {d}: evaluate needs a train row (one checkpoint)")
            if how == "run" and entry["kind"] == "sweep":
                raise RowError(f"{where}: {d}: run is for train and cv rows")
            clash = [x for x in after if by_id[x].variants.get(d) == "run"]
            if how == "run" and clash:  # its config's init_from names the row's own run
                raise RowError(f"{where}: {d}: starts from {clash[0]}, which also runs on {d}")
        seen.add(entry["id"])
        rows.append(
            Row(
                id=entry["id"],
                report=str(entry["report"]),
                experiment=entry["experiment"],
                kind=entry["kind"],
                config=config,
                base=entry.get("base", ""),
                space=space,
                folds=entry.get("folds"),
                after=after,
                metric=entry.get("metric", "gender_accuracy"),
                report_figure=entry.get("report_figure", ""),
                extra={k: v for k, v in entry.items() if k.startswith("report_")},
                variants=variants,
            )
        )
        by_id[rows[-1].id] = rows[-1]
    return rows


def variant_rows(rows: list[Row], dataset: str) -> list[Row]:
    """The rows marked ``<dataset>:`` as rows of their own, ``<dataset>/<id>``: ``run`` the
    row's config with ``data.path`` on ``dataset``, after the rows the row starts from;
    ``evaluate`` the row's best checkpoint on every photo of ``dataset``, after the row."""
    out = []
    for r in rows:
        how = r.variants.get(dataset)
        if how is None:
            continue
        common = dict(id=f"{dataset}/{r.id}", dataset=dataset, base_id=r.id, variants={})
        if how == "evaluate":
            out.append(replace(r, kind="evaluate", after=[r.id], folds=None, **common))
        else:
            out.append(replace(r, sets=[f"data.path={DATASETS[dataset]}"], **common))
    return out


def with_dependencies(todo: list[Row], by_id: dict[str, Row]) -> list[Row]:
    """``todo`` with the rows they start from (recursively) put before them."""
    out: list[Row] = []

    def add(row: Row) -> None:
        for dep in row.after:
            add(by_id[dep])
        if row not in out:
            out.append(row)

    for row in todo:
        add(row)
    return out


# --------------------------------------------------------------------------- running
def result_file(row: Row, run_dir: Path) -> Path:
    """The file whose presence means ``row`` is done."""
    if row.kind == "evaluate":
        return run_dir / "results.json"
    if row.kind == "cv":
        if row.folds is not None and len(row.folds) == 1:
            return run_dir / f"fold_{row.folds[0]}" / "results.json"
        return run_dir / "results.json"
    return run_dir / "summary.json"  # train: the run's; sweep: written by --summary


def _sweep_winners(row: Row, rows: dict[str, Row], runs_dir: Path) -> list[str]:
    """``--set`` overrides carrying the winners of the sweeps this one starts from."""
    sets: list[str] = []
    for dep in row.after:
        if rows[dep].kind != "sweep":
            continue
        sets += _sweep_winners(rows[dep], rows, runs_dir)
        summary = json.loads((runs_dir / dep / "summary.json").read_text(encoding="utf-8"))
        best = (summary.get("best") or {}).get("params") or {}
        sets += [f"{k}={v}" for k, v in best.items()]
    return sets


def commands(
    row: Row, rows: dict[str, Row], runs_dir: Path, sets: list[str], threads: int
) -> list[list[str]]:
    """The ``python -m agegender`` command lines that run (or resume) ``row``."""
    out = runs_dir / row.id
    agegender = [sys.executable, "-m", "agegender"]
    overrides = [f"trainer.threads={threads}", "train.progress_bar=false"]
    if row.kind == "sweep":
        overrides += _sweep_winners(row, rows, runs_dir)
    if row.kind == "evaluate":
        from agegender.config import expand_path

        ckpt = runs_dir / row.base_id / "checkpoints" / "best.ckpt"
        data = expand_path(DATASETS[row.dataset])
        return [
            [*agegender, "evaluate", str(ckpt), "--data", data, "--out", str(out / "results.json")]
        ]
    overrides += [*row.sets, *sets]
    flags = [x for s in overrides for x in ("--set", s)]
    if row.kind == "train":
        resume = ["--resume"] if (out / "checkpoints" / "last.ckpt").is_file() else []
        return [[*agegender, "train", str(row.config), "--out", str(out), *flags, *resume]]
    if row.kind == "cv":
        folds = [x for k in row.folds or [] for x in ("--fold", str(k))]
        return [[*agegender, "cv", str(row.config), "--out", str(out), *flags, *folds]]
    study = ["--study", f"ref-{row.id}", "--out", str(out)]
    space = ["--space", str(row.space)]
    return [
        [*agegender, "sweep", str(row.config), *space, *study, *flags],
        [*agegender, "sweep", "--summary", *study],
    ]


def run_row(row: Row, cmds: list[list[str]], log: Path) -> float:
    """Run ``cmds`` one after the other, output to ``log``; seconds taken. Raises
    ``RuntimeError`` naming the row and its log when a command fails."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("a", encoding="utf-8") as fh:
        for cmd in cmds:
            fh.write(f"$ {' '.join(cmd)}\n")
            fh.flush()
            rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
            if rc != 0:
                raise RuntimeError(f"row {row.id}: exit {rc}; see {log}")
    return time.perf_counter() - start


def claim(lock: Path) -> bool:
    """Take ``lock`` (a row another ``reference.py`` process may be running): create it
    with our pid, or take over one whose process is gone; ``False`` when a live one holds it."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                os.kill(int(lock.read_text().strip() or 0), 0)
                return False  # held by a live process
            except (ProcessLookupError, ValueError):
                lock.unlink(missing_ok=True)  # its process died: take it over
                continue
            except PermissionError:
                return False
        with os.fdopen(fd, "w") as fh:
            fh.write(str(os.getpid()))
        return True
    return False


def run_rows(
    todo: list[Row],
    rows: dict[str, Row],
    runs_dir: Path,
    sets: list[str],
    jobs: int,
    threads: int,
    poll_s: float = 20.0,
) -> dict[str, str]:
    """Run ``todo`` with ``jobs`` processes at a time, each row after the rows it starts
    from; returns ``{id: error}`` for the rows that failed (the others keep going).

    Several ``reference.py`` processes may share ``runs_dir`` (on one machine): each row is
    claimed with ``RUNS_DIR/<id>.lock`` first, a row another process holds is left to it
    (and waited for when a later row needs it), and a row already done is skipped."""
    pending = list(todo)
    failed: dict[str, str] = {}
    running: dict[Future, tuple[Row, Path]] = {}

    def done(rid: str) -> bool:
        return result_file(rows[rid], runs_dir / rid).is_file()

    def elsewhere(rid: str) -> bool:  # claimed by another live process
        lock = runs_dir / f"{rid}.lock"
        return lock.is_file() and all(x[0].id != rid for x in running.values())

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while pending or running:
            for row in list(pending):
                if len(running) >= jobs:
                    break
                if done(row.id):
                    pending.remove(row)
                elif any(d in failed for d in row.after):
                    failed[row.id] = f"skipped: {', '.join(row.after)} failed"
                    pending.remove(row)
                elif all(done(d) for d in row.after):
                    lock = runs_dir / f"{row.id}.lock"
                    if not claim(lock):
                        continue  # another process runs it
                    pending.remove(row)
                    cmds = commands(row, rows, runs_dir, sets, threads)
                    print(f"start {row.id}", flush=True)
                    log = runs_dir / f"{row.id}.log"
                    running[pool.submit(run_row, row, cmds, log)] = (row, lock)
            if not running:
                blocked = [
                    r for r in pending if elsewhere(r.id) or any(elsewhere(d) for d in r.after)
                ]
                if blocked:  # another process holds them (or what they need): wait
                    time.sleep(poll_s)
                    continue
                for row in pending:  # waiting on a row outside --row that is not done
                    failed[row.id] = f"needs {', '.join(row.after)} first"
                break
            finished, _ = wait(list(running), timeout=poll_s, return_when=FIRST_COMPLETED)
            for fut in finished:
                row, lock = running.pop(fut)
                lock.unlink(missing_ok=True)
                try:
                    print(f"done {row.id} in {fut.result() / 60:.1f} min", flush=True)
                except RuntimeError as exc:
                    failed[row.id] = str(exc)
                    print(f"FAILED {exc}", flush=True)
    return failed


# --------------------------------------------------------------------------- collecting
def _forward_ms(model: Any, input_size: int, batch: int = 32) -> float:
    """Median forward time per face (ms), batch ``batch``, one thread, eval mode."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x = torch.randn(batch, 3, input_size, input_size)
        model.eval()
        times = []
        with torch.inference_mode():
            model(x)
            for _ in range(3):
                t = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - t)
        return round(sorted(times)[1] / batch * 1000, 3)
    finally:
        torch.set_num_threads(threads)


def _model_facts(ckpt: Path) -> dict[str, Any]:
    from agegender.artifact import load_model
    from agegender.models import keras_param_count

    model, meta = load_model(ckpt)
    size = int(meta.get("input_size") or model.default_cfg["input_size"])
    return {
        "params_keras": keras_param_count(model),
        "params": int(sum(p.numel() for p in model.parameters())),
        "forward_ms_per_face": _forward_ms(model, size),
    }


def _train_result(run: Path) -> dict[str, Any]:
    from agegender.metric_names import from_logged

    s = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    held = "test" if s.get("test") else "val"
    src = s.get("test") or s.get("best") or {}
    metrics = from_logged(src, held)
    ds = s.get("dataset") or {}
    splits = ds.get("splits") or {}
    out = {
        "evaluated_on": f"{held} split ({splits.get(held)} faces, held out)",
        "metrics": metrics,
        "loss": src.get(f"{held}/loss"),
        "baseline": (ds.get("baselines") or {}).get(f"{held}/gender_acc"),
        "dataset": ds.get("path"),
        "split": ds.get("split"),
        "splits": splits,
        "epochs": s.get("epochs_run"),
        "best_epoch": (s.get("best") or {}).get("epoch"),
        "minutes": round(s["train_time_total_s"] / 60, 2),
        "train_images_per_s": s.get("train_images_per_sec"),
        "model_size_mb": s.get("model_size_mb"),
        "input_size": s.get("input_size"),
    }
    ckpt = Path(s["checkpoints"]["best"] or s["checkpoints"]["last"])
    if ckpt.is_file():
        out |= _model_facts(ckpt)
    return out


def _cv_result(row: Row, run: Path) -> dict[str, Any]:
    path = result_file(row, run)
    res = json.loads(path.read_text(encoding="utf-8"))
    if "fold" in res:  # one fold only
        metrics = {k: {"mean": v, "std": None} for k, v in res["metrics"].items()}
        timing = {
            k: {"mean": res.get(k)}
            for k in (
                "train_seconds",
                "train_images_per_second",
                "test_seconds_per_image",
                "epochs_run",
            )
        }
        n_folds, best_epochs = 1, [res.get("best_epoch")]
        fold_dirs = [run / f"fold_{res['fold']}"]
        by_fold = {str(res["fold"]): res["metrics"]}
    else:
        metrics, timing = res["metrics"], res["timing"]
        fold_dirs = sorted(run.glob("fold_*"))
        n_folds = len(fold_dirs)
        best_epochs, by_fold = [], {}
        for f in fold_dirs:
            r = json.loads((f / "results.json").read_text(encoding="utf-8"))
            best_epochs.append(r.get("best_epoch"))
            by_fold[str(r.get("fold", f.name.split("_")[-1]))] = r.get("metrics") or {}
    first = json.loads((fold_dirs[0] / "summary.json").read_text(encoding="utf-8"))
    name = Path(str((first.get("dataset") or {}).get("path") or "?")).name
    out = {
        "evaluated_on": f"test fold(s): {n_folds} of 5 grouped {name} folds",
        "metrics": {k: v.get("mean") for k, v in metrics.items() if isinstance(v, dict)},
        "metrics_std": {k: v.get("std") for k, v in metrics.items() if isinstance(v, dict)},
        "metrics_by_fold": by_fold,
        "dataset": (first.get("dataset") or {}).get("path"),
        "split": f"{n_folds} fold(s), grouped 5-fold",
        "epochs": timing["epochs_run"]["mean"],
        "best_epoch": _mean([b + 1 for b in best_epochs if b is not None]),
        "minutes": round((timing["train_seconds"]["mean"] or 0) / 60, 2),
        "minutes_note": "per fold",
        "train_images_per_s": timing["train_images_per_second"]["mean"],
        "model_size_mb": first.get("model_size_mb"),
        "input_size": first.get("input_size"),
    }
    ckpt = Path(first["checkpoints"]["best"] or first["checkpoints"]["last"])
    if ckpt.is_file():
        out |= _model_facts(ckpt)
    return out


def _sweep_result(run: Path) -> dict[str, Any]:
    s = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    trials = [
        {
            "params": t["params"],
            "value": t["value"],
            "state": t["state"],
            "minutes": round((t.get("duration_s") or 0) / 60, 2),
            "epochs": t.get("epochs"),
        }
        for t in s["trials"]
    ]
    best = s.get("best") or {}
    return {
        "evaluated_on": "validation split (the report's sweeps select on validation)",
        "metrics": {"gender_accuracy": best.get("value")},
        "best_params": best.get("params"),
        "trials": trials,
        "n_trials": s.get("n_trials"),
        "minutes": round(sum(t["minutes"] for t in trials), 2),
        "minutes_note": "all trials",
        "epochs": trials[0]["epochs"] if trials else None,
    }


def _evaluate_result(run: Path) -> dict[str, Any]:
    res = json.loads((run / "results.json").read_text(encoding="utf-8"))
    return {
        "evaluated_on": f"every photo of {res.get('data') or 'the dataset'} (never trained on)",
        "metrics": res["metrics"],
        "split": "all photos (cross-dataset)",
    }


def _held_out_predictions(row: Row, run: Path) -> pd.DataFrame:
    """Per-photo predictions on the faces ``row``'s figures rest on: ``cv``'s pooled test
    folds, ``evaluate``'s photos, or a ``train`` run's best checkpoint over its own test
    split (rebuilt by the training data path from the run's config.yaml; written once to
    ``test_predictions.csv``)."""
    if row.kind == "cv":
        one = row.folds is not None and len(row.folds) == 1
        return pd.read_csv(run / (f"fold_{row.folds[0]}" if one else ".") / "predictions.csv")
    if row.kind == "evaluate":
        res = json.loads((run / "results.json").read_text(encoding="utf-8"))
        return pd.read_csv(res["predictions_csv"])
    cached = run / "test_predictions.csv"
    if cached.is_file():
        return pd.read_csv(cached)
    from agegender.artifact import load_model
    from agegender.config import load_config
    from agegender.evaluate.evaluation import evaluate_model
    from agegender.train.data import prepare_data

    data = prepare_data(load_config(run / "config.yaml"))
    held = data.splits.test if data.splits.test is not None else data.splits.val
    s = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    model, meta = load_model(Path(s["checkpoints"]["best"] or s["checkpoints"]["last"]))
    _, pred = evaluate_model(model, meta, data.table.iloc[held].reset_index(drop=True))
    pred.to_csv(cached, index=False)
    return pred


def people_figures(pred: pd.DataFrame) -> dict[str, Any]:
    """Photos and people of a predictions frame; gender accuracy, balanced accuracy and
    age-group accuracy (the group holding most of the predicted distribution, the reports'
    read-out; the nearest group to a predicted age where the model gives only years),
    each with its 95 % interval over people
    (:func:`agegender.evaluate.intervals.photo_intervals`); the majority-class shares."""
    from agegender.evaluate.evaluation import ok_rows
    from agegender.evaluate.intervals import photo_intervals

    frame = pred
    if "face_found" not in frame.columns:  # a checkpoint's faces: a failed photo is wrong
        frame = frame.assign(face_found=ok_rows(frame))
    overall = photo_intervals(frame)["overall"]
    people = frame["subject"].astype(str)
    out: dict[str, Any] = {"photos": len(frame), "people": int(people.nunique())}
    age = overall.get("age_group_exact_mass_all") or overall.get("age_group_exact_nearest_all")
    for key, fig in (
        ("gender_accuracy", overall.get("gender_accuracy_all")),
        ("gender_balanced", overall.get("gender_balanced_accuracy_all")),
        ("age_group_exact", age),
    ):
        if fig is not None:
            out[key] = fig
    for key, col in (("gender_majority", "gender"), ("age_majority", "age_group")):
        truth = pd.to_numeric(frame[col], errors="coerce").dropna()
        if key.split("_")[0] in {k.split("_")[0] for k in out} and len(truth):
            out[key] = float(truth.value_counts(normalize=True).max())
    return out


#: A claim's metric -> the per-photo score columns of photo_scores that give it (the
#: first present: an age group by the distribution's mass, else nearest the predicted age).
SCORE_COLUMNS = {
    "gender_accuracy": ("gender",),
    "age_group_exact": ("age_group_exact_mass", "age_group_exact_nearest"),
}


def paired_difference(
    left: pd.DataFrame, right: pd.DataFrame, metric: str
) -> dict[str, float | int | None] | None:
    """``left``'s accuracy minus ``right``'s on the photos both scored (two models' held-out
    predictions of the same photos), with a 95 % interval from a bootstrap over people
    (:func:`agegender.evaluate.bootstrap.grouped_ratios_ci` of the per-photo differences),
    and under ``left`` / ``right`` each one's accuracy on those photos from the same
    resamples; ``None`` when they share no scored photo."""
    from agegender.evaluate.bootstrap import grouped_ratios_ci
    from agegender.evaluate.evaluation import ok_rows
    from agegender.evaluate.intervals import photo_scores

    def score(pred: pd.DataFrame) -> pd.Series | None:
        if "face_found" not in pred.columns:
            pred = pred.assign(face_found=ok_rows(pred))
        scores = photo_scores(pred).set_axis(pred["path"].astype(str))
        col = next((c for c in SCORE_COLUMNS[metric] if c in scores.columns), None)
        return None if col is None else scores[col]

    a, b = score(left), score(right)
    if a is None or b is None:
        return None
    both = pd.concat([a, b], axis=1, keys=["a", "b"], join="inner").dropna()
    if both.empty:
        return None
    people = left.set_index(left["path"].astype(str))["subject"].astype(str)
    hits = np.stack([both["a"] - both["b"], both["a"], both["b"]], axis=1)
    diff, a_ci, b_ci = grouped_ratios_ci(
        hits, np.ones_like(hits), people.loc[both.index].to_numpy()
    )
    return {**diff, "left": a_ci, "right": b_ci}


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 2) if values else None


def _earlier_results(path: Path) -> dict[str, dict[str, Any]]:
    """Rows an earlier ``reference.json`` holds (``ours`` per row id): a row measured on
    another checkout keeps its figures when its run folder is not here."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    out = {r["id"]: r["ours"] for r in doc.get("rows", []) if r.get("ours")}
    for r in doc.get("rows", []):
        out |= {f"{d}/{r['id']}": r[d] for d in DATASETS if r.get(d)}
    return out


def collect(row: Row, runs_dir: Path) -> dict[str, Any] | None:
    """Our measured figures for ``row`` (``None`` when it has not run)."""
    run = runs_dir / row.id
    if not result_file(row, run).is_file():
        return None
    if row.kind == "evaluate":
        res = _evaluate_result(run)
    elif row.kind == "train":
        res = _train_result(run)
    elif row.kind == "cv":
        res = _cv_result(row, run)
    else:
        return _sweep_result(run)
    aligned = row.kind == "train" and bool(
        (yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {})
        .get("data", {})
        .get("align")
    )
    # a figure on few people: say how many, with an interval over them (not yet for a
    # train row cut through the face path: its checkpoint re-run does not cut it the same)
    if row.dataset and not aligned:
        res["people_figures"] = people_figures(_held_out_predictions(row, run))
    return res


# --------------------------------------------------------------------------- comparisons
def _acc(results: dict[str, dict], rid: str, key: str = "gender_accuracy") -> float | None:
    r = results.get(rid)
    return None if r is None else (r.get("metrics") or {}).get(key)


def _claim(
    question: str,
    left: str,
    right: str,
    results: dict,
    key: str = "gender_accuracy",
    report: str = "",
) -> dict[str, Any]:
    """``left`` beats ``right`` on ``key``? measured yes/no with both numbers. A row run on
    one fold only is compared with the other row's figure on that same fold, when known."""
    a, b = _acc(results, left, key), _acc(results, right, key)
    on_fold = None
    folds = [((results.get(r) or {}).get("metrics_by_fold") or {}) for r in (left, right)]
    for i, (one, other) in enumerate(((folds[0], folds[1]), (folds[1], folds[0]))):
        if len(one) == 1 and len(other) > 1 and key in other.get(next(iter(one)), {}):
            on_fold = next(iter(one))
            value = other[on_fold][key]
            a, b = (a, value) if i == 0 else (value, b)
    answer = None if a is None or b is None else bool(a > b)
    return {
        "question": question,
        "left": left,
        "right": right,
        "metric": key,
        "left_value": a,
        "right_value": b,
        "answer": answer,
        "report": report,
        **({"on_fold": int(on_fold)} if on_fold is not None else {}),
    }


def comparisons(results: dict[str, dict]) -> list[dict[str, Any]]:
    """Each claim the reports draw, measured on our rows."""
    multi = [f"004_multitask_g{g}" for g in ("03", "05", "07")]
    best_multi = max(
        (m for m in multi if _acc(results, m) is not None),
        key=lambda m: _acc(results, m) or 0,
        default=multi[1],
    )
    out = [
        _claim(
            "004: multi-task beats single-task on gender (best gamma)?",
            best_multi,
            "004_gender",
            results,
            report="no: 84.0 vs 84.8",
        ),
        _claim(
            "004: multi-task beats single-task on age (best gamma for gender)?",
            best_multi,
            "004_age",
            results,
            key="age_group_exact",
            report="yes: 47.3 vs 46.8",
        ),
        _claim(
            "002: augmentation beats no augmentation?",
            "002_augment_on",
            "002_augment_off",
            results,
            report="no: 0.8491 vs 0.9",
        ),
        _claim(
            "002: unfrozen at 1e-5 beats frozen at 1e-3 (fine-tuning from CelebA)?",
            "002_finetune_unfrozen_lr1e-5",
            "002_finetune_frozen_lr1e-3",
            results,
            report="yes: 0.9147 vs 0.7868",
        ),
        _claim(
            "002: CelebA pre-training beats none (tuned model)?",
            "002_tuned_pretrained",
            "002_tuned",
            results,
            report="no: 0.9287 vs 0.934 (the text claims +4.6% over the untuned 0.8827)",
        ),
        _claim(
            "000: CelebA pre-training beats none (Experiment 2 model)?",
            "000_exp2_adience_finetune",
            "000_exp2_no_pretrain",
            results,
            report="not run (51.42% with)",
        ),
        _claim(
            "003: InceptionV3 beats the scratch CNN on gender (random-init InceptionV3)?",
            "003_modelB_inceptionv3",
            "003_modelA",
            results,
            report="yes, 'only by 2%'",
        ),
        _claim(
            "003: InceptionV3 recipe on an ImageNet base beats the scratch CNN?",
            "003_modelB_lite0",
            "003_modelA",
            results,
            report="yes, 'only by 2%'",
        ),
        _claim(
            "transfer beats scratch (000 Exp. 1: ImageNet Lite0 vs random ResNet50, frozen)?",
            "000_exp1_lite0_frozen",
            "000_exp1_resnet50_frozen",
            results,
        ),
        _claim(
            "transfer beats scratch (001: ImageNet Lite0 vs random VGG16)?",
            "001_lite0_imagenet",
            "001_vgg16",
            results,
        ),
        _claim(
            "transfer beats scratch (002: ImageNet Lite0 vs random MobileNetV2)?",
            "002_lite0_imagenet",
            "002_mobilenetv2",
            results,
        ),
        _claim(
            "face-trained features beat ImageNet ones (002: frozen dlib face ResNet vs Lite0)?",
            "002_dlib_face",
            "002_lite0_imagenet",
            results,
        ),
        _claim(
            "face-trained features beat ImageNet ones (004 transfer: dlib face ResNet vs Lite0)?",
            "004_transfer_dlib_face",
            "004_transfer_lite0",
            results,
        ),
        _claim(
            "transfer beats scratch (004: ImageNet Lite0 transfer vs the scratch CNN)?",
            "004_transfer_lite0",
            "004_gender",
            results,
            report="yes: 89.3 vs 84.8",
        ),
        _claim(
            "004: transfer (random-init Xception) beats the scratch CNN?",
            "004_transfer_xception",
            "004_gender",
            results,
        ),
    ]
    epochs = {m: (results.get(m) or {}).get("best_epoch") for m in (best_multi, "004_gender")}
    out.append(
        {
            "question": "004: multi-task converges in fewer epochs than single-task gender?",
            "left": best_multi,
            "right": "004_gender",
            "metric": "best epoch (mean over folds)",
            "left_value": epochs[best_multi],
            "right_value": epochs["004_gender"],
            "answer": None
            if None in epochs.values()
            else bool(epochs[best_multi] < epochs["004_gender"]),
            "report": "yes: 26.0 vs 50.8 average training epochs",
        }
    )
    return out


# --------------------------------------------------------------------------- writing
def _pct(v: float | None, std: float | None = None) -> str:
    if v is None:
        return "–"
    return f"{100 * v:.1f} ± {100 * std:.1f}" if std else f"{100 * v:.1f}"


def _num(v: Any, fmt: str = "{:,}") -> str:
    return "–" if v is None else fmt.format(v)


def _rep(v: Any) -> str:
    return "–" if v is None else (f"{100 * v:.2f}" if isinstance(v, float) and v <= 1 else str(v))


def row_record(
    row: Row, res: dict[str, Any] | None, on: dict[str, dict[str, Any] | None] | None = None
) -> dict[str, Any]:
    """The JSON object of one row: the report's side and ours (``on``: ours on another
    dataset, by its name)."""
    return {
        "id": row.id,
        "report": row.report,
        "experiment": row.experiment,
        "kind": row.kind,
        "config": str(row.config.relative_to(REPO)),
        "base": row.base,
        "report_figure": row.report_figure,
        **row.extra,
        "metric": row.metric,
        "ours": res,
        **{d: v for d, v in (on or {}).items() if d in row.variants},
    }


def _table(header: list[str], lines: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(line) + " |" for line in lines),
        "",
    ]


def write_outputs(
    rows: list[Row],
    results: dict[str, dict],
    out_dir: Path,
    predictions: dict[str, pd.DataFrame] | None = None,
) -> dict[str, Any]:
    """``reference.json`` and ``reference.md`` in ``out_dir``; returns the JSON object.
    ``predictions``: the held-out per-photo predictions of the Adience rows (by row id),
    for the interval of each claim's difference over people."""
    records = [
        row_record(r, results.get(r.id), {d: results.get(f"{d}/{r.id}") for d in DATASETS})
        for r in rows
    ]
    claims = comparisons(results)
    on_adience = {r.id: results[f"adience/{r.id}"] for r in rows if f"adience/{r.id}" in results}
    adience_claims = [c for c in comparisons(on_adience) if c["answer"] is not None]
    preds = predictions or {}
    for c in adience_claims:
        left, right = preds.get(f"adience/{c['left']}"), preds.get(f"adience/{c['right']}")
        if left is not None and right is not None and c["metric"] in SCORE_COLUMNS:
            c["difference"] = paired_difference(left, right, c["metric"])
    doc = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "written": time.strftime("%Y-%m-%d %H:%M"),
        "rows": records,
        "comparisons": claims,
        "comparisons_adience": adience_claims,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "reference.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    by_id = {r.id: r for r in rows}
    md = [
        "# Reference experiments, replicated",
        "",
        "Written by `python benchmarks/reference.py` (configs: `configs/reference/`, rows: "
        "`configs/reference/rows.yaml`; what each report ran: "
        "`../shared/reference-experiments.md`). Every row ran as one single-thread process "
        f"(`trainer.threads=1`), two at a time, on {doc['machine']['cpus']} CPU cores, "
        "on the budget its config states (the reports trained for hours on GPUs). "
        "Accuracies are %; *ours* is measured on held-out faces never trained on (a test "
        "split, the 80:20 held-out part where the report had only that, or the test folds).",
        "",
        "## Every row",
        "",
    ]
    lines = []
    for r in rows:
        res = results.get(r.id) or {}
        adience = results.get(f"adience/{r.id}")
        lines.append(
            [
                f"`{r.id}`",
                r.experiment,
                r.base,
                r.report_figure,
                _ours_cell(r, res) if res else "not run",
                _adience_cell(r, adience),
                str(res.get("split") or "–"),
                _num(res.get("epochs"), "{}"),
                _num(res.get("minutes"), "{:.1f}"),
                _num(res.get("train_images_per_s"), "{:.0f}"),
                _num(res.get("params_keras")),
                _num(res.get("model_size_mb"), "{:.1f}"),
                _num(res.get("forward_ms_per_face"), "{:.2f}"),
            ]
        )
    md += _table(
        [
            "row",
            "experiment",
            "our base",
            "report",
            "ours",
            "Adience (photos, people)",
            "split",
            "epochs",
            "min",
            "img/s",
            "params (Keras)",
            "MB",
            "ms/face",
        ],
        lines,
    )
    md += [
        "min: training minutes (per fold for cv rows, all trials for sweeps); img/s: "
        "training images per second; ms/face: forward time, batch 32, 1 thread. "
        "*Adience*: the same row on real Adience faces (see *On Adience* below); – where "
        "the report did not use Adience; *not run* where it did and this row has not run.",
        "",
    ]
    md += _report_tables(by_id, results)
    md += _adience_section(rows, results, adience_claims)
    md += ["## The reports' claims, measured", ""]
    md += _table(
        ["claim", "ours", "answer", "report"],
        [
            [
                c["question"],
                f"{_fmt_claim(c['left_value'])} vs {_fmt_claim(c['right_value'])}"
                + (f" (fold {c['on_fold']})" if "on_fold" in c else ""),
                {True: "yes", False: "no", None: "not measured"}[c["answer"]],
                c["report"],
            ]
            for c in claims
        ],
    )
    (out_dir / "reference.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    return doc


def _ours_cell(r: Row, res: dict[str, Any]) -> str:
    """Our figure of ``r`` (its metric, with the fold std; age and MAE when measured)."""
    m = res.get("metrics") or {}
    s = res.get("metrics_std") or {}
    ours = _pct(m.get(r.metric), s.get(r.metric))
    age = m.get("age_group_exact")
    if age is not None and r.metric != "age_group_exact":
        ours += f"; age {_pct(age, s.get('age_group_exact'))}"
    if m.get("age_mae") is not None:
        ours += f"; MAE {m['age_mae']:.2f}"
    return ours


def _adience_cell(r: Row, res: dict[str, Any] | None) -> str:
    if "adience" not in r.variants:
        return "–"
    if res is None:
        return "not run"
    people = res.get("people_figures") or {}
    if not people:
        return _ours_cell(r, res)
    return f"{_ours_cell(r, res)} ({people['photos']:,}, {people['people']})"


def _ci(fig: dict[str, Any] | None) -> str:
    """``71.2 [63.0, 78.1]``: an accuracy with its interval over people."""
    if not fig or fig.get("value") is None:
        return "–"
    if fig.get("low") is None:
        return _pct(fig["value"])
    return f"{100 * fig['value']:.1f} [{100 * fig['low']:.1f}, {100 * fig['high']:.1f}]"


def _adience_section(
    rows: list[Row], results: dict[str, dict], claims: list[dict[str, Any]]
) -> list[str]:
    """The rows whose report used Adience, on Adience: figures with people, intervals over
    people and the majority-class share, then the reports' claims answered on Adience."""
    marked = [r for r in rows if "adience" in r.variants]
    if not marked:
        return []
    md = [
        "## On Adience",
        "",
        "The rows whose report used Adience, run again on real Adience faces: "
        "`$AGEGENDER_DATA/adience-fold0-part`, 1,586 photos of 93 people (every photo of "
        "3 of fold 0's albums), split by person (`user_id` + `face_id`): the same configs, "
        "budgets and split fractions (or 5 grouped folds) as the UTKFace rows, only "
        "`data.path` changed (`python benchmarks/reference.py --dataset adience`; `run`: "
        "trained on Adience; `evaluate`: the row's CelebA model tested on every Adience "
        "photo, as the report did). Age is Adience's own 8 groups (the reports' "
        "formulation; `(8, 12)` and `(60, 100)` read as 8-13 and 60+). train rows keep "
        "1,585 photos (the one without a gender label leaves gender tasks); cv rows also "
        "run the duplicate audit, which drops one conflicting copy pair: 1,584 photos in 5 "
        "folds of 458 / 317 / 301 / 243 / 265. A split draws people, not photos, so its "
        "photo share can be far from its fraction: 000's 4:3:3 tests 363 photos of 28 "
        "people; 002's 80:20 holds out 62 photos of 19 people (the many-photo people fell "
        "in training), and, as on UTKFace and in the report, that held-out part also picks "
        "the best epoch. Few people, many photos each: each figure gives its photos and "
        "people, a 95 % interval that resamples people (2,000 resamples, percentile; pooled "
        "over the test folds for cv rows, whose *ours* is the mean ± std over folds) and "
        "the majority-class share of those photos (a model that always says the commoner "
        "class scores that); "
        "*balanced*: the mean of the female and male recalls (50 for a constant answer).",
        "",
    ]
    needed = {d for r in marked for d in r.after}
    needed |= {r.id for r in marked if r.variants["adience"] == "evaluate"}
    again = sorted(
        d
        for d in needed
        if not (results.get(d) or {"from_earlier_table": 1}).get("from_earlier_table")
    )
    if again:
        md += [
            "The CelebA stages these rows start from or test ("
            + ", ".join(f"`{d}`" for d in again)
            + ") ran again for them (their earlier runs were not kept): their own rows above "
            "show the new runs, whose minutes, img/s and ms/face were measured while other "
            "jobs shared the machine's cores.",
            "",
        ]
    lines = []
    for r in marked:
        res = results.get(f"adience/{r.id}")
        pf = (res or {}).get("people_figures") or {}
        gender, age = pf.get("gender_accuracy"), pf.get("age_group_exact")
        lines.append(
            [
                f"`{r.id}`",
                r.variants["adience"],
                r.report_figure,
                _ours_cell(r, results.get(r.id) or {}) if results.get(r.id) else "not run",
                _ours_cell(r, res) if res else "not run",
                _num(pf.get("photos")),
                _num(pf.get("people")),
                _ci(gender),
                _ci(pf.get("gender_balanced")),
                _pct(pf.get("gender_majority")),
                _ci(age),
                _pct(pf.get("age_majority")),
            ]
        )
    md += _table(
        [
            "row",
            "how",
            "report",
            "UTKFace (ours)",
            "Adience (ours)",
            "photos",
            "people",
            "gender [95% CI, people]",
            "balanced [95% CI]",
            "majority",
            "age group [95% CI, people]",
            "majority",
        ],
        lines,
    )
    md += ["### The reports' claims on Adience", ""]
    md += [
        "*answer*: yes/no on the figures as the UTKFace rows compare them (the mean over folds "
        "for cv rows; a row run on one fold against the other's figure on that fold); "
        "*difference*: left minus right, percentage points, on the same held-out photos "
        "(pooled over folds), with its 95 % interval over people, and *each* on those "
        "photos; *not resolved* where the difference's interval holds 0.",
        "",
    ]
    md += _table(
        [
            "claim",
            "Adience",
            "answer",
            "difference [95% CI, people]",
            "each [95% CI]",
            "UTKFace",
            "report",
        ],
        [
            [
                c["question"],
                f"{_fmt_claim(c['left_value'])} vs {_fmt_claim(c['right_value'])}"
                + (f" (fold {c['on_fold']})" if "on_fold" in c else ""),
                {True: "yes", False: "no"}[c["answer"]] + _resolved(c.get("difference")),
                _diff(c.get("difference")),
                _claim_cis(c, results),
                _utk_claim(c, results),
                c["report"],
            ]
            for c in claims
        ],
    )
    return md


def _diff(d: dict[str, Any] | None) -> str:
    if not d or d.get("value") is None:
        return "–"
    if d.get("low") is None:
        return f"{100 * d['value']:+.1f}"
    span = f"{100 * d['value']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"
    return f"{span} ({d['photos']:,} photos, {d['people']} people)"


def _resolved(d: dict[str, Any] | None) -> str:
    if not d or d.get("low") is None:
        return ""
    return " (not resolved)" if d["low"] <= 0 <= d["high"] else ""


def _claim_cis(c: dict[str, Any], results: dict[str, dict]) -> str:
    if c["metric"] not in ("gender_accuracy", "age_group_exact"):
        return "–"
    if c.get("difference"):  # both on the photos they share (one fold of a one-fold row)
        return f"{_ci(c['difference']['left'])} vs {_ci(c['difference']['right'])}"
    figs = [
        ((results.get(f"adience/{rid}") or {}).get("people_figures") or {}).get(c["metric"])
        for rid in (c["left"], c["right"])
    ]
    return " vs ".join(_ci(f) for f in figs)


def _utk_claim(c: dict[str, Any], results: dict[str, dict]) -> str:
    same = next(
        (x for x in comparisons(results) if x["question"] == c["question"]),
        None,
    )
    if same is None or same["answer"] is None:
        return "–"
    answer = "yes" if same["answer"] else "no"
    return f"{answer}: {_fmt_claim(same['left_value'])} vs {_fmt_claim(same['right_value'])}"


def _fmt_claim(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{100 * v:.1f}" if v <= 1 else f"{v:.1f}"


#: a table column: (header, cell from the row and our result)
Column = tuple[str, Callable[[Row, dict[str, Any]], str]]


def _report(key: str, fmt: str | None = None) -> Callable[[Row, dict[str, Any]], str]:
    """A cell with the report's own ``report_<key>`` (accuracies as %)."""
    return lambda row, _: (
        _rep(row.extra.get(f"report_{key}"))
        if fmt is None
        else _num(row.extra.get(f"report_{key}"), fmt)
    )


def _ours(key: str, fmt: str = "{:,}") -> Callable[[Row, dict[str, Any]], str]:
    """A cell with our measured ``key`` (a metric, as % with its std, or a plain figure)."""

    def cell(_: Row, res: dict[str, Any]) -> str:
        metrics = res.get("metrics") or {}
        if key in metrics:
            return _pct(metrics[key], (res.get("metrics_std") or {}).get(key))
        return _num(res.get(key), fmt)

    return cell


def _side_by_side(
    rows: dict[str, Row], results: dict[str, dict], ids: tuple[str, ...], cols: list[Column]
) -> list[str]:
    """One line per row id, the report's figures beside ours."""
    first: Column = ("model", lambda row, _: row.experiment)
    return _table(
        [c[0] for c in (first, *cols)],
        [[f(rows[r], results.get(r) or {}) for _, f in (first, *cols)] for r in ids],
    )


def _report_tables(rows: dict[str, Row], results: dict[str, dict]) -> list[str]:
    acc = [("report acc", _report("value")), ("ours", _ours("gender_accuracy"))]
    loss = [("report loss", _report("loss", "{}")), ("ours", _ours("loss", "{:.3f}"))]
    md = ["## 001, Table 2 (CelebA-10k at 64x64; report: a 202,599-image set)", ""]
    md += _side_by_side(
        rows,
        results,
        ("001_mobilenetv2", "001_vgg16", "001_vgg19", "001_efficientnetv2", "001_lite0_imagenet"),
        [
            *acc,
            ("report params", _report("params", "{:,}")),
            ("ours (Keras)", _ours("params_keras")),
            ("report train s", _report("train_s", "{:,}")),
            ("ours min", _ours("minutes", "{:.1f}")),
            *loss,
            ("report Mb", _report("size_mb", "{}")),
            ("ours MB", _ours("model_size_mb")),
        ],
    )
    md += ["## 002, Comparison of model architectures (UTKFace 80:20 for Adience frontal)", ""]
    md += _side_by_side(
        rows,
        results,
        (
            "002_hassner_cnn",
            "002_resnet50",
            "002_mobilenetv2",
            "002_lite0_imagenet",
            "002_dlib_face",
        ),
        [
            *acc,
            *loss,
            ("report training s", _report("train_s", "{:,}")),
            ("ours min", _ours("minutes", "{:.1f}")),
            ("ours ms/face", _ours("forward_ms_per_face")),
        ],
    )
    md += ["## 002, with and without data augmentation", ""]
    md += _side_by_side(
        rows,
        results,
        ("002_augment_on", "002_augment_off"),
        [*acc, *loss, ("ours min", _ours("minutes", "{:.1f}"))],
    )
    for rid in ("002_sweep_batch_lr_fc", "002_sweep_weight_decay", "002_sweep_dropout"):
        md += _sweep_table(rows[rid], results.get(rid))
    md += ["## 004, Table 3 (UTKFace grouped 5 folds for Adience's subject-exclusive folds)", ""]
    md += _side_by_side(
        rows,
        results,
        (
            "004_gender",
            "004_age",
            "004_multitask_g03",
            "004_multitask_g05",
            "004_multitask_g07",
            "004_transfer_lite0",
            "004_transfer_dlib_face",
            "004_transfer_xception",
        ),
        [
            (
                "report gender",
                lambda row, _: (
                    "–" if row.metric == "age_group_exact" else _rep(row.extra.get("report_value"))
                ),
            ),
            ("ours", _ours("gender_accuracy")),
            (
                "report age",
                lambda row, _: _rep(
                    row.extra.get(
                        "report_value" if row.metric == "age_group_exact" else "report_age"
                    )
                ),
            ),
            ("ours", _ours("age_group_exact")),
            ("report epochs", _report("epochs", "{}")),
            ("ours (best epoch)", _ours("best_epoch", "{}")),
        ],
    )
    return md


def _sweep_table(row: Row, res: dict[str, Any] | None) -> list[str]:
    """A sweep's trials, as the report's tables list them, and the chosen values."""
    chosen = ", ".join(f"`{k}={v}`" for k, v in ((res or {}).get("best_params") or {}).items())
    ours = f"best {_pct(_acc({row.id: res}, row.id))} with {chosen}" if res else "not run"
    md = [f"## 002, {row.experiment}", "", f"Report: {row.report_figure}. Ours: {ours}.", ""]
    if res and res["trials"]:
        keys = list(res["trials"][0]["params"])
        md += _table(
            [*keys, "val acc (ours)", "state", "min"],
            [
                [
                    *(str(t["params"].get(k)) for k in keys),
                    _pct(t["value"]),
                    t["state"],
                    _num(t["minutes"], "{:.1f}"),
                ]
                for t in res["trials"]
            ],
        )
    return md


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--row", action="append", help="run only this row (repeatable)")
    ap.add_argument(
        "--dataset",
        choices=sorted(DATASETS),
        help="run the rows marked for this dataset on it (with --row: those of them), and "
        "the earlier rows they start from",
    )
    ap.add_argument("--set", action="append", default=[], help="override for every row")
    ap.add_argument("--jobs", type=int, default=2, help="rows at a time (default 2)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per row")
    ap.add_argument("--runs-dir", type=Path, default=REPO / "runs" / "reference")
    ap.add_argument("--out-dir", type=Path, default=REPO / "benchmarks")
    ap.add_argument("--collect", action="store_true", help="only rebuild the tables")
    args = ap.parse_args(argv)
    try:
        rows = load_rows()
    except RowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    variants = [v for d in DATASETS for v in variant_rows(rows, d)]
    by_id = {r.id: r for r in [*rows, *variants]}
    choice = [r for r in rows if args.dataset is None or args.dataset in r.variants]
    wanted = [f"{args.dataset}/{r}" if args.dataset else r for r in args.row or []]
    unknown = [r for r in wanted if r not in by_id]
    if unknown:
        names = ", ".join(r.id for r in choice)
        print(f"error: unknown row(s) {', '.join(unknown)}; rows: {names}", file=sys.stderr)
        return 2
    if args.dataset:
        mine = [v for v in variants if v.dataset == args.dataset]
        todo = with_dependencies([by_id[r] for r in wanted] if wanted else mine, by_id)
    else:
        todo = [by_id[r] for r in wanted] if wanted else rows
    failed: dict[str, str] = {}
    if not args.collect:
        failed = run_rows(todo, by_id, args.runs_dir, args.set, args.jobs, args.threads)
    earlier = _earlier_results(args.out_dir / "reference.json")
    results = {}
    for r in [*rows, *variants]:
        try:
            res = collect(r, args.runs_dir)
        except (OSError, KeyError, ValueError) as exc:
            print(f"{r.id}: cannot read its results: {exc}", file=sys.stderr)
            res = None
        if res is None and r.id in earlier:  # measured before, its run folder not here
            res = {**earlier[r.id], "from_earlier_table": True}
        if res is not None:
            results[r.id] = res
    predictions = {}
    for v in variants:
        if (results.get(v.id) or {}).get("people_figures") and result_file(
            v, args.runs_dir / v.id
        ).is_file():
            predictions[v.id] = _held_out_predictions(v, args.runs_dir / v.id)
    write_outputs(rows, results, args.out_dir, predictions)
    done = sum(r.id in results for r in rows)
    more = sum(v.id in results for v in variants)
    where = args.out_dir / "reference.md"
    print(f"wrote {where} ({done}/{len(rows)} rows measured, {more} on Adience)")
    for rid, why in failed.items():
        print(f"{rid}: {why}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
