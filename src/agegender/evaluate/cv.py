"""k-fold cross-validation: grouped stratified folds, one training run per fold, mean ± std.

``run_cv(config, folds=5, out_dir="runs/x-cv")``:

1. **Folds** (once; reused on every re-run): ``read_dataset`` -> ``data.limit`` (a random
   sample, before anything else, so a small trial stays small) -> the duplicate audit
   (:func:`agegender.data.audit.audit_dataset`: unreadable files are left out, byte-identical
   and near-duplicate copies become one group, duplicate groups with conflicting labels are
   dropped unless ``data.drop_conflicts: false``) -> :func:`agegender.data.folds.make_folds`
   (scikit-learn ``StratifiedGroupKFold`` over subject / duplicate groups, stratified by
   gender x age group; datasets with official folds, Adience, keep them). Written to
   ``OUT/folds.csv``; ``OUT/folds.json`` (``dataset`` in ``results.json``) counts the rows
   read, kept and rejected by reason (``row_counts``, printed as one line).
2. **Per fold k** (``OUT/fold_k/``, a normal training run dir): fold ``k`` is the **test**
   set. The **validation** set (early stopping, best-checkpoint choice) is a grouped,
   stratified fraction of the other folds: ``data.split[1] / (data.split[0] +
   data.split[1])`` of their independent groups (20% with the default ``[0.8, 0.2]``),
   chosen by ``StratifiedGroupKFold`` with seed ``data.seed + k``; the rest trains. The
   assignment is written to ``OUT/fold_k/split.csv`` (fold 0 train, 1 validation, 2 test)
   and handed to the training engine as ``data.folds_file`` with ``data.fold=2,
   data.val_fold=1``. This works for any k >= 2, and no face is ever both trained and
   tested on in one fold.
3. The best checkpoint is evaluated on the test fold
   (:func:`agegender.evaluate.evaluation.evaluate_model`): ``fold_k/results.json`` and
   ``fold_k/predictions.csv`` (per-image probabilities). With ``calibrate`` (a rule of
   ``agegender calibrate``, e.g. ``equal-recall``) the fold's gender threshold is first
   chosen on its own validation faces (:func:`agegender.evaluate.calibrate.choose_threshold`)
   and the test fold is scored at it: the cross-validated figures then follow the decision
   rule a shipped, calibrated model uses, and every fold's threshold is in its results.
   Re-running with another ``calibrate`` re-scores finished folds without retraining.
4. ``OUT/results.json``: every metric as mean ± std over folds (sample standard deviation,
   ``ddof=1``) with the per-fold values, per-fold training seconds and images/s, test
   images/s, and the pooled fairness table, confusion matrices and reliability bins of all
   test predictions (``OUT/predictions.csv``).

Resumable: a fold with ``results.json`` is skipped; a fold whose training finished
(``summary.json``) is only evaluated; an interrupted fold resumes from
``checkpoints/last.ckpt``. Re-running with a different config into the same directory is
refused.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from agegender.config import Config, ConfigError, load_config, validate_config
from agegender.data.records import DatasetError
from agegender.evaluate.evaluation import summarise_predictions, to_jsonable, write_json
from agegender.fileio import atomic_path
from agegender.metric_names import HEADLINE, METRIC, Metric

TRAIN, VAL, TEST = 0, 1, 2
#: Config sections that may differ when a cross-validation run is resumed.
IGNORED_ON_RESUME = ("name", "description", "trainer", "logger")
#: Metrics shown in the summary table (when present), in order.


# --------------------------------------------------------------------------- folds
def build_folds(
    config: Config, k: int, out: Path, *, workers: int | None = None, progress: bool = False
) -> dict[str, Any]:
    """Read, sample, audit and split the dataset of ``config``; write ``out/folds.csv``
    and ``out/folds.json`` (``row_counts``: the rows read, kept and rejected)."""
    from agegender.data.folds import write_folds
    from agegender.data.prepare import read_folds

    d = config.data
    rows, folds = read_folds(
        d.path,
        d.format,
        k,
        seed=d.seed,
        conflicts="drop" if d.drop_conflicts else "keep",
        limit=d.limit,
        workers=workers,
        progress=progress,
    )
    info = rows.info
    info["audit"] = True
    if folds.k < 2:
        raise DatasetError(f"{d.path}: only {folds.k} fold(s) of data: cannot cross-validate")
    write_folds(folds, out / "folds.csv")
    info |= {
        "folds": folds.k,
        "official_folds": folds.official,
        "faces": len(folds.table),
        "groups": folds.groups,
        "dropped_conflicts": folds.dropped_conflicts,
        "fold_sizes": folds.table["fold"].value_counts().sort_index().astype(int).tolist(),
        "row_counts": rows.counts.to_dict(),
    }
    write_json(info, out / "folds.json")
    return info


def fold_split(folds: pd.DataFrame, k: int, val_fraction: float, seed: int) -> pd.DataFrame:
    """``path, fold, split_group`` with fold 0 train / 1 validation / 2 test for CV fold k."""
    from sklearn.model_selection import StratifiedGroupKFold

    from agegender.data.folds import strata

    test = folds["fold"].to_numpy() == k
    rest = folds[~test].reset_index()
    groups = rest["split_group"].to_numpy()
    n_splits = max(2, round(1 / val_fraction))
    if len(np.unique(groups)) < n_splits:
        raise DatasetError(
            f"fold {k}: only {len(np.unique(groups))} independent groups outside the test fold:"
            " too few for a validation split"
        )
    table = rest.assign(
        gender=pd.array(pd.to_numeric(rest["gender"], errors="coerce").round(), dtype="Int8"),
        age_group=pd.array(pd.to_numeric(rest["age_group"], errors="coerce").round(), dtype="Int8"),
    )
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed + k)
    _, val_pos = next(splitter.split(np.zeros(len(rest)), strata(table), groups))
    split = np.full(len(folds), TEST, dtype=int)
    rest_split = np.full(len(rest), TRAIN, dtype=int)
    rest_split[val_pos] = VAL
    split[rest["index"].to_numpy()] = rest_split
    return pd.DataFrame({"path": folds["path"], "fold": split, "split_group": folds["split_group"]})


def fold_test_table(folds: pd.DataFrame, k: int) -> pd.DataFrame:
    """The test rows of fold ``k`` as a labels table (gender, age, age_group, race...)."""
    return _labels_table(folds[folds["fold"] == k])


def fold_val_table(folds: pd.DataFrame, split: pd.DataFrame) -> pd.DataFrame:
    """The validation rows of a fold's ``split.csv`` (:func:`fold_split`) as a labels table."""
    if len(split) != len(folds) or not (split["path"].to_numpy() == folds["path"].to_numpy()).all():
        raise DatasetError("split.csv does not list the rows of folds.csv in order")
    return _labels_table(folds[split["fold"].to_numpy() == VAL])


def _labels_table(rows: pd.DataFrame) -> pd.DataFrame:
    t = rows.reset_index(drop=True).copy()
    for col in ("gender", "age_group", "race"):
        if col in t.columns:
            t[col] = pd.array(pd.to_numeric(t[col], errors="coerce").round(), dtype="Int8")
    if "subject" in t.columns:
        t["subject"] = t["subject"].astype(object).where(t["subject"].notna(), "").astype(str)
    return t


# --------------------------------------------------------------------------- aggregate
def mean_std(values: Sequence[float | None]) -> dict[str, Any]:
    """``{"mean", "std", "values"}`` over the finite values (sample std, ddof=1)."""
    arr = np.array([np.nan if v is None else float(v) for v in values], dtype=float)
    ok = arr[np.isfinite(arr)]
    mean = float(ok.mean()) if len(ok) else None
    std = float(ok.std(ddof=1)) if len(ok) > 1 else (0.0 if len(ok) == 1 else None)
    return {"mean": mean, "std": std, "values": to_jsonable(arr.tolist())}


def aggregate(per_fold: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std of every metric and timing over folds."""
    keys: list[str] = []
    for f in per_fold:
        keys += [k for k in f["metrics"] if k not in keys]
    metrics = {k: mean_std([f["metrics"].get(k) for f in per_fold]) for k in keys}
    timing_keys = (
        "train_seconds",
        "train_images_per_second",
        "test_images_per_second",
        "test_seconds_per_image",
        "epochs_run",
    )
    timing = {k: mean_std([f.get(k) for f in per_fold]) for k in timing_keys}
    out: dict[str, Any] = {"metrics": metrics, "timing": timing}
    decisions = [f.get("gender_decision") for f in per_fold]
    if any(decisions):
        out["gender_threshold"] = mean_std([(d or {}).get("threshold") for d in decisions])
    return out


# --------------------------------------------------------------------------- run
def _fold_config(config: Config, out: Path, k: int) -> Config:
    raw = config.model_dump(mode="json")
    raw["name"] = f"{config.name or config.model.name}-fold{k}"
    raw["data"].update(
        folds_file=str(out / f"fold_{k}" / "split.csv"),
        fold=TEST,
        val_fold=VAL,
        limit=None,
        audit=False,
    )
    fold_config = validate_config(raw, base_dir=out)
    from agegender.train.distill import with_fold

    return with_fold(fold_config, k)  # fold k's teacher never saw fold k's test faces


def _with_defaults(raw: dict) -> dict:
    """A saved config with today's defaults filled in, so keys added to the schema since it
    was written (with defaults that change nothing) do not block resuming it."""
    try:
        filled = Config.model_validate(raw).model_dump(mode="json")
    except ValueError:  # not valid any more: compare as written, the diff says what changed
        return raw
    for key in IGNORED_ON_RESUME:
        filled.pop(key, None)
    return filled


def _check_same_config(config: Config, out: Path, k: int) -> None:
    saved = out / "cv_config.yaml"
    raw = config.model_dump(mode="json")
    for key in IGNORED_ON_RESUME:  # hardware and logging may change between sessions
        raw.pop(key, None)
    current = {"folds": k, "config": raw}
    if saved.is_file():
        previous = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
        previous["config"] = _with_defaults(previous.get("config") or {})
        if previous != current:
            prev_cfg, cur_cfg = previous.get("config", {}), current["config"]
            diff = []
            for sec in sorted(set(cur_cfg) | set(prev_cfg)):
                a, b = prev_cfg.get(sec), cur_cfg.get(sec)
                if a == b:
                    continue
                if isinstance(a, dict) and isinstance(b, dict):
                    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                    diff += [f"{sec}.{k} ({a.get(k)!r} -> {b.get(k)!r})" for k in keys]
                else:
                    diff.append(sec)
            if previous.get("folds") != k:
                diff.insert(0, "folds")
            raise ConfigError(
                f"{out}: holds a cross-validation run with a different config (differs in: "
                f"{', '.join(diff) or 'details'}); choose another --out"
            )
    else:
        with atomic_path(saved) as tmp:  # --fold runs may write it together
            tmp.write_text(yaml.safe_dump(current, sort_keys=False), encoding="utf-8")


def run_fold(
    config: Config,
    out: Path,
    folds: pd.DataFrame,
    k: int,
    *,
    tta: str = "none",
    calibrate: str | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    printer: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Train (or resume) and evaluate CV fold ``k``; returns and writes its results.
    ``calibrate``: score the test fold at the gender threshold this rule picks on the
    fold's validation faces."""
    from agegender.artifact import load_model
    from agegender.evaluate.evaluation import evaluate_model
    from agegender.train import train

    fold_dir = out / f"fold_{k}"
    n_folds = int(folds["fold"].nunique())
    d = config.data
    val_fraction = d.split[1] / (d.split[0] + d.split[1])
    split_csv = fold_dir / "split.csv"
    if not split_csv.is_file():
        fold_dir.mkdir(parents=True, exist_ok=True)
        fold_split(folds, k, val_fraction, d.seed).to_csv(split_csv, index=False)
    summary_path = fold_dir / "summary.json"
    last = fold_dir / "checkpoints" / "last.ckpt"
    if summary_path.is_file():
        printer(f"fold {k + 1}/{n_folds}: training already finished, evaluating")
    else:
        resume = last.is_file()
        printer(f"fold {k + 1}/{n_folds}: {'resuming' if resume else 'training'} in {fold_dir}")
        train(
            _fold_config(config, out, k),
            fold_dir,
            resume=resume,
            progress=progress,
            printer=printer,
        )
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    best = fold_dir / "checkpoints" / "best.ckpt"
    ckpt = best if best.is_file() else last
    model, meta = load_model(ckpt)
    batch = batch_size or config.train.eval_batch_size or 2 * config.train.batch_size
    decision = None
    if calibrate is not None:
        from agegender.evaluate.calibrate import choose_threshold

        val = fold_val_table(folds, pd.read_csv(split_csv))
        _, val_pred = evaluate_model(
            model, meta, val, tta=tta, batch_size=batch, cache_dir=d.cache_dir
        )
        try:
            raw = "p_female_raw" if "p_female_raw" in val_pred.columns else "p_female"
            decision = choose_threshold(
                val_pred["gender"], val_pred[raw], calibrate, where=f"{split_csv}"
            )
        except ValueError as exc:
            raise DatasetError(f"fold {k} validation faces: {exc}") from None
        decision["chosen_on"] = f"fold {k} validation faces ({split_csv})"
        meta = {**meta, "gender_decision": decision}
        at = decision["at_threshold"]
        printer(
            f"fold {k + 1}/{n_folds}: gender threshold {decision['threshold']:g} ({calibrate}, "
            f"{decision['faces']:,} validation faces: female/male recall "
            f"{at['female_recall']:.1%}/{at['male_recall']:.1%})"
        )
    table = fold_test_table(folds, k)
    res, pred = evaluate_model(model, meta, table, tta=tta, batch_size=batch, cache_dir=d.cache_dir)
    pred.to_csv(fold_dir / "predictions.csv", index=False)
    splits = (summary.get("dataset") or {}).get("splits") or {}
    timing = res["timing"]
    result = {
        "fold": k,
        "checkpoint": str(ckpt),
        "n_train": splits.get("train"),
        "n_val": splits.get("val"),
        "n_test": res["n_evaluated"],
        "n_failed": res["n_failed"],
        "epochs_run": summary.get("epochs_run"),
        "best_epoch": (summary.get("best") or {}).get("epoch"),
        "train_seconds": summary.get("train_time_total_s", summary.get("train_time_s")),
        "train_images_per_second": summary.get("train_images_per_sec"),
        "test_images_per_second": timing.get("images_per_second"),
        "test_seconds_per_image": timing.get("seconds_per_image"),
        "params": summary.get("params"),
        "model_size_mb": summary.get("model_size_mb"),
        "tta": tta,
        "calibrate": calibrate,
        "gender_decision": decision,
        "metrics": res["metrics"],
        "fairness": res["fairness"],
    }
    write_json(result, fold_dir / "results.json")
    return result


def run_cv(
    config: Config | str | Path,
    folds: int = 5,
    out_dir: str | Path = "runs/cv",
    overrides: Sequence[str] = (),
    *,
    tta: str = "none",
    calibrate: str | None = None,
    only: Sequence[int] | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    progress: bool = False,
    printer: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Cross-validate ``config`` over ``folds`` grouped stratified folds into ``out_dir``
    (see the module docstring). Returns the dict written to ``out_dir/results.json``.

    ``only``: run just these folds (0-based), e.g. to spread the folds over several
    processes or machines sharing ``out_dir``; the others are left alone. ``results.json``
    is written once every fold has its results; until then the return value has
    ``"complete": False`` and the finished folds' results under ``per_fold``.
    Raises ConfigError / DatasetError (one line) on bad input."""
    from agegender.config import check_files
    from agegender.data.folds import read_folds
    from agegender.data.prepare import RowCounts
    from agegender.evaluate.tta import check_mode
    from agegender.train.data import resolve_sizes

    check_mode(tta)
    if calibrate is not None:
        from agegender.evaluate.calibrate import check_rule

        try:
            check_rule(calibrate)
        except ValueError as exc:
            raise ConfigError(f"--calibrate: {exc}") from None
    if folds < 2:
        raise ConfigError(f"--folds: need at least 2 (got {folds})")
    config_path = None
    if not isinstance(config, Config):
        config_path = str(config)
        config = load_config(config, list(overrides))
    check_files(config)
    size, input_size = resolve_sizes(config)
    config = config.model_copy(
        update={"data": config.data.model_copy(update={"size": size, "input_size": input_size})}
    )
    out = Path(out_dir).resolve()
    _check_same_config(config, out, folds)
    started = time.perf_counter()
    folds_csv = out / "folds.csv"
    if folds_csv.is_file():
        info_path = out / "folds.json"
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        printer(f"using the folds in {folds_csv}")
    else:
        printer(f"making {folds} grouped stratified folds of {config.data.path}")
        info = build_folds(config, folds, out, workers=workers, progress=progress)
    if info.get("row_counts"):
        printer(RowCounts.from_dict(info["row_counts"]).line())
    table = read_folds(folds_csv)
    from agegender.train.distill import check_teacher_folds

    note = check_teacher_folds(config, table)
    if note:
        printer(note)
    ks = sorted(int(x) for x in table["fold"].unique())
    if only is not None:
        bad = sorted(set(only) - set(ks))
        if bad:
            raise ConfigError(f"--fold: no fold {bad[0]} (folds are {ks[0]}..{ks[-1]})")
    per_fold = []
    for k in ks:
        if only is not None and k not in only:
            continue
        res_path = out / f"fold_{k}" / "results.json"
        if res_path.is_file():
            done = json.loads(res_path.read_text(encoding="utf-8"))
            if _same_scoring(done, tta, calibrate):
                printer(f"fold {k + 1}/{len(ks)}: done (results in {res_path}), skipped")
                per_fold.append(done)
                continue
        per_fold.append(
            run_fold(
                config,
                out,
                table,
                k,
                tta=tta,
                calibrate=calibrate,
                batch_size=batch_size,
                progress=progress,
                printer=printer,
            )
        )
    if only is not None:  # the other folds' results as they are now (other processes)
        others = [out / f"fold_{k}" / "results.json" for k in ks if k not in only]
        others_done = [json.loads(p.read_text(encoding="utf-8")) for p in others if p.is_file()]
        per_fold += [f for f in others_done if _same_scoring(f, tta, calibrate)]
        per_fold.sort(key=lambda f: f["fold"])
    if len(per_fold) < len(ks):
        done = [f["fold"] for f in per_fold]
        printer(
            f"{len(done)} of {len(ks)} folds have results ({done}); results.json is written "
            "when all are done (run the other folds, or run without --fold)"
        )
        return to_jsonable({"complete": False, "folds": len(ks), "per_fold": per_fold})
    preds = [pd.read_csv(out / f"fold_{f['fold']}" / "predictions.csv") for f in per_fold]
    pooled = pd.concat(preds, ignore_index=True)
    pooled.to_csv(out / "predictions.csv", index=False)
    agg = aggregate(per_fold)
    first = per_fold[0]
    results = {
        "complete": True,
        "name": config.name or config.model.name,
        "config": config_path,
        "model": config.model.name,
        "tasks": {"gender": config.task.gender, "age": config.task.age},
        "size": size,
        "input_size": input_size,
        "folds": len(ks),
        "official_folds": info.get("official_folds"),
        "validation": "grouped stratified "
        f"{config.data.split[1] / (config.data.split[0] + config.data.split[1]):.0%} of the "
        "training folds",
        "tta": tta,
        "calibrate": calibrate,
        "dataset": info,
        "params": first.get("params"),
        "model_size_mb": first.get("model_size_mb"),
        **agg,
        "per_fold": [{k: v for k, v in f.items() if k != "fairness"} for f in per_fold],
        "pooled": summarise_predictions(pooled),
        "seconds_this_run": round(time.perf_counter() - started, 1),
    }
    results = to_jsonable(results)
    write_json(results, out / "results.json")
    return results


def _same_scoring(fold_result: dict[str, Any], tta: str, calibrate: str | None) -> bool:
    """Whether a finished fold's results were scored the way this run asks."""
    return fold_result.get("tta", "none") == tta and fold_result.get("calibrate") == calibrate


def cv_table(results: dict[str, Any]):
    """A rich Table: each headline metric as mean ± std with its per-fold values."""
    from rich.table import Table

    table = Table(title=f"{results['name']}: {results['folds']}-fold cross-validation")
    table.add_column("metric", style="bold")
    table.add_column("mean ± std", justify="right")
    table.add_column("per fold", justify="right")
    rows = [k for k in HEADLINE if k in results["metrics"]]
    rows += ["gender_threshold", "train_seconds", "train_images_per_second"]
    rows += ["test_images_per_second"]
    timing = Metric("timing", "", percent=False, digits=2)
    # each fold's threshold under cv --calibrate
    stats = {**results["timing"], "gender_threshold": results.get("gender_threshold")}
    stats |= results["metrics"]
    shown = {"gender_threshold": Metric("gender_threshold", "", percent=False, digits=3)}
    for key in rows:
        src = stats.get(key)
        if not src or src["mean"] is None:
            continue
        metric = METRIC.get(key) or shown.get(key, timing)
        vals = ", ".join("-" if v is None else metric.fmt(v) for v in src["values"])
        unit = " %" if metric.percent else ""
        table.add_row(
            key,
            f"{metric.fmt(src['mean'])} ± {metric.fmt(src['std'] or 0.0)}{unit}",
            vals,
        )
    return table


__all__ = [
    "aggregate",
    "build_folds",
    "cv_table",
    "fold_split",
    "fold_val_table",
    "mean_std",
    "run_cv",
    "run_fold",
    "fold_test_table",
]
