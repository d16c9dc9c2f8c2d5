"""Quality benchmark: k-fold cross-validation of several models, one command.

    python benchmarks/quality.py                        # the default models, 5 folds
    python benchmarks/quality.py small_cnn resnet18     # some of them (names or YAML paths)
    python benchmarks/quality.py --folds 2 --set data.limit=600 --set train.epochs=1 \\
        --runs-dir /tmp/q --out-dir /tmp/q              # a quick end-to-end check
    python benchmarks/quality.py --collect              # only re-read finished runs

Each model is cross-validated with ``agegender.evaluate.run_cv`` (grouped stratified folds
made once from the duplicate audit, so copies of one photo never straddle train and test)
into ``RUNS_DIR/<name>``; runs are resumable, so an interrupted benchmark continues where it
stopped. The results are collected into ``OUT_DIR/quality.json`` (one object per model)
and ``OUT_DIR/quality.md``.

Keys per model: ``model, config, input_size, size, task_age, folds, n_faces,
gender_accuracy_mean/std, gender_roc_auc_mean, gender_ece_mean, age_mae_mean/std,
age_cs5_mean, age_group_exact_mean/std, age_group_one_off_mean/std, params, model_size_mb,
epochs_mean, train_seconds_per_fold, images_per_second`` (training throughput, images/s),
``test_images_per_second``, ``run_dir``. Accuracies are fractions in 0..1; std is the
sample standard deviation over folds.

The default configs live in ``configs/quality/*.yaml`` (gender + DEX age at CPU-friendly
input sizes, from scratch). The full default run takes hours of CPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = (
    str(REPO / "configs" / "default.yaml"),  # the bundled model: small_resnet, 64 px
    "levi_hassner",
    "levi_hassner_reduced",
    "small_cnn",
    "mobilenetv2_100",
    "resnet18",
)
CONFIG_DIR = REPO / "configs" / "quality"


def config_path(name: str) -> Path:
    """A config name (``configs/quality/<name>.yaml``) or a YAML path."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml"):
        return p
    return CONFIG_DIR / f"{name}.yaml"


def _stat(results: dict, key: str, what: str = "mean", section: str = "metrics"):
    return (results.get(section, {}).get(key) or {}).get(what)


def entry(results: dict, run_dir: Path, config: Path) -> dict:
    """One model's row of quality.json from its cross-validation results."""
    tasks = results.get("tasks") or {}
    return {
        "model": results.get("model"),
        "name": results.get("name"),
        "config": str(config),
        "input_size": results.get("input_size"),
        "size": results.get("size"),
        "task_age": tasks.get("age"),
        "folds": results.get("folds"),
        "n_faces": (results.get("dataset") or {}).get("faces"),
        "gender_accuracy_mean": _stat(results, "gender_accuracy"),
        "gender_accuracy_std": _stat(results, "gender_accuracy", "std"),
        "gender_roc_auc_mean": _stat(results, "gender_roc_auc"),
        "gender_ece_mean": _stat(results, "gender_ece"),
        "age_mae_mean": _stat(results, "age_mae"),
        "age_mae_std": _stat(results, "age_mae", "std"),
        "age_cs5_mean": _stat(results, "age_cs5"),
        "age_group_exact_mean": _stat(results, "age_group_exact"),
        "age_group_exact_std": _stat(results, "age_group_exact", "std"),
        "age_group_one_off_mean": _stat(results, "age_group_one_off"),
        "age_group_one_off_std": _stat(results, "age_group_one_off", "std"),
        "params": results.get("params"),
        "model_size_mb": results.get("model_size_mb"),
        "epochs_mean": _stat(results, "epochs_run", section="timing"),
        "train_seconds_per_fold": _stat(results, "train_seconds", section="timing"),
        "images_per_second": _stat(results, "train_images_per_second", section="timing"),
        "test_images_per_second": _stat(results, "test_images_per_second", section="timing"),
        "run_dir": str(run_dir),
    }


def partial_results(run_dir: Path) -> dict:
    """The finished folds of a cross-validation still running, in results.json's layout."""
    import yaml

    sys.path.insert(0, str(REPO / "scripts"))
    from bundle_default import partial_results as collect

    results = collect(run_dir)
    first = sorted(run_dir.glob("fold_*/results.json"))[0].parent
    summary = json.loads((first / "summary.json").read_text())
    cfg = yaml.safe_load((first / "config.yaml").read_text())
    results.update(
        model=summary.get("model"),
        name=str(cfg.get("name", "")).rsplit("-fold", 1)[0] or None,
        input_size=cfg["data"]["input_size"],
        size=cfg["data"]["size"],
        tasks=cfg.get("task"),
        params=summary.get("params"),
        model_size_mb=summary.get("model_size_mb"),
    )
    return results


def fairface_scores(run_dir: Path) -> dict:
    """FairFace-540 through the default face path for the fold-0 checkpoint of a run: gender
    (all, adults 20+, under 20, female / male recall) and age bin exact / one-off, misses
    counted as errors; the same figures as benchmarks/crossdata.py."""
    import os

    from agegender.config.paths import default_data_root
    from agegender.data.readers import read_table
    from agegender.evaluate.metrics import age_split_scores, gender_bin_cells
    from agegender.evaluate.photos import evaluate_photos
    from agegender.infer import Predictor

    ckpt = run_dir / "fold_0" / "checkpoints" / "best.ckpt"
    root = default_data_root() / "fairface-540"
    if not ckpt.is_file() or not root.is_dir():
        return {}
    predictor = Predictor.load(str(ckpt), detector="blazeface", threads=1)
    try:
        res = evaluate_photos(predictor, read_table(root)[1])
    finally:
        predictor.close()
    m = res["metrics"]
    split = age_split_scores(gender_bin_cells(res["predictions"]))
    out = {
        "fairface_gender_accuracy_all": m.get("gender_accuracy_all"),
        "fairface_recall_female_all": m.get("gender_recall_female_all"),
        "fairface_recall_male_all": m.get("gender_recall_male_all"),
        "fairface_age_bin_exact_all": m.get("age_bin_exact_all"),
        "fairface_age_bin_one_off": m.get("age_bin_one_off"),
        "fairface_checkpoint": os.path.relpath(ckpt.resolve()),  # links resolved
    }
    for part, cell in split.items():
        out[f"fairface_{part}_gender_accuracy_all"] = cell["gender_accuracy_all"]
        out[f"fairface_{part}_recall_female_all"] = cell["recall_female_all"]
        out[f"fairface_{part}_recall_male_all"] = cell["recall_male_all"]
    return out


def _run_of(checkpoint: str | None) -> str:
    """``runs/x/fold_0/checkpoints/best.ckpt`` -> ``x/fold_0``."""
    if not checkpoint:
        return "–"
    parts = Path(checkpoint).parts
    return "/".join(parts[-4:-2]) if len(parts) >= 4 else checkpoint


def update_fairface(out_dir: Path, runs: list[Path]) -> list[dict]:
    """Re-score FairFace for existing rows of ``out_dir/quality.json`` from the fold-0
    checkpoint of the given run directories (a row matches by its run directory's name, the
    config's file name); their CV figures stay as they are."""
    rows = json.loads((out_dir / "quality.json").read_text())
    for run_dir in runs:
        name = run_dir.name
        matches = [r for r in rows if Path(r.get("run_dir", "")).name == name]
        if len(matches) != 1:
            raise ValueError(f"{name}: {len(matches)} rows of quality.json have this run name")
        scores = fairface_scores(run_dir)
        if not scores:
            raise FileNotFoundError(f"{run_dir}/fold_0/checkpoints/best.ckpt: not found")
        matches[0].update(scores)
    return rows


def _label(row: dict, names: list) -> str:
    """``model (config name)``; the run directory's name where one config has several rows."""
    label = row.get("name")
    if label is not None and names.count(label) > 1:  # one config, run with overrides
        label = Path(row.get("run_dir", "")).name or label
    return str(row["model"]) if label in (None, row["model"]) else f"{row['model']} ({label})"


def _pm(mean, std, scale=100.0, fmt="{:.1f}") -> str:
    if mean is None:
        return "–"
    return f"{fmt.format(mean * scale)} ± {fmt.format((std or 0.0) * scale)}"


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# Quality benchmark: k-fold cross-validation",
        "",
        f"Regenerate with `python benchmarks/quality.py` (this file: `{meta['command']}`).",
        "",
        f"Machine: {meta['machine']}; torch {meta['torch']}; {meta['date']}.",
        "",
        "| model | input | gender acc (%) | age MAE (years) | age group exact (%) | "
        "age group 1-off (%) | CS@5 (%) | params (M) | epochs | train min/fold | train img/s | "
        "test img/s | folds | FairFace gender (%) | FairFace age bin (%) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
        "| --- |",
    ]
    names = [r.get("name") for r in rows]
    for r in rows:
        cs5 = r["age_cs5_mean"]
        lines.append(
            "| "
            + " | ".join(
                [
                    _label(r, names),
                    f"{r['input_size']} of {r['size']}"
                    if r["size"] != r["input_size"]
                    else str(r["input_size"]),
                    _pm(r["gender_accuracy_mean"], r["gender_accuracy_std"]),
                    _pm(r["age_mae_mean"], r["age_mae_std"], 1.0, "{:.2f}"),
                    _pm(r["age_group_exact_mean"], r["age_group_exact_std"]),
                    _pm(r["age_group_one_off_mean"], r["age_group_one_off_std"]),
                    "–" if cs5 is None else f"{100 * cs5:.1f}",
                    "–" if not r["params"] else f"{r['params'] / 1e6:.2f}",
                    "–" if r.get("epochs_mean") is None else f"{r['epochs_mean']:.0f}",
                    "–"
                    if r["train_seconds_per_fold"] is None
                    else f"{r['train_seconds_per_fold'] / 60:.1f}",
                    "–" if r["images_per_second"] is None else f"{r['images_per_second']:.0f}",
                    "–"
                    if r["test_images_per_second"] is None
                    else f"{r['test_images_per_second']:.0f}",
                    str(r["folds"]),
                    _pct(r.get("fairface_gender_accuracy_all")),
                    _pct(r.get("fairface_age_bin_exact_all")),
                ]
            )
            + " |"
        )
    lines += [
        "",
        "Mean ± sample standard deviation over the folds. Each fold's test set is never "
        "trained on: folds are grouped by the duplicate audit (byte-identical and "
        "near-duplicate UTKFace images share a fold; copies with conflicting labels are "
        "dropped) and stratified by gender x age group; a share of the training folds' "
        "groups (`data.split`) validates (early stopping, best checkpoint). Age: DEX "
        "(expected value over 0..100 years); the age group is the Adience group of the "
        "predicted age; CS@5: fraction within 5 years. Throughput on this machine's CPU/GPU "
        "while training (train img/s, augmentation included) and evaluating (test img/s, "
        "decoding excluded). FairFace: the fold-0 checkpoint on FairFace-540 (a cross-dataset "
        "test set, never trained or tuned on) through the default face path (BlazeFace, "
        "aligned), a missed face counted as an error; `–` where that checkpoint is not on "
        "this machine.",
        "",
    ]
    broken_down = [r for r in rows if r.get("fairface_adults_gender_accuracy_all") is not None]
    if broken_down:
        lines += [
            "FairFace-540 in detail (the fold-0 checkpoint at threshold 0.5, misses counted as "
            "errors; adults: the bins from 20-29 up, as in benchmarks/crossdata.md). Where the "
            "checkpoint's run is not the row's own, fold 0 was trained again from the row's "
            "config, seed and folds for this table (`--fairface-update`), and the FairFace "
            "columns above are that checkpoint's:",
            "",
            "| model | gender all | female / male recall | adults 20+ | adults female / male "
            "| under 20 | age bin exact | age bin 1-off | checkpoint |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in broken_down:
            lines.append(
                f"| {_label(r, names)} | {_pct(r.get('fairface_gender_accuracy_all'))} "
                f"| {_pct(r.get('fairface_recall_female_all'))} / "
                f"{_pct(r.get('fairface_recall_male_all'))} "
                f"| {_pct(r.get('fairface_adults_gender_accuracy_all'))} "
                f"| {_pct(r.get('fairface_adults_recall_female_all'))} / "
                f"{_pct(r.get('fairface_adults_recall_male_all'))} "
                f"| {_pct(r.get('fairface_under_20_gender_accuracy_all'))} "
                f"| {_pct(r.get('fairface_age_bin_exact_all'))} "
                f"| {_pct(r.get('fairface_age_bin_one_off'))} "
                f"| {_run_of(r.get('fairface_checkpoint'))} |"
            )
        lines.append("")
    if meta.get("overrides"):
        hw = all(o.startswith("trainer.") for o in meta["overrides"])
        what = "hardware only, results unchanged" if hw else "not the full benchmark"
        lines += [f"**Overrides** ({what}): `{' '.join(meta['overrides'])}`.", ""]
    if meta.get("kept"):
        lines += [
            f"Rows kept from the previous run of this benchmark: {', '.join(meta['kept'])}.",
            "",
        ]
    notes = [r["note"] for r in rows if r.get("note")]  # each row keeps its command's note
    for note in dict.fromkeys(notes):
        lines += [f"**Note:** {note}", ""]
    if meta.get("missing"):
        lines += [
            f"**Not in this table** (no finished cross-validation): {', '.join(meta['missing'])}.",
            "",
        ]
    return "\n".join(lines)


def merge_rows(previous: Path, rows: list[dict]) -> tuple[list[dict], list[str]]:
    """``rows`` plus the rows of ``previous`` (quality.json) for other runs, in the default
    model order; returns the rows and the names kept from the previous file."""
    if not previous.is_file():
        return rows, []
    try:
        old = json.loads(previous.read_text())
    except ValueError:
        print(f"warning: {previous}: not JSON, not merged", file=sys.stderr)
        return rows, []
    new_dirs = {r["run_dir"] for r in rows}
    kept = [r for r in old if isinstance(r, dict) and r.get("run_dir") not in new_dirs]
    order = [Path(m).stem for m in DEFAULT_MODELS]

    def rank(r: dict) -> tuple[int, str]:
        stem = Path(r.get("run_dir", "")).name
        return (order.index(stem) if stem in order else len(order), stem)

    labels = [Path(r.get("run_dir", "")).name or str(r.get("name") or r.get("model")) for r in kept]
    return sorted(rows + kept, key=rank), labels


def page_meta(argv: list[str] | None) -> dict:
    """The page's command line, machine, torch version and date."""
    import torch

    return {
        "command": "python benchmarks/quality.py " + " ".join(_shown_args(argv)),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
        + (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }


def write_pages(out_dir: Path, rows: list[dict], meta: dict) -> None:
    """``quality.json`` (the rows) and ``quality.md`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "quality.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out_dir / "quality.md").write_text(markdown(rows, meta))


def _shown_args(argv: list[str] | None) -> list[str]:
    """The command line for quality.md, without the free-text ``--note``."""
    args, out = list(argv if argv is not None else sys.argv[1:]), []
    skip = False
    for a in args:
        if skip:
            skip = False
        elif a == "--note":
            skip = True
        elif not a.startswith("--note="):
            out.append(a)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "models",
        nargs="*",
        default=list(DEFAULT_MODELS),
        help="config names in configs/quality/ or YAML paths",
    )
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        help="config override key=value (repeatable)",
    )
    ap.add_argument("--runs-dir", type=Path, default=REPO / "runs" / "quality")
    ap.add_argument("--out-dir", type=Path, default=REPO / "benchmarks")
    ap.add_argument("--tta", default="none", choices=("none", "flip", "oversample"))
    ap.add_argument(
        "--note", default="", help="a line of context for quality.md, kept with this run's rows"
    )
    ap.add_argument(
        "--collect", action="store_true", help="do not train: collect the results of finished runs"
    )
    ap.add_argument(
        "--fairface",
        action="store_true",
        help="also score each model's fold-0 checkpoint on FairFace-540 through the default "
        "face path (a cross-dataset test set: never trained or tuned on)",
    )
    ap.add_argument(
        "--replace",
        action="store_true",
        help="write only this command's models (default: keep the other models' rows of the "
        "existing quality.json)",
    )
    ap.add_argument(
        "--fairface-update",
        action="store_true",
        help="only re-score FairFace for the named configs' rows from RUNS_DIR/<name>'s fold-0 "
        "checkpoint (e.g. a re-trained fold 0); the rows' CV figures stay",
    )
    args = ap.parse_args(argv)

    from agegender.config import ConfigError
    from agegender.data.records import DatasetError
    from agegender.evaluate.cv import run_cv

    if args.fairface_update:
        runs = [args.runs_dir / Path(n).stem for n in args.models]
        rows = update_fairface(args.out_dir, runs)
        kept = [Path(r.get("run_dir", "")).name or str(r.get("name")) for r in rows]
        write_pages(args.out_dir, rows, page_meta(argv) | {"kept": kept})
        print(f"updated FairFace of {', '.join(r.name for r in runs)} in {args.out_dir}")
        return 0
    rows, failed = [], []
    for name in args.models:
        cfg = config_path(name)
        run_dir = args.runs_dir / Path(name).stem
        started = time.perf_counter()
        try:
            if args.collect:
                res_path = run_dir / "results.json"
                if res_path.is_file():
                    results = json.loads(res_path.read_text())
                elif list(run_dir.glob("fold_*/results.json")):  # some folds finished
                    results = partial_results(run_dir)
                else:
                    raise FileNotFoundError(f"{res_path}: no finished cross-validation")
            else:
                print(f"== {name}: {args.folds}-fold cross-validation into {run_dir}", flush=True)
                results = run_cv(cfg, args.folds, run_dir, args.overrides, tta=args.tta)
        except (ConfigError, DatasetError, FileNotFoundError, ValueError) as exc:
            print(f"error: {name}: {str(exc).splitlines()[0]}", file=sys.stderr)
            failed.append(name)
            continue
        row = entry(results, run_dir, cfg)
        if results.get("partial"):
            row["folds"] = results["partial"]
        if args.fairface:
            row |= fairface_scores(run_dir)
        if args.note:
            row["note"] = args.note
        rows.append(row)
        print(f"== {name}: done in {time.perf_counter() - started:.0f} s", flush=True)
    meta = page_meta(argv) | {
        "overrides": args.overrides,
        "folds": args.folds,
        "missing": failed,
    }
    if not args.replace:
        rows, kept = merge_rows(args.out_dir / "quality.json", rows)
        if kept:
            meta["kept"] = kept
    write_pages(args.out_dir, rows, meta)
    print(f"wrote {args.out_dir / 'quality.json'} and {args.out_dir / 'quality.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
